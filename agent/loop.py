"""The agent loop: a small LangGraph ``StateGraph`` around the trial engine.

    decide --(budget left)--> propose -> check --(parse/apply failed, retries left)--> propose
       ^          \\--(pending after a crash)--> evaluate           \\--> evaluate -> record -> decide
       \\--------------------------------------------------------------------------------/

Nodes are plain functions returning partial state; routers return a ``Literal``. The engine is
handed in (the agent never touches the sandbox), and the run's ledger is the only memory: the
proposal count, the alpha budget and a proposal whose reply was stored before a crash all come
back from it, so ``resume`` needs no checkpoint of its own.
"""

from __future__ import annotations

import hashlib
import json
import re
import string
import time
from dataclasses import dataclass, field
from importlib import resources
from typing import Any, Literal, Protocol, TypedDict

from autoresearch.agent.llm import LLMClient, LLMReply, LLMUnavailable, LogFn, resolve_endpoint
from autoresearch.agent.proposal import (InvalidProposal, Proposal, ProposalRejected, apply_proposal,
                                         parse_reply)

HISTORY_LIMIT = 12  # earlier proposals shown to the model (the 1.5B default has an 8k context)
DETAIL_SAFE = ("invalid_proposal", "not_editable", "apply_failed", "crash", "timeout", "oom", "nonfinite", "tampered")


# --------------------------------------------------------------------------- sessions


class ChatModel(Protocol):
    model: str
    base_url: str

    def complete(self, messages: list[dict], *, log: LogFn | None = None) -> LLMReply: ...


@dataclass
class LLMSession:
    """The client for a run, and the embedded server behind it (if any), which ``close`` stops."""

    client: ChatModel
    server: Any = None

    def close(self) -> None:
        if self.server is not None:
            self.server.stop()
            self.server = None


def open_llm_session(config) -> LLMSession:
    """Reach an LLM before any training: the configured endpoint, else the embedded llama.cpp server."""
    url, model = resolve_endpoint(config.llm_base_url, config.model)
    server = None
    if url is None:
        from autoresearch.agent.local_llm import start_local_server

        server = start_local_server(config.gguf)
        url = server.base_url
    try:
        client = LLMClient(base_url=url, model=model, timeout=config.llm_timeout)
        client.check()
    except BaseException:
        if server is not None:
            server.stop()
        raise
    return LLMSession(client=client, server=server)


# --------------------------------------------------------------------------- prompts


def _template(name: str) -> str:
    return resources.files("autoresearch.prompts").joinpath(name).read_text(encoding="utf-8")


PROMPT_FILES = ("system.md", "proposal.md", "repair.md")


def prompt_hash() -> str:
    """sha256 of the prompt templates (recorded with each proposal)."""
    h = hashlib.sha256()
    for name in PROMPT_FILES:
        h.update(name.encode() + b"\0" + _template(name).encode() + b"\0")
    return h.hexdigest()


def _mean(values: list[float | None]) -> float | None:
    vals = [v for v in values if v is not None]
    return sum(vals) / len(vals) if vals else None


def history_lines(records, metric: str) -> str:
    """Earlier proposals with VALIDATION means and decisions; test-split figures never appear."""
    lines = []
    for r in records[-HISTORY_LIMIT:]:
        line = f"- #{r.idx} {r.title!r}: {r.decision} ({r.reason})"
        cand = {t.seed: t.val_metric for t in r.candidate_trials if t.ok}
        inc = {t.seed: t.val_metric for t in r.incumbent_trials if t.ok and t.seed in cand}
        c, i = _mean(list(cand.values())), _mean(list(inc.values()))
        if c is not None and i is not None:
            line += f"; val {metric} {c:.4f} vs incumbent {i:.4f} over {len(inc)} seed(s)"
        if r.reason in DETAIL_SAFE and r.detail:
            line += f"; {' '.join(r.detail.split())[:200]}"
        lines.append(line)
    skipped = len(records) - len(lines)
    return ((f"({skipped} older proposal(s) not shown)\n" if skipped > 0 else "")
            + ("\n".join(lines) if lines else "(none yet)"))


_NUMBER = re.compile(r"(?<![\w.])(\d+\.\d+|\d+e-?\d+|\d{2,})(?![\w.])")


