"""Recording a decided proposal: its git commit (with trailers a replay reads back), the accepted
branch, its report, and the ledger row that marks it finished; reading records back from the
ledger. Each step is idempotent, so a run killed between two of them finishes on resume.
"""

from __future__ import annotations

import json
import traceback
from pathlib import Path
from typing import TYPE_CHECKING

from autoresearch.agent_port import read_journal
from autoresearch.escaping import commit_body, commit_subject, one_line
from autoresearch.faults import fault
from autoresearch.gate import StageDecision
from autoresearch.ledger import dumps
from autoresearch.outcomes import ProposalRecord, TrialRecord, files_hash, unified_diff
from autoresearch.reasons import NOT_APPLIED, Reason
from autoresearch.reports import ProposalContext, RunFacts, report_name, write_proposal_report, write_summary
from autoresearch.trial_cache import record_from_row

if TYPE_CHECKING:
    from autoresearch.engine import RunEngine


def internal_error(doing: str, exc: BaseException) -> str:
    where = traceback.extract_tb(exc.__traceback__)[-1:] if exc.__traceback__ else []
    at = f" at {Path(where[0].filename).name}:{where[0].lineno}" if where else ""
    return f"internal error while {doing} ({type(exc).__name__}: {str(exc)[:300]}{at}); the run went on"


def commit_message(record: ProposalRecord, engine: "RunEngine") -> str:
    """Model text is escaped (one-line subject, hypothesis indented): `git am` of a replay must not
    read it as a mail, a patch or one of the trailers below."""
    versions = engine.env["versions"]
    seeds = ",".join(str(t.seed) for t in record.candidate_trials) or "-"
    body = commit_body(record.hypothesis)
    return (f"{commit_subject(record.title)}\n\n" + (f"{body}\n\n" if body else "") +
            f"Autoresearch-Proposal: {record.idx:03d}\n"
            f"Autoresearch-Decision: {record.decision}\n"
            f"Autoresearch-Reason: {record.reason}\n"
            f"Autoresearch-Detail: {one_line(record.detail, 300) or '-'}\n"
            f"Autoresearch-Seeds: {seeds}\n"
            f"Autoresearch-Data: {dumps(engine.data.fingerprints)}\n"
            f"Autoresearch-Versions: python={versions.get('python')} torch={versions.get('torch')} "
            f"numpy={versions.get('numpy')}\n"
            f"Autoresearch-Run: {engine.run_id}\n")


def run_facts(engine: "RunEngine") -> RunFacts:
    """The plain facts the reports read: the engine is never handed to them."""
    return RunFacts(run_id=engine.run_id, run_dir=engine.run_dir, spec=engine.bench.spec, idea=engine.config.idea,
                    counts=dict(engine.data.counts), fingerprints=dict(engine.data.fingerprints),
                    metric_name=engine.metric.name, gate=engine.gate, gate_seeds=tuple(engine.gate_seeds),
                    isolation=engine.isolation, device=engine.device, env=engine.env)


def change_files(engine: "RunEngine", record: ProposalRecord, row: dict | None = None) -> tuple[dict, dict] | None:
    """(incumbent files, candidate files) of a proposal with a commit of its own, else None
    (``row``: its ledger row, where the caller has read it already)."""
    if not record.commit or record.reason in NOT_APPLIED:
        return None
    try:
        parent = (row or engine.ledger.proposal(engine.run_id, record.idx))["parent_commit"]
        return engine.repo.files_at(parent), engine.repo.files_at(record.commit)
    except Exception:  # the report must not die on a repo it cannot read; the diff stands
        return None


def proposal_context(engine: "RunEngine", record: ProposalRecord) -> ProposalContext:
    row = engine.ledger.proposal(engine.run_id, record.idx) or {}
    return ProposalContext(row=row, llm=engine.ledger.llm_totals(engine.run_id, record.idx),
                           journal=read_journal(engine.run_dir, record.idx), files=change_files(engine, record, row or None))


