"""What the agent may reach of a run: one small typed port instead of the whole engine.

The agent (autoresearch.agent.graph) proposes; the engine runs and records. Like aideml's agent,
which is handed a callable that runs code, ours is handed an ``AgentPort``: the incumbent's files,
the task, the history it may see (validation figures only, never test), ``smoke`` and
``evaluate``, the LLM call log, the budget state and a progress line. ``EnginePort`` builds it from
a ``RunEngine``; the agent's unit tests use a fake port with no engine, sandbox or ledger.

With pipelining (autoresearch.pipeline) the agent drafts from ``view(upto)``, the incumbent and
history as of one decision, and hands each draft to ``submit`` (the port's judge decides them in
order) instead of ``evaluate``; ``drain`` waits for the judge to finish.
"""

from __future__ import annotations

import json
import time
from dataclasses import asdict, dataclass
from typing import TYPE_CHECKING, Protocol

from autoresearch.reasons import DETAIL_SAFE, NOT_APPLIED

if TYPE_CHECKING:
    from autoresearch.agent.proposal import Proposal, ProposalRejected
    from autoresearch.engine import RunEngine, SmokeResult


@dataclass(frozen=True)
class AgentSettings:
    """The run's settings the agent acts on (from RunConfig)."""

    idea: str
    proposals: int                # the proposal budget m
    repair_rounds: int            # replies asked again per proposal after a failed check (parse_retries)
    edit_format: str = "auto"     # auto | whole-file | search-replace
    max_llm_cost: float | None = None
    time_budget: float | None = None  # seconds over all sessions of the run
    pipeline: bool = False        # draft ahead: proposal j sees decisions up to j - 1 - LAG (autoresearch.pipeline)


@dataclass(frozen=True)
class Task:
    """What the prompt says about the benchmark."""

    benchmark: str                # "digits-mlp v2"
    description: str
    editable: tuple[str, ...]
    metric: str                   # "accuracy (higher is better)"
    budget: str                   # "10 epochs, batch size 32, ..."


@dataclass(frozen=True)
class PastProposal:
    """One earlier proposal as the agent may see it: what the diff does (autoresearch.describe),
    the decision, and validation means only. Test-split figures never reach this type."""

    idx: int
    title: str
    decision: str                 # accepted | rejected
    reason: str
    detail: str                   # only for reasons whose detail holds no test figure, else ""
    changes: tuple[str, ...]      # describe_change lines; () when nothing was applied
    val_candidate: float | None
    val_incumbent: float | None
    seeds: int                    # seeds the validation means are over
    change_hash: str | None       # files_hash of the files it led to (to refuse a repeat)
    behaviour: str | None = None  # directions.behaviour_key of those files (a repeat in other words)


@dataclass(frozen=True)
class BudgetState:
    decided: int                  # finished proposals
    limit: int
    cost_usd: float
    elapsed_seconds: float        # over all sessions of the run


@dataclass(frozen=True)
class Pending:
    """A proposal whose reply was stored before the run was killed: evaluated again, no new call.
    Drafted ahead (pipelining): the incumbent it was written against and the last decision it saw."""

    idx: int
    raw: str
    drafted_on: str | None = None
    seen_upto: int | None = None


@dataclass(frozen=True)
class DraftView:
    """What the agent drafts a proposal from when drafting ahead: the incumbent and the history as
    of one decision (``upto``), whatever has been decided since."""

    upto: int
    commit: str
    files: dict[str, str]
    history: list[PastProposal]


@dataclass(frozen=True)
class Round:
    """One reply of a proposal and what the agent's checks made of it (the journal's line)."""

    idx: int
    attempt: int
    check: str                    # ok | parse | apply | static | duplicate | smoke
    error: str = ""
    edit_format: str = ""
    smoke_seconds: float = 0.0
    notes: tuple[str, ...] = ()   # what the agent itself changed in this reply (Proposal.notes)


