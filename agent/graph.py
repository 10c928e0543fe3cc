"""The agent loop: a small LangGraph ``StateGraph`` over an ``AgentPort``.

    decide --(budget left)--> propose -> check --(ok)--> smoke --(ok)--> evaluate -> record -> decide
       |                         ^          |                |
       |                         \\--repair--/--(failed, rounds left)
       \\--(a reply stored before a kill)--> evaluate      (failed, no rounds left) --> evaluate

Nodes are plain functions returning partial state; routers return a ``Literal``. The agent reaches
the run only through the port (autoresearch.agent_port): it never touches the sandbox, the ledger
or git. A reply that still fails a check after its repair rounds is recorded with that reason and
never trained. The run's ledger is the only memory, so ``resume`` needs no checkpoint of its own.

Pipelining (settings.pipeline, autoresearch.pipeline): ``evaluate`` hands the proposal to the
port's judge and returns at once, so the next proposal is drafted while this one is judged.
``decide`` drafts proposal j from the view as of decision j - 1 - LAG (waiting for it if need be):
what the agent sees depends on the index alone, never on which judgement happened to finish first.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any, Literal, TypedDict

from autoresearch.agent.checks import (SmokeFailed, bundled_problem, call_site_hint, check_name, check_reply,
                                       final_verdict, prepare_reply, smoke_problem)
from autoresearch.agent.directions import untried_hint
from autoresearch.agent.session import LLMSession
from autoresearch.agent.prompts import build_messages, example_proposal, prompt_hash, repair_message, start_over
from autoresearch.agent.proposal import (EditFormat, Proposal, ProposalRejected, choose_edit_format,
                                         is_editable, whole_file_grammar)
from autoresearch.agent_port import AgentPort, PastProposal, Round
from autoresearch.pipeline import LAG


class AgentState(TypedDict, total=False):
    idx: int                      # the proposal being worked on
    files: dict[str, str]         # the incumbent it applies to
    history: list[PastProposal]   # every earlier proposal, as the agent may see it
    messages: list[dict]          # the conversation for this proposal (grows with repairs)
    attempt: int                  # replies asked for this proposal
    raw: str                      # the latest reply
    proposal: Any                 # the latest reply, parsed and past the static checks
    new_files: dict[str, str]     # ... and the files it leads to
    parsed: Any                   # what evaluate records: a Proposal, or the ProposalRejected
    retry: bool                   # a check asks propose for a repaired reply
    failures: list[tuple[str, str]]  # this proposal's failed checks so far: (check, error)
    smoked: dict[str, tuple[int, str]]  # files hash -> (reply, problem) of this proposal's failed smoke runs
    stop: str                     # why the loop ended
    drafted_on: str | None        # pipelining: the incumbent commit ``files`` is
    seen_upto: int | None         # pipelining: the last decision ``history`` holds


@dataclass
class AgentContext:
    port: AgentPort
    session: LLMSession
    edit_format: EditFormat = "search-replace"
    prompt_hash: str = field(default_factory=prompt_hash)
    rounds: int = 0               # repair rounds asked in this session
    submitted: int = 0            # pipelining: the highest index handed to the judge in this session


def _earlier(state: AgentState) -> list[PastProposal]:
    """The history a reply is checked against: every proposal but the one being worked on."""
    return [p for p in state["history"] if p.idx != state["idx"]]


def _check(ctx: AgentContext, state: AgentState) -> tuple[Proposal, dict[str, str]]:
    files = state["files"]
    history = _earlier(state)
    example = example_proposal(files, ctx.port.task.editable) if ctx.edit_format == "search-replace" else None
    return check_reply(state["raw"], files, ctx.port.task.editable, history, change_hash=ctx.port.change_hash,
                       example=example)


def _agent_notes(ctx: AgentContext, state: AgentState) -> tuple[str, ...]:
    """What the agent itself changed in this reply (a reply that does not parse or apply: nothing)."""
    try:
        return prepare_reply(state["raw"], state["files"], ctx.port.task.editable)[0].notes
    except ProposalRejected:
        return ()


def verdict_without_llm(ctx: AgentContext, state: AgentState) -> Proposal | ProposalRejected:
    """A stored reply (resume): every check again, the smoke run included; no repair round."""
    try:
        proposal, new_files = _check(ctx, state)
    except ProposalRejected as exc:
        return final_verdict(state["raw"], exc, state["files"], ctx.port.task.editable)
    problem = smoke_problem(ctx.port.smoke(new_files))
    return final_verdict(state["raw"], SmokeFailed(problem), state["files"], ctx.port.task.editable) \
        if problem else proposal


# A repair round samples hotter than the first reply: a small model shown its failed reply tends to
# send it back token for token at the client's temperature (0.7), however the failure is explained.
REPAIR_TEMPERATURE_STEP = 0.25
MAX_TEMPERATURE = 1.2


def repair_temperature(client, attempt: int) -> float | None:
    """The temperature for reply ``attempt`` of a proposal: None (the client's own) for the first."""
    base = getattr(client, "temperature", None)
    if attempt <= 1 or base is None:
        return None
    return min(MAX_TEMPERATURE, base + REPAIR_TEMPERATURE_STEP * (attempt - 1))


def build_graph(ctx: AgentContext):
    from langgraph.graph import END, START, StateGraph

    port, settings = ctx.port, ctx.port.settings

    def decide(state: AgentState) -> AgentState:
        fresh = {"messages": [], "attempt": 0, "raw": "", "proposal": None, "new_files": {}, "parsed": None,
                 "retry": False, "stop": "", "drafted_on": None, "seen_upto": None, "failures": [],
                 "smoked": {}}
        pending = port.pending(ctx.submitted) if settings.pipeline else port.pending()
        if pending is not None:
            # Killed after the reply was stored: evaluate it again without a new LLM call, checked
            # against what it was drafted from (drafted ahead: an incumbent that may have moved since).
            if settings.pipeline and pending.drafted_on:
                seen = pending.seen_upto or 0
                view = {"files": port.files_at(pending.drafted_on),
                        "history": [p for p in port.history() if p.idx <= seen],
                        "drafted_on": pending.drafted_on, "seen_upto": seen}
            else:
                view = {"files": port.incumbent(), "history": port.history()}
            state = {**fresh, **view, "idx": pending.idx, "raw": pending.raw}
            return {**state, "parsed": verdict_without_llm(ctx, state)}
        b = port.budget()
        idx = port.next_index()
        stop = ""
        if max(b.decided, idx - 1) >= settings.proposals:
            stop = f"proposal budget reached ({max(b.decided, idx - 1)} of {settings.proposals})"
        elif settings.max_llm_cost is not None and b.cost_usd >= settings.max_llm_cost:
            stop = f"LLM cost budget reached (~${b.cost_usd:.4f} of ${settings.max_llm_cost:.4f}); stopped early"
        elif settings.time_budget is not None and b.elapsed_seconds >= settings.time_budget:
            stop = (f"time budget of {settings.time_budget:g}s reached ({b.elapsed_seconds:.0f}s over all "
                    "sessions); stopped early")
        if stop:
            return {**fresh, "idx": idx, "stop": stop}
        if settings.pipeline:
            view = port.view(max(0, idx - 1 - LAG))  # waits for that decision, never for a later one
            return {**fresh, "idx": idx, "files": view.files, "history": view.history,
                    "drafted_on": view.commit, "seen_upto": view.upto}
        return {**fresh, "idx": idx, "files": port.incumbent(), "history": port.history()}

    def propose(state: AgentState) -> AgentState:
        idx, attempt = state["idx"], state.get("attempt", 0) + 1
        messages = state.get("messages") or build_messages(port.task, settings.idea, state["files"],
                                                           state["history"], ctx.edit_format)
        port.stage(f"asking the LLM ({ctx.session.client.model or 'default model'}) for proposal {idx}"
                   + (f", repair round {attempt - 1}" if attempt > 1 else "") + " ...")

        def log(**fields) -> None:
            port.log_llm_call(idx, attempt, **fields)

        reply = ctx.session.client.complete(messages, log=log, temperature=repair_temperature(ctx.session.client,
                                                                                              attempt))
        return {"attempt": attempt, "raw": reply.text, "messages": messages}

    def failed(state: AgentState, exc: ProposalRejected, smoke_seconds: float = 0.0) -> AgentState:
        """A check failed: a repair round while rounds are left, else the verdict to record."""
        name = check_name(exc)
        text = str(exc)
        text = text if len(text) <= 600 else text[:200] + " … " + text[-400:]  # a traceback ends with its cause
        port.note_round(Round(idx=state["idx"], attempt=state["attempt"], check=name, error=text,
                              edit_format=ctx.edit_format, smoke_seconds=smoke_seconds,
                              notes=_agent_notes(ctx, state)))
        if state["attempt"] <= settings.repair_rounds:
            ctx.rounds += 1
            port.stage(f"reply {state['attempt']} for proposal {state['idx']} failed the {name} check: "
                       f"{' '.join(str(exc).split())[:120]}; asking for a repair")
            hint = untried_hint(state["files"], port.task.editable, _earlier(state)) if name == "duplicate" else ""
            failures = state.get("failures", []) + [(name, text)]
            if name == "duplicate" or state["attempt"] >= 2:
                # A repeat, or a second failure: the first prompt again, the failed replies listed, not shown.
                messages = start_over(build_messages(port.task, settings.idea, state["files"], state["history"],
                                                     ctx.edit_format), failures, hint)
            else:
                messages = state["messages"] + [{"role": "assistant", "content": state["raw"]},
                                                repair_message(name, str(exc), port.task.editable, ctx.edit_format,
                                                               hint)]
            return {"retry": True, "messages": messages, "parsed": None, "failures": failures}
        return {"retry": False, "parsed": final_verdict(state["raw"], exc, state["files"], port.task.editable)}

    def check(state: AgentState) -> AgentState:
        try:
            proposal, new_files = _check(ctx, state)
        except ProposalRejected as exc:
            return failed(state, exc)
        # Several changes in one: asked once to keep one of them (a repair round, never a verdict).
        first_with_rounds_left = state["attempt"] == 1 and settings.repair_rounds > 0
        bundled = bundled_problem(state["files"], new_files) if first_with_rounds_left else None
        if bundled is not None:
            return failed(state, bundled)
        return {"proposal": proposal, "new_files": new_files, "retry": False, "parsed": None}

    def smoke(state: AgentState) -> AgentState:
        # A repair that sends back files whose smoke run already failed fails the same way: said, not
        # run again (at 0.95 the 1.5B model returned a crashing reply token for token).
        key = port.change_hash(state["new_files"])
        smoked = state.get("smoked") or {}
        if key in smoked:
            earlier, problem = smoked[key]
            return failed(state, SmokeFailed(f"the same files as reply {earlier}, whose smoke run failed: {problem}"))
        port.stage(f"smoke run of proposal {state['idx']} (one epoch on a slice of the train split) ...")
        started = time.monotonic()
        result = port.smoke(state["new_files"])
        problem = smoke_problem(result)
        seconds = time.monotonic() - started
        if problem:
            hint = call_site_hint(result.error, state["files"], state["new_files"])
            problem = f"{problem}\n{hint}" if hint else problem
            return {**failed(state, SmokeFailed(problem), seconds),
                    "smoked": {**smoked, key: (state["attempt"], problem)}}
        port.note_round(Round(idx=state["idx"], attempt=state["attempt"], check="ok", edit_format=ctx.edit_format,
                              smoke_seconds=seconds, notes=state["proposal"].notes))
        return {"parsed": state["proposal"], "retry": False}

    def evaluate(state: AgentState) -> AgentState:
        if settings.pipeline:
            port.submit(state["idx"], state["raw"], state["parsed"], prompt_hash=ctx.prompt_hash,
                        drafted_on=state["drafted_on"], seen_upto=state["seen_upto"])
            ctx.submitted = state["idx"]
        else:
            port.evaluate(state["idx"], state["raw"], state["parsed"], prompt_hash=ctx.prompt_hash)
        return {}

    def record(state: AgentState) -> AgentState:
        totals = port.llm_totals(state["idx"])
        port.stage(f"proposal {state['idx']} " + ("handed to the judge" if settings.pipeline else "recorded") +
                   f" ({totals['calls']} LLM call(s), {totals['prompt_tokens'] + totals['completion_tokens']} tokens)")
        return {"messages": [], "attempt": 0, "parsed": None}

    def after_decide(state: AgentState) -> Literal["propose", "evaluate", "__end__"]:
        if state.get("stop"):
            return END
        return "evaluate" if state.get("parsed") is not None else "propose"

    def after_check(state: AgentState) -> Literal["propose", "smoke", "evaluate"]:
        if state.get("retry"):
            return "propose"
        return "evaluate" if state.get("parsed") is not None else "smoke"

    def after_smoke(state: AgentState) -> Literal["propose", "evaluate"]:
        return "propose" if state.get("retry") else "evaluate"

    graph = StateGraph(AgentState)
    for name, fn in (("decide", decide), ("propose", propose), ("check", check), ("smoke", smoke),
                     ("evaluate", evaluate), ("record", record)):
        graph.add_node(name, fn)
    graph.add_edge(START, "decide")
    graph.add_conditional_edges("decide", after_decide)
    graph.add_edge("propose", "check")
    graph.add_conditional_edges("check", after_check)
    graph.add_conditional_edges("smoke", after_smoke)
    graph.add_edge("evaluate", "record")
    graph.add_edge("record", "decide")
    return graph.compile()


def pick_edit_format(port: AgentPort, client) -> EditFormat:
    """The edit format for this run (settings.edit_format, or auto's choice), set on the client so
    that its constrained decoding uses that format's schema; a whole file must fit the reply."""
    files = port.incumbent()
    fmt = choose_edit_format(files, list(port.task.editable), getattr(client, "model", None),
                             port.settings.edit_format)
    client.edit_format = fmt
    if fmt == "whole-file":
        editable = [p for p in files if is_editable(p, list(port.task.editable))]
        # The fenced file's grammar names the editable files (any path where they are globs).
        globbed = any(ch in pattern for pattern in port.task.editable for ch in "*?[")
        client.grammar = whole_file_grammar([] if globbed else sorted(set(editable) | set(port.task.editable)))
        longest = max((len(files[p]) for p in editable), default=0)
        # ~3 characters per token of code, and the title and hypothesis around it.
        client.max_tokens = max(getattr(client, "max_tokens", 0) or 0, longest // 3 + 400)
    return fmt


def run_agent(port_or_engine, session: LLMSession) -> dict:
    """Run the loop until the proposal budget is used (or a cost/time budget stops it early).
    Takes an AgentPort, or a RunEngine (wrapped in an EnginePort)."""
    port: AgentPort = port_or_engine
    if not hasattr(port_or_engine, "task"):
        from autoresearch.agent_port import EnginePort

        port = EnginePort(port_or_engine)
    port.ensure_baseline()  # the port's clock started before it: the time budget counts the baseline too
    ctx = AgentContext(port=port, session=session, edit_format=pick_edit_format(port, session.client))
    port.stage(f"edit format: {ctx.edit_format}")
    settings = port.settings
    steps = 10 + (settings.proposals + 1) * (3 * (settings.repair_rounds + 1) + 4)
    try:
        final = build_graph(ctx).invoke({}, {"recursion_limit": steps})
    finally:
        if settings.pipeline:
            port.drain()  # every proposal handed to the judge is decided and recorded (or its error raised)
    b = port.budget()
    totals = port.llm_totals()
    history = port.history()
    summary = {"stop": final.get("stop", ""), "proposals": b.decided, "budget": settings.proposals,
               "accepted": sum(p.decision == "accepted" for p in history), "edit_format": ctx.edit_format,
               "repair_rounds": ctx.rounds, "llm_calls": totals["calls"],
               "tokens": totals["prompt_tokens"] + totals["completion_tokens"], "cost_usd": totals["cost_usd"],
               "llm_seconds": totals["latency_seconds"], "prompt_hash": ctx.prompt_hash}
    port.save_summary(summary)
    port.stage(f"agent done: {summary['stop']}; {summary['proposals']} proposal(s), {summary['accepted']} accepted, "
               f"{summary['llm_calls']} LLM call(s), {summary['repair_rounds']} repair round(s), {summary['tokens']} "
               f"tokens, ~${summary['cost_usd']:.4f}")
    return summary