def finish_proposal(engine: "RunEngine", record: ProposalRecord, parent: str, new_files: dict[str, str] | None) -> None:
    """Commit, advance the accepted branch, write the report, mark the proposal finished, and bring
    the run's REPORT.md and results.tsv up to date (a killed run keeps its summary)."""
    if not record.diff and new_files is not None:
        record.diff = unified_diff(engine.repo.files_at(parent), new_files)
    message = commit_message(record, engine)
    sha = engine.repo.commit_proposal(record.idx, parent,
                                      new_files if record.reason not in NOT_APPLIED else None, message)
    record.commit = sha
    fault("commit")  # test hook: commit and ref written, ledger not yet told
    if record.decision == "accepted":
        engine.repo.advance_accepted(sha)
    if not record.candidate_trials and record.reason not in NOT_APPLIED:
        record.candidate_trials, record.incumbent_trials = trials_for(engine, record)
    path = write_proposal_report(run_facts(engine), record, proposal_context(engine, record))
    record.report_path = str(path)
    fault("report")  # test hook: report written, proposal not yet marked finished
    engine.ledger.update_proposal(engine.run_id, record.idx, state="finished", commit_sha=sha,
                                  report_path=str(path.relative_to(engine.run_dir)))


def finish_minimal(engine: "RunEngine", record: ProposalRecord, parent: str, exc: BaseException) -> None:
    """A proposal whose recording or reporting failed ends as a crash: it leaves the accepted
    branch if it had joined it, and gets a plain report with the facts and the error."""
    note = f"decided {record.decision} ({record.reason}), then " + internal_error("recording it", exc)
    if record.commit and engine.repo.ref_sha("refs/heads/accepted") == record.commit:
        engine.repo.retract_accepted(record.commit, parent)
    record.decision, record.reason = "rejected", Reason.CRASH
    record.detail = (record.detail + "; " if record.detail else "") + note
    path = engine.run_dir / "reports" / report_name(record)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(f"# Proposal {record.idx:03d}\n\n**Decision: REJECTED** (reason: `crash`)\n\n"
                    f"The full report could not be written: {note}\n")
    record.report_path = str(path)
    engine.ledger.update_proposal(engine.run_id, record.idx, state="finished", commit_sha=record.commit,
                                  report_path=str(path.relative_to(engine.run_dir)), decision=record.decision,
                                  reason=record.reason, detail=record.detail)


def trials_for(engine: "RunEngine", record: ProposalRecord) -> tuple[list[TrialRecord], list[TrialRecord]]:
    """The trials a proposal's decision used, from the ledger: the judged code's and its incumbent's,
    on the seeds the gate took. Trials are found by code and seed, not by who ran them first: with
    pipelining a speculative gate may have trained them, or trained another version of the same
    proposal (drafted against an incumbent that then moved), which is not what was judged."""
    row = engine.ledger.proposal(engine.run_id, record.idx)
    rows = engine.ledger.trials(engine.run_id)  # oldest first: a later row of the same seed wins below
    if row.get("seeds_json") and row["change_hash"]:
        used = set(json.loads(row["seeds_json"]))
        by_seed = {r["seed"]: r for r in rows if r["code_hash"] == row["change_hash"] and r["seed"] in used}
    else:  # decided before the seeds were recorded (or never trained): the trials it ran itself
        by_seed = {r["seed"]: r for r in rows if r["proposal_idx"] == record.idx}
    cand = [record_from_row(by_seed[s], True) for s in sorted(by_seed)]
    inc_hash = files_hash(engine.repo.files_at(row["parent_commit"]))
    used = {t.seed for t in cand}  # the looks the gate took: its incumbent trials on those seeds
    inc = {r["seed"]: record_from_row(r, True) for r in rows if r["code_hash"] == inc_hash and r["seed"] in used}
    return cand, [inc[s] for s in sorted(inc)]


def load_record(engine: "RunEngine", row: dict) -> ProposalRecord:
    gate = None
    if row["gate_json"]:
        try:
            gate = StageDecision.from_dict(json.loads(row["gate_json"]))
        except (TypeError, ValueError, KeyError):
            gate = None  # judged by gate v1 (an older run, shown read-only): its detail says what it found
    rec = ProposalRecord(idx=row["idx"], title=row["title"], hypothesis=row["hypothesis"],
                         decision=row["decision"] or "rejected", reason=row["reason"] or "", detail=row["detail"] or "",
                         diff=row["diff"] or "", gate=gate, commit=row["commit_sha"],
                         report_path=row["report_path"], wall_seconds=row["wall_seconds"] or 0.0,
                         integrity=json.loads(row["integrity_json"]) if row.get("integrity_json") else {})
    if rec.reason not in NOT_APPLIED:
        rec.candidate_trials, rec.incumbent_trials = trials_for(engine, rec)
    return rec


def write_run_summary(engine: "RunEngine", headline: dict | None = None) -> None:
    """REPORT.md (with the headline once there is one) and results.tsv, from the records so far."""
    records = engine.records()
    write_summary(run_facts(engine), records, engine.ledger.llm_totals(engine.run_id),
                  {r.idx: change_files(engine, r) for r in records}, headline)