class AgentPort(Protocol):
    settings: AgentSettings
    task: Task

    def incumbent(self) -> dict[str, str]: ...
    def change_hash(self, files: dict[str, str]) -> str: ...
    def ensure_baseline(self) -> None: ...
    def history(self) -> list[PastProposal]: ...
    def pending(self, after: int = 0) -> Pending | None: ...
    def next_index(self) -> int: ...
    def budget(self) -> BudgetState: ...
    def smoke(self, files: dict[str, str]) -> "SmokeResult": ...
    def evaluate(self, idx: int, raw: str, parsed: "Proposal | ProposalRejected", *, prompt_hash: str) -> str: ...
    # Pipelining only (settings.pipeline): the view as of a decision, handing a draft to the judge, draining it.
    def view(self, upto: int) -> DraftView: ...
    def files_at(self, commit: str) -> dict[str, str]: ...
    def submit(self, idx: int, raw: str, parsed: "Proposal | ProposalRejected", *, prompt_hash: str,
               drafted_on: str, seen_upto: int) -> None: ...
    def drain(self) -> None: ...
    def submit(self, idx: int, raw: str, parsed, *, prompt_hash: str, drafted_on: str, seen_upto: int) -> None:
        """Hand a drafted proposal to the judge: stored at once, decided in order (autoresearch.pipeline)."""
        from autoresearch.pipeline import LAG, Job, Judge

        if self._judge is None:
            # LAG + 1 undecided at most: the one judged and the ones drafted past it.
            self._judge = Judge(self.engine, limit=LAG + 1, speculate=self.engine.config.slots - 1)
        self._judge.submit(Job(idx=idx, raw=raw, parsed=parsed, source="llm", prompt_hash=prompt_hash,
                               drafted_on=drafted_on, seen_upto=seen_upto))

    def drain(self) -> None:
        """Wait until every submitted proposal is decided and recorded."""
        if self._judge is not None:
            judge, self._judge = self._judge, None
            judge.close()

    def log_llm_call(self, idx: int, attempt: int, **fields) -> None: ...
    def llm_totals(self, idx: int | None = None) -> dict: ...
    def note_round(self, entry: Round) -> None: ...
    def stage(self, text: str) -> None: ...
    def save_summary(self, summary: dict) -> None: ...


JOURNAL = "agent-journal.jsonl"


def _mean(values: list[float]) -> float | None:
    return sum(values) / len(values) if values else None


def past_proposal(record, changes: tuple[str, ...], change_hash: str | None,
                  behaviour: str | None = None) -> PastProposal:
    """A ProposalRecord as the agent may see it: validation means over the seeds both arms ran."""
    cand = {t.seed: t.val_metric for t in record.candidate_trials if t.ok and t.val_metric is not None}
    inc = {t.seed: t.val_metric for t in record.incumbent_trials
           if t.ok and t.val_metric is not None and t.seed in cand}
    seeds = sorted(inc)
    return PastProposal(idx=record.idx, title=record.title, decision=record.decision, reason=record.reason,
                        detail=record.detail if record.reason in DETAIL_SAFE else "", changes=changes,
                        val_candidate=_mean([cand[s] for s in seeds]), val_incumbent=_mean([inc[s] for s in seeds]),
                        seeds=len(seeds), change_hash=change_hash, behaviour=behaviour)