def example_proposal(files: dict[str, str], editable: list[str]) -> dict | None:
    """A format example anchored on a real, unique line of the incumbent: one number in it scaled.
    (A placeholder such as "<new text>" gets copied verbatim by small models.) Floats are preferred:
    they are usually hyperparameters, so the example stays runnable."""
    candidates = []
    for path in [p for p in editable if p in files]:
        text = files[path]
        for line in text.splitlines():
            s = line.strip()
            if not s or s.startswith(("#", '"', "'")) or text.count(line) != 1:
                continue
            m = _NUMBER.search(line)
            if m:
                candidates.append((0 if ("." in m.group(1) or "e" in m.group(1)) else 1, path, line, m))
    if not candidates:
        return None
    _, path, line, m = min(candidates, key=lambda c: c[0])
    value = m.group(1)
    new = repr(float(value) / 2) if ("." in value or "e" in value) else str(int(value) * 2)
    return {"title": "Short name of the change", "hypothesis": "Why it should beat the incumbent.",
            "edits": [{"path": path, "search": line, "replace": line[:m.start()] + new + line[m.end():]}]}


def example_text(files: dict[str, str], editable: list[str]) -> str:
    example = example_proposal(files, editable)
    return json.dumps(example) if example else json.dumps(
        {"title": "Short name", "hypothesis": "Why it helps.",
         "edits": [{"path": editable[0] if editable else "file.py", "search": "exact old text", "replace": "new text"}]})


def build_messages(engine, records) -> list[dict]:
    spec = engine.bench.spec
    _, files = engine.incumbent
    shown = "".join(f"## {path}\n```python\n{text.rstrip()}\n```\n" for path, text in sorted(files.items()))
    b = spec.budget
    user = string.Template(_template("proposal.md")).safe_substitute(
        idea=engine.config.idea or "(no idea given: improve the metric)",
        benchmark=f"{spec.name} v{spec.version}", description=" ".join(spec.description.split()),
        editable=", ".join(spec.editable), metric=spec.metric.name,
        budget=f"{b.epochs} epochs, batch size {b.batch_size}, {b.train_seconds:g}s of training, {b.threads} CPU thread(s)",
        files=shown, history=history_lines(records, spec.metric.name), example=example_text(files, spec.editable))
    return [{"role": "system", "content": _template("system.md").strip()}, {"role": "user", "content": user.strip()}]


def repair_message(error: str, editable: list[str]) -> dict:
    text = string.Template(_template("repair.md")).safe_substitute(error=error, editable=", ".join(editable))
    return {"role": "user", "content": text.strip()}


# --------------------------------------------------------------------------- checking


class DuplicateProposal(InvalidProposal):
    """The same change as an earlier proposal: recorded, never trained again."""


class DoesNotCompile(ProposalRejected):
    """Applies, but leaves a Python file with a syntax error: worth one repair before training it."""

    reason = "apply_failed"


def undefined_names(source: str, path: str) -> list[str]:
    """Names the module would look up but never defines (static analysis with pyflakes: nothing of
    the candidate runs). Weak models often replace `optimizer = ...` and leave `optimizer` unset."""
    from pyflakes import api, messages
    from pyflakes.reporter import Reporter
    import io

    found: list[str] = []

    class Collect(Reporter):
        def __init__(self):
            super().__init__(io.StringIO(), io.StringIO())

        def flake(self, message):
            if isinstance(message, messages.UndefinedName):
                found.append(f"'{message.message_args[0]}' (line {message.lineno})")

    api.check(source, path, Collect())
    return found


def check_reply(engine, idx: int, raw: str) -> Proposal:
    """Parse a reply and dry-run it on the incumbent; raise ProposalRejected with a reason."""
    from autoresearch.engine import files_hash

    proposal = parse_reply(raw)
    _, files = engine.incumbent
    example = example_proposal(files, engine.bench.spec.editable)
    if example is not None and proposal.edits and \
            [(e.path, e.search, e.replace) for e in proposal.edits] == [tuple(e.values()) for e in example["edits"]]:
        raise InvalidProposal("that is the format example from the prompt, not a proposal of your own")
    new_files = apply_proposal(files, proposal, engine.bench.spec.editable)
    for path, text in new_files.items():
        if path.endswith(".py") and text != files.get(path):
            try:
                compile(text, path, "exec")  # parses only; nothing of the candidate runs here
            except SyntaxError as exc:
                raise DoesNotCompile(f"{path} would not compile: {exc.msg} (line {exc.lineno}): "
                                     f"{(exc.text or '').strip()[:120]}") from None
            undefined = undefined_names(text, path)
            if undefined:
                raise DoesNotCompile(f"{path} uses undefined name(s): {'; '.join(undefined[:5])}. Keep every name "
                                     "the replaced code defined (e.g. still assign the variable you changed) or "
                                     "import it.")
    change = files_hash(new_files)
    for row in engine.ledger.proposals(engine.run_id):
        if row["idx"] == idx or not row["edits_json"]:
            continue
        same_edits = Proposal(title="", hypothesis="", edits=tuple(
            _edits(row["edits_json"]))).fingerprint() == proposal.fingerprint()
        if same_edits or row["change_hash"] == change:
            raise DuplicateProposal(f"duplicate: the same change as proposal #{row['idx']} "
                                    f"({row['title']!r}); not trained again")
    return proposal