class EnginePort:
    """The port over a RunEngine: everything the agent does to a run goes through here."""

    def __init__(self, engine: "RunEngine", *, edit_format: str | None = None):
        self.engine = engine
        config, spec = engine.config, engine.bench.spec
        self.settings = AgentSettings(idea=config.idea or "", proposals=config.proposals,
                                      repair_rounds=config.parse_retries,
                                      edit_format=edit_format or getattr(config, "edit_format", "auto"),
                                      max_llm_cost=config.max_llm_cost, time_budget=config.time_budget,
                                      pipeline=engine.pipelining)
        b = spec.budget
        self.task = Task(benchmark=f"{spec.name} v{spec.version}", description=" ".join(spec.description.split()),
                         editable=tuple(spec.editable),
                         metric=f"{spec.metric.name} ({spec.metric.direction} is better)",
                         budget=f"{b.epochs} epochs, batch size {b.batch_size}, {b.train_seconds:g}s of training, "
                                f"{b.threads} CPU thread(s)")
        self._started = time.monotonic()
        row = engine.ledger.run(engine.run_id) or {}
        self._earlier_seconds = float(row.get("active_seconds") or 0.0)  # earlier sessions of this run
        self._described: dict[int, PastProposal] = {}
        self._judge = None  # the pipeline's judge (autoresearch.pipeline), made by the first submit

    # ------------------------------------------------------------------ reading

    def incumbent(self) -> dict[str, str]:
        return self.engine.incumbent[1]

    def change_hash(self, files: dict[str, str]) -> str:
        from autoresearch.outcomes import files_hash

        return files_hash(files)

    def ensure_baseline(self) -> None:
        self.engine.ensure_baseline()

    def history(self) -> list[PastProposal]:
        """Every decided proposal (finished ones are described once and cached)."""
        from autoresearch.agent.directions import behaviour_key
        from autoresearch.describe import describe_change

        engine = self.engine
        out = []
        for row in engine.ledger.proposals(engine.run_id):
            if row["state"] == "pending":
                continue
            if row["idx"] in self._described:
                out.append(self._described[row["idx"]])
                continue
            record = engine.load_record(row)
            changes: tuple[str, ...] = ()
            behaviour = None
            if row["commit_sha"] and row["parent_commit"] and record.reason not in NOT_APPLIED:
                try:
                    after = engine.repo.files_at(row["commit_sha"])
                    changes = tuple(describe_change(engine.repo.files_at(row["parent_commit"]), after))
                    behaviour = behaviour_key(after)
                except Exception as exc:  # a description is a courtesy to the model; the record stands
                    changes = (f"(change not described: {type(exc).__name__})",)
            item = past_proposal(record, changes, row["change_hash"], behaviour)
            if row["state"] == "finished":
                self._described[row["idx"]] = item
            out.append(item)
        return out

    def pending(self, after: int = 0) -> Pending | None:
        """The first stored, unfinished proposal after index ``after`` (those up to it are in flight)."""
        row = next((r for r in self.engine.ledger.proposals(self.engine.run_id)
                    if r["state"] != "finished" and r["idx"] > after), None)
        if row is None:
            return None
        draft = json.loads(row["draft_json"]) if row.get("draft_json") else {}
        return Pending(idx=row["idx"], raw=row["raw"], drafted_on=draft.get("drafted_on"),
                       seen_upto=draft.get("seen_upto"))

    def view(self, upto: int) -> DraftView:
        """The incumbent and history as of decision ``upto`` (waits until it and all before are
        decided): the last accepted proposal up to it, else the baseline."""
        engine = self.engine
        if self._judge is not None:
            self._judge.wait_decided(upto)
        rows = [r for r in engine.ledger.proposals(engine.run_id) if r["idx"] <= upto]
        if any(r["state"] != "finished" for r in rows):
            raise RuntimeError(f"decision {upto} is not recorded yet; the agent cannot draft from it")
        accepted = [r for r in rows if r["decision"] == "accepted" and r["commit_sha"]]
        commit = accepted[-1]["commit_sha"] if accepted else engine.repo.baseline
        return DraftView(upto=upto, commit=commit, files=engine.repo.files_at(commit),
                         history=[p for p in self.history() if p.idx <= upto])

    def files_at(self, commit: str) -> dict[str, str]:
        return self.engine.repo.files_at(commit)

    def next_index(self) -> int:
        return self.engine.next_index()

    def budget(self) -> BudgetState:
        """The budget state now; saves the elapsed time, so a kill loses at most one proposal's time."""
        engine = self.engine
        elapsed = self._earlier_seconds + (time.monotonic() - self._started)
        engine.ledger.update_run(engine.run_id, active_seconds=elapsed)
        rows = engine.ledger.proposals(engine.run_id)
        return BudgetState(decided=sum(r["state"] == "finished" for r in rows), limit=self.settings.proposals,
                           cost_usd=engine.ledger.llm_totals(engine.run_id)["cost_usd"], elapsed_seconds=elapsed)

    def llm_totals(self, idx: int | None = None) -> dict:
        return self.engine.ledger.llm_totals(self.engine.run_id, idx)

    # ------------------------------------------------------------------ acting

    def smoke(self, files: dict[str, str]) -> "SmokeResult":
        return self.engine.smoke(files)

    def evaluate(self, idx: int, raw: str, parsed, *, prompt_hash: str) -> str:
        record = self.engine.evaluate(idx, raw, parsed, source="llm", prompt_hash=prompt_hash)
        return record.reason

    def submit(self, idx: int, raw: str, parsed, *, prompt_hash: str, drafted_on: str, seen_upto: int) -> None:
        """Hand a drafted proposal to the judge: stored at once, decided in order (autoresearch.pipeline)."""
        from autoresearch.pipeline import LAG, Job, Judge

        if self._judge is None:
            # LAG + 1 undecided at most: the one judged and the ones drafted past it.
            self._judge = Judge(self.engine, limit=LAG + 1, speculate=self.engine.config.slots - 1)
        self._judge.submit(Job(idx=idx, raw=raw, parsed=parsed, source="llm", prompt_hash=prompt_hash,
                               drafted_on=drafted_on, seen_upto=seen_upto))

    def drain(self) -> None:
        """Wait until every submitted proposal is decided and recorded."""
        if self._judge is not None:
            judge, self._judge = self._judge, None
            judge.close()

    def log_llm_call(self, idx: int, attempt: int, **fields) -> None:
        self.engine.ledger.log_llm_call(run_id=self.engine.run_id, proposal_idx=idx, attempt=attempt, **fields)

    def note_round(self, entry: Round) -> None:
        """One line per reply in the run's agent-journal.jsonl (appended as the run goes)."""
        with open(self.engine.run_dir / JOURNAL, "a", encoding="utf-8") as f:
            f.write(json.dumps(asdict(entry)) + "\n")

    def stage(self, text: str) -> None:
        self.engine.events.stage(text)

    def save_summary(self, summary: dict) -> None:
        (self.engine.run_dir / "agent-summary.json").write_text(json.dumps(summary, indent=2))


def read_journal(run_dir, idx: int | None = None) -> list[dict]:
    """The journal's lines (of one proposal); a missing or damaged file reads as no lines."""
    from pathlib import Path

    path = Path(run_dir) / JOURNAL
    out = []
    try:
        text = path.read_text(encoding="utf-8", errors="replace")
    except OSError:
        return out
    for line in text.splitlines():
        try:
            entry = json.loads(line)
        except ValueError:
            continue
        if isinstance(entry, dict) and (idx is None or entry.get("idx") == idx):
            if idx is not None and entry.get("attempt") == 1:
                out = []  # asked afresh after a kill: the last session's rounds are the proposal's
            out.append(entry)
    return out