def final_parse(engine, idx: int, raw: str) -> Proposal | ProposalRejected:
    """What to hand the engine once repairs are used up: an unparsable or duplicate reply is recorded
    as it is; a parsed one that fails to apply goes in whole, so its edits are recorded with the reason."""
    try:
        return check_reply(engine, idx, raw)
    except InvalidProposal as exc:
        return exc
    except ProposalRejected:
        return parse_reply(raw)


def _edits(edits_json: str):
    from autoresearch.agent.proposal import Edit

    return [Edit(**e) for e in json.loads(edits_json)["edits"]]


# --------------------------------------------------------------------------- the graph


class AgentState(TypedDict, total=False):
    idx: int                      # the proposal being worked on
    messages: list[dict]          # the conversation for this proposal (grows with repairs)
    attempt: int                  # replies asked for this proposal
    raw: str                      # the latest reply
    parsed: Any                   # Proposal, or the ProposalRejected to record
    retry: bool                   # check asks propose for a repaired reply
    decided: int                  # finished proposals in the ledger
    stop: str                     # why the loop ended


@dataclass
class AgentContext:
    engine: Any
    session: LLMSession
    started: float = field(default_factory=time.monotonic)
    prompt_hash: str = field(default_factory=prompt_hash)
    earlier_seconds: float = 0.0  # spent by earlier sessions of this run (the ledger's active_seconds)

    def __post_init__(self) -> None:
        row = self.engine.ledger.run(self.engine.run_id) or {}
        self.earlier_seconds = float(row.get("active_seconds") or 0.0)

    def elapsed(self) -> float:
        """Seconds this run has been working, over all its sessions (what --time-budget counts)."""
        return self.earlier_seconds + (time.monotonic() - self.started)

    def save_elapsed(self) -> float:
        elapsed = self.elapsed()
        self.engine.ledger.update_run(self.engine.run_id, active_seconds=elapsed)
        return elapsed


def build_graph(ctx: AgentContext):
    from langgraph.graph import END, START, StateGraph

    engine, config = ctx.engine, ctx.engine.config

    def decide(state: AgentState) -> AgentState:
        rows = engine.ledger.proposals(engine.run_id)
        decided = sum(r["state"] == "finished" for r in rows)
        pending = next((r for r in rows if r["state"] != "finished"), None)
        if pending is not None:
            # Killed after the reply was stored: evaluate it again without a new LLM call.
            parsed = final_parse(engine, pending["idx"], pending["raw"])
            return {"idx": pending["idx"], "raw": pending["raw"], "parsed": parsed, "decided": decided, "stop": ""}
        stop = ""
        elapsed = ctx.save_elapsed()  # a kill loses at most the time since the last proposal
        cost = engine.ledger.llm_totals(engine.run_id)["cost_usd"]
        if decided >= config.proposals:
            stop = f"proposal budget reached ({decided} of {config.proposals})"
        elif config.max_llm_cost is not None and cost >= config.max_llm_cost:
            stop = f"LLM cost budget reached (~${cost:.4f} of ${config.max_llm_cost:.4f}); stopped early"
        elif config.time_budget is not None and elapsed >= config.time_budget:
            stop = f"time budget of {config.time_budget:g}s reached ({elapsed:.0f}s over all sessions); stopped early"
        return {"idx": engine.next_index(), "messages": [], "attempt": 0, "raw": "", "parsed": None,
                "decided": decided, "stop": stop}

    def propose(state: AgentState) -> AgentState:
        idx, attempt = state["idx"], state.get("attempt", 0) + 1
        messages = state.get("messages") or build_messages(engine, engine.records())
        engine.events.stage(f"asking the LLM ({ctx.session.client.model or 'default model'}) for proposal {idx}"
                            + (f", attempt {attempt}" if attempt > 1 else "") + " ...")

        def log(**fields) -> None:
            engine.ledger.log_llm_call(run_id=engine.run_id, proposal_idx=idx, attempt=attempt, **fields)

        reply = ctx.session.client.complete(messages, log=log)
        return {"attempt": attempt, "raw": reply.text, "messages": messages}

    def check(state: AgentState) -> AgentState:
        try:
            return {"parsed": check_reply(engine, state["idx"], state["raw"]), "retry": False}
        except ProposalRejected as exc:
            if state["attempt"] <= config.parse_retries:
                engine.events.stage(f"reply {state['attempt']} for proposal {state['idx']} unusable ({exc.reason}): "
                                    f"{str(exc)[:120]}; asking again")
                messages = state["messages"] + [{"role": "assistant", "content": state["raw"]},
                                                repair_message(str(exc), engine.bench.spec.editable)]
                return {"retry": True, "messages": messages}
            return {"parsed": final_parse(engine, state["idx"], state["raw"]), "retry": False}

    def evaluate(state: AgentState) -> AgentState:
        engine.evaluate(state["idx"], state["raw"], state["parsed"], source="llm", prompt_hash=ctx.prompt_hash)
        return {}

    def record(state: AgentState) -> AgentState:
        totals = engine.ledger.llm_totals(engine.run_id, state["idx"])
        engine.events.stage(f"proposal {state['idx']} recorded ({totals['calls']} LLM call(s), "
                            f"{totals['prompt_tokens'] + totals['completion_tokens']} tokens)")
        return {"messages": [], "attempt": 0, "parsed": None}

    def after_decide(state: AgentState) -> Literal["propose", "evaluate", "__end__"]:
        if state.get("stop"):
            return END
        return "evaluate" if state.get("parsed") is not None else "propose"

    def after_check(state: AgentState) -> Literal["propose", "evaluate"]:
        return "propose" if state.get("retry") else "evaluate"

    graph = StateGraph(AgentState)
    for name, fn in (("decide", decide), ("propose", propose), ("check", check), ("evaluate", evaluate),
                     ("record", record)):
        graph.add_node(name, fn)
    graph.add_edge(START, "decide")
    graph.add_conditional_edges("decide", after_decide)
    graph.add_edge("propose", "check")
    graph.add_conditional_edges("check", after_check)
    graph.add_edge("evaluate", "record")
    graph.add_edge("record", "decide")
    return graph.compile()


def run_agent(engine, session: LLMSession) -> dict:
    """Run the loop until the proposal budget is used (or a cost/time budget stops it early)."""
    ctx = AgentContext(engine=engine, session=session)  # the time budget counts the baseline too
    engine.ensure_baseline()
    config = engine.config
    steps = 10 + (config.proposals + 1) * (2 * config.parse_retries + 6)
    final = build_graph(ctx).invoke({}, {"recursion_limit": steps})
    ctx.save_elapsed()
    totals = engine.ledger.llm_totals(engine.run_id)
    rows = engine.ledger.proposals(engine.run_id)
    summary = {"stop": final.get("stop", ""), "proposals": sum(r["state"] == "finished" for r in rows),
               "budget": config.proposals, "accepted": sum(r["decision"] == "accepted" for r in rows),
               "llm_calls": totals["calls"], "tokens": totals["prompt_tokens"] + totals["completion_tokens"],
               "cost_usd": totals["cost_usd"], "llm_seconds": totals["latency_seconds"],
               "prompt_hash": ctx.prompt_hash}
    (engine.run_dir / "agent-summary.json").write_text(json.dumps(summary, indent=2))
    engine.events.stage(f"agent done: {summary['stop']}; {summary['proposals']} proposal(s), "
                        f"{summary['accepted']} accepted, {summary['llm_calls']} LLM call(s), {summary['tokens']} "
                        f"tokens, ~${summary['cost_usd']:.4f}")
    return summary


__all__ = ["LLMSession", "LLMUnavailable", "open_llm_session", "run_agent", "build_graph", "build_messages",
           "check_reply", "prompt_hash", "DuplicateProposal"]
