"""The trial engine: prepare -> baseline -> (check -> train -> predict -> score -> gate -> record) -> finish.

It knows nothing of where proposals come from (a file, an LLM): callers hand it raw text or a
parsed proposal and get back a decided, recorded, reported proposal. Every step is written to
the ledger before the next starts, so a killed run resumes without losing or repeating work.

``RunEngine`` composes the parts, each in a module named for its job: run_setup (making and
reopening a run folder), trial_cache (requests, trusted scoring, the cache of finished trials),
recording (commits, reports, reading records back) and verification (the headline); what stays
here is deciding a proposal: apply it, run the gate's looks with the integrity checks, record it.
(Just over 400 lines: deciding and its resume paths read best as one sequence.)
"""

from __future__ import annotations

import json
import time
from pathlib import Path

from autoresearch.agent.proposal import Proposal, apply_proposal
from autoresearch.config import RunConfig
from autoresearch.gate import decide_stage
from autoresearch.integrity import memorisation, seed_ignored
from autoresearch.ledger import LedgerError, dumps
# Also the names the agent and the tests know the engine by: ProposalRecord, TrialRecord, files_hash,
# NOT_APPLIED, SmokeResult live in the modules named for their jobs.
from autoresearch.outcomes import Events, ProposalRecord, TrialRecord, files_hash, unified_diff
from autoresearch.reasons import NOT_APPLIED, ProposalRejected, Reason
from autoresearch.rebase import StaleProposal, rebase
from autoresearch.recording import finish_minimal, finish_proposal, internal_error, load_record, write_run_summary
from autoresearch.run_setup import RunParts, create_run, open_run
from autoresearch.sandbox.executors import Executor, LocalExecutor
from autoresearch.sandbox.isolation import SandboxUnreadable
from autoresearch.sandbox.pyview import PackageNotInstalled
from autoresearch.scoring import Metric
from autoresearch.seeding import draw_seeds
from autoresearch.tamper import check_change
from autoresearch.trial_cache import SmokeResult, TrialCache, materialise
from autoresearch.verification import verify_chain


class RunEngine:
    def __init__(self, parts: RunParts, *, executor: Executor | None = None, events: Events | None = None):
        self.run_dir, self.run_id, self.bench, self.data = parts.run_dir, parts.run_id, parts.bench, parts.data
        self.ledger, self.repo, self.config, self.gate = parts.ledger, parts.repo, parts.config, parts.gate
        self.isolation, self.device, self.env = parts.isolation, parts.device, parts.env
        self.metric = Metric(self.bench.spec.metric.name, self.bench.spec.metric.direction)
        self.secret = parts.secret
        self.trials = TrialCache(run_dir=self.run_dir, run_id=self.run_id, bench=self.bench, data=self.data,
                                 ledger=self.ledger, secret=self.secret, device=self.device, isolation=self.isolation,
                                 torch_version=self.env["versions"].get("torch"),
                                 executor=executor or LocalExecutor(self.config.slots), events=events or Events())
        # Drawn per run from its secret (autoresearch.seeding): unpredictable, and alike whatever they are for.
        self.gate_seeds = parts.gate_seeds if parts.gate_seeds is not None else \
            draw_seeds(self.secret, "gate", self.gate.max_seeds)
        self.verify_seeds = draw_seeds(self.secret, "verify", parts.verify_count)

    @classmethod
    def create(cls, config: RunConfig, *, executor: Executor | None = None, events: Events | None = None) -> "RunEngine":
        events = events or Events()
        return cls(create_run(config, events), executor=executor, events=events)

    @classmethod
    def open(cls, run_dir: Path, *, executor: Executor | None = None, events: Events | None = None,
             slots: int | None = None, read_only: bool = False, isolation: str | None = None) -> "RunEngine":
        """Re-open an existing run (resume, replay --verify): data is re-prepared and re-checked.
        ``read_only`` (show, list) skips data preparation and trusts the recorded fingerprints."""
        return cls(open_run(run_dir, slots=slots, read_only=read_only, isolation=isolation),
                   executor=executor, events=events)

    # The executor and the live view belong to the trial cache; a session may replace either.
    @property
    def executor(self) -> Executor:
        return self.trials.executor

    @executor.setter
    def executor(self, executor: Executor) -> None:
        self.trials.executor = executor

    @property
    def events(self) -> Events:
        return self.trials.events

    @events.setter
    def events(self, events: Events) -> None:
        self.trials.events = events

    @property
    def pipelining(self) -> bool:
        """Whether proposals overlap (autoresearch.pipeline): the config's choice, else on for a
        proposals file (it cannot change a decision) and off for the agent (drafting ahead changes
        what the agent has seen when it writes a proposal)."""
        if self.config.pipeline is not None:
            return self.config.pipeline
        return not self.config.idea

    # ------------------------------------------------------------------ trials

    def workspace(self, files: dict[str, str], name: str) -> Path:
        """Materialise a code version as a read-only-mounted folder (content-addressed)."""
        return materialise(self.run_dir, files, name)

    def smoke(self, files: dict[str, str]) -> SmokeResult:
        """The run's epoch budget on a slice of the train split in the sandbox (trial_cache.TrialCache.smoke)."""
        return self.trials.smoke(files)

    def run_trials(self, files: dict[str, str], seeds: list[int], *, role: str,
                   proposal_idx: int | None = None, ahead: list[list[int]] = ()) -> list[TrialRecord]:
        """Train+predict+score one code version on seeds, reusing every finished trial of the same key
        (``ahead``: seeds a later look may want, trained with these when that pays; TrialCache.run)."""
        return self.trials.run(files, seeds, role=role, proposal_idx=proposal_idx, ahead=ahead)

    # ------------------------------------------------------------------ proposals

    @property
    def incumbent(self) -> tuple[str, dict[str, str]]:
        sha = self.repo.accepted_tip
        return sha, self.repo.files_at(sha)

    def next_index(self) -> int:
        rows = self.ledger.proposals(self.run_id)
        return (max(r["idx"] for r in rows) + 1) if rows else 1

    def ensure_baseline(self, seeds: int | None = None) -> list[TrialRecord]:
        """The incumbent's trials on the first ``seeds`` gate seeds (default: the gate's first look),
        trained once and cached; a failure of the incumbent itself stops the run."""
        self.events.stage("training the incumbent on the gate seeds (cached after the first time)")
        _, files = self.incumbent
        return self._incumbent_trials(files, self.gate_seeds[:seeds or self.gate.stages[0]])

    def _incumbent_trials(self, files: dict[str, str], seeds: list[int],
                          ahead: list[list[int]] = ()) -> list[TrialRecord]:
        trials = self.run_trials(files, seeds, role="incumbent", ahead=ahead)
        bad = [t for t in trials if not t.ok]
        if bad:
            raise RuntimeError(f"the incumbent itself failed on seed {bad[0].seed}: {bad[0].status}: {bad[0].detail}\n"
                               f"{bad[0].summary.get('log_tail', '')[-2000:]}")
        return trials

    def store_pending(self, idx: int, raw: str, parsed: Proposal | ProposalRejected, *, source: str,
                      prompt_hash: str | None = None, drafted_on: str | None = None,
                      seen_upto: int | None = None) -> None:
        """Record a proposal handed to the pipeline before it is judged: its reply is in the ledger at
        once (a kill loses no LLM call), its parent is set only when it is judged."""
        self.ledger.add_proposal(run_id=self.run_id, idx=idx, source=source, title=_title(idx, parsed),
                                 hypothesis=parsed.hypothesis if isinstance(parsed, Proposal) else "", raw=raw,
                                 edits_json=dumps(parsed.to_dict()) if isinstance(parsed, Proposal) else None,
                                 parent_commit=None, prompt_hash=prompt_hash,
                                 draft_json=dumps({"drafted_on": drafted_on, "seen_upto": seen_upto})
                                 if drafted_on else None)

    def evaluate(self, idx: int, raw: str, parsed: Proposal | ProposalRejected, *, source: str,
                 prompt_hash: str | None = None, drafted_on: str | None = None,
                 seen_upto: int | None = None) -> ProposalRecord:
        """Decide and record proposal ``idx`` (resumable: a finished one is returned from the ledger),
        against the incumbent of this moment. ``drafted_on``: the incumbent commit the agent drafted
        it against when that may be older (pipelining): its change is then rebased onto the incumbent
        of this moment, or it ends ``stale`` (autoresearch.rebase); ``seen_upto``: the last decision
        the agent had seen (recorded)."""
        existing = self.ledger.proposal(self.run_id, idx)
        if existing is not None and existing["state"] == "finished":
            return self.load_record(existing)
        started = time.monotonic()
        title = _title(idx, parsed)
        hypothesis = parsed.hypothesis if isinstance(parsed, Proposal) else ""
        parent, incumbent_files = self.incumbent
        draft = json.loads(existing["draft_json"]) if existing is not None and existing.get("draft_json") else {}
        drafted_on = drafted_on or draft.get("drafted_on")
        if drafted_on:
            draft = {**draft, "drafted_on": drafted_on, "seen_upto": seen_upto if seen_upto is not None
                     else draft.get("seen_upto")}
        if existing is not None and existing["state"] == "decided" and existing["parent_commit"]:
            # Decided before a crash: finish against the parent it was decided on (the accepted
            # branch may already have moved to this very proposal).
            parent = existing["parent_commit"]
            incumbent_files = self.repo.files_at(parent)
        elif existing is not None and existing["parent_commit"] and existing["parent_commit"] != parent:
            raise LedgerError(f"proposal {idx} was started against {existing['parent_commit'][:10]} but the "
                              f"accepted tip is now {parent[:10]}: the ledger and git repo disagree")
        self.ledger.add_proposal(run_id=self.run_id, idx=idx, source=source, title=title, hypothesis=hypothesis,
                                 raw=raw, edits_json=dumps(parsed.to_dict()) if isinstance(parsed, Proposal) else None,
                                 parent_commit=parent, prompt_hash=prompt_hash,
                                 draft_json=dumps(draft) if draft else None)
        if existing is not None and not existing["parent_commit"]:
            # Handed to the pipeline ahead of its turn (store_pending): judged now, against this incumbent.
            self.ledger.update_proposal(self.run_id, idx, parent_commit=parent)
        self.events.proposal_started(idx, title)
        record = ProposalRecord(idx=idx, title=title, hypothesis=hypothesis, decision="rejected", reason="",
                                detail="")
        new_files: dict[str, str] | None = None
        if existing is not None and existing["state"] == "decided":
            record = self.load_record(existing)
            if existing["edits_json"] and existing["reason"] not in NOT_APPLIED:
                try:
                    new_files = self._candidate_files(parsed, parent, incumbent_files, drafted_on, record, {})  # type: ignore[arg-type]
                except Exception as exc:  # recorded already; only its commit is missing
                    _reraise_storage(exc)
                    new_files = None
        else:
            if isinstance(parsed, ProposalRejected):
                record.reason, record.detail = parsed.reason, str(parsed)
            else:
                try:
                    new_files = self._candidate_files(parsed, parent, incumbent_files, drafted_on, record, draft)
                    record.diff = unified_diff(incumbent_files, new_files)
                    check_change(incumbent_files, new_files)  # static tamper check: ends `tampered`
                    if parsed.precheck is not None:  # the agent's checks found it cannot run: never trained
                        raise parsed.precheck
                    self._gate(record, incumbent_files, new_files)
                except ProposalRejected as exc:
                    record.reason, record.detail = exc.reason, str(exc)
                except Exception as exc:
                    # Nothing one proposal does may stop the run: whatever broke while trialling or
                    # scoring it ends this proposal as a crash, with the cause, and the run goes on.
                    _reraise_storage(exc)
                    record.decision, record.gate = "rejected", None
                    record.reason, record.detail = Reason.CRASH, internal_error("judging this proposal", exc)
            record.wall_seconds = time.monotonic() - started
            seeds = [t.seed for t in record.candidate_trials]
            self.ledger.update_proposal(
                self.run_id, idx, state="decided", decision=record.decision, reason=record.reason,
                detail=record.detail, diff=record.diff, change_hash=files_hash(new_files) if new_files else None,
                gate_json=dumps(record.gate.to_dict()) if record.gate else None, decided_at=time.time(),
                wall_seconds=record.wall_seconds, integrity_json=dumps(record.integrity) if record.integrity else None,
                seeds_json=dumps(seeds) if seeds else None, draft_json=dumps(draft) if draft else None)
        try:
            self._finish_proposal(record, parent, new_files)
        except Exception as exc:
            # Recording or reporting failed: finish the proposal with a minimal report that says why,
            # so that a resume does not meet the same failure again.
            _reraise_storage(exc)
            self._finish_minimal(record, parent, exc)
        try:
            self.events.proposal_decided(record)
        except Exception:  # the live view only; the records are written
            pass
        return record

    def _candidate_files(self, parsed: Proposal, parent: str, incumbent_files: dict[str, str],
                         drafted_on: str | None, record: ProposalRecord | None, draft: dict) -> dict[str, str]:
        """The files a proposal is judged on: its edits applied to the incumbent of this moment, or,
        for a draft written against an older incumbent, its change rebased onto this one (a
        conflict raises StaleProposal with the draft's own diff in ``record``; ``draft`` notes it)."""
        editable = self.bench.spec.editable
        if not drafted_on or drafted_on == parent:
            return apply_proposal(incumbent_files, parsed, editable)
        base = self.repo.files_at(drafted_on)
        drafted = apply_proposal(base, parsed, editable)
        chain = self.repo.accepted_chain()
        later = chain[chain.index(drafted_on) + 1:] if drafted_on in chain else chain
        by_commit = {r["commit_sha"]: r["idx"] for r in self.ledger.proposals(self.run_id) if r["commit_sha"]}
        moved_by = "the acceptance of " + ", ".join(f"#{by_commit.get(c, c[:10])}" for c in later)
        try:
            files, merged = rebase(base, drafted, incumbent_files, moved_by=moved_by)
        except StaleProposal:
            if record is not None:
                record.diff = unified_diff(base, drafted)  # what was proposed, against what it was written for
            raise
        if files == incumbent_files:  # as apply_proposal refuses edits that change nothing
            raise StaleProposal(f"drafted against an older incumbent; after {moved_by} its change is already "
                                "there: nothing left to judge")
        draft.update(rebased_onto=parent, merged=merged, moved_by=moved_by.removeprefix("the acceptance of "))
        return files

    def speculate(self, idx: int, parsed: Proposal | ProposalRejected, *, drafted_on: str | None = None,
                  keep_going=lambda: True) -> None:
        """Train, ahead of its turn, what judging ``idx`` will need if the incumbent does not move
        before then: the gate's looks against the incumbent of this moment (autoresearch.pipeline).
        It decides and records nothing but trials, which the judge then finds in the trial cache; it
        stops at the next look once the incumbent has moved. Whatever goes wrong here is left for
        the judge to meet and record."""
        if not isinstance(parsed, Proposal) or parsed.precheck is not None:
            return
        parent, incumbent_files = self.incumbent
        try:
            new_files = self._candidate_files(parsed, parent, incumbent_files, drafted_on, None, {})
            check_change(incumbent_files, new_files)
            scratch = ProposalRecord(idx=idx, title="", hypothesis="", decision="rejected", reason="", detail="")
            self._gate(scratch, incumbent_files, new_files,
                       keep_going=lambda: keep_going() and self.repo.accepted_tip == parent)
        except Exception as exc:  # the judge meets the same problem in turn and records it
            self.events.stage(f"note: speculative trials of proposal {idx} stopped ({type(exc).__name__}: "
                              f"{str(exc)[:120]}); it is judged in turn")

    def _gate(self, record: ProposalRecord, incumbent_files: dict[str, str], new_files: dict[str, str], *,
              keep_going=lambda: True) -> None:
        """The sequential gate (autoresearch.gate): at each look, the first stages[i] gate seeds of both
        arms (trials of earlier looks and the incumbent's are cached), failure and integrity checks,
        then one decide_stage; the first look that accepts or rejects ends it. ``keep_going``: asked
        before each look (a speculative gate stops when the incumbent moves; a judge's never does).
        A look that starts a sandbox may train the next look's seeds in it too (TrialCache.ahead_pays:
        where seeds are cheap beside a sandbox's start); the look decides on its own seeds only."""
        stages = self.gate.stages
        for stage, count in enumerate(stages):
            if not keep_going():
                return
            seeds = self.gate_seeds[:count]
            ahead = [self.gate_seeds[a:b] for a, b in zip(stages[stage:], stages[stage + 1:])]
            record.incumbent_trials = self._incumbent_trials(incumbent_files, seeds, ahead)
            cand = self.run_trials(new_files, seeds, role="candidate", proposal_idx=record.idx, ahead=ahead)
            record.candidate_trials = cand
            if self._failed(record, cand):
                return
            self._check_matched(cand + record.incumbent_trials)
            if self._integrity_fails(record, cand, record.incumbent_trials):
                return
            result = decide_stage(self.gate, stage, [t.correct("test") for t in cand],
                                  [t.correct("test") for t in record.incumbent_trials], self.metric, seeds=seeds)
            record.gate = result
            if result.action != "continue":
                break
        record.decision = "accepted" if record.gate.accepted else "rejected"
        record.reason, record.detail = record.gate.reason or Reason.NOT_BETTER, record.gate.detail

    def _integrity_fails(self, record: ProposalRecord, cand: list[TrialRecord], inc: list[TrialRecord]) -> bool:
        """The checks that no statistic can make: one fixed draw on every seed (``seed_ignored``),
        an answer key (``memorised``). Their figures go into the record either way."""
        problem = seed_ignored([t.summary.get("train_report") or {} for t in cand])
        if problem:
            record.reason, record.detail = Reason.SEED_IGNORED, problem
            return True
        if all(t.perturbed_correct for t in cand + inc):
            pairs = [(t.correct("test"), t.correct("perturbed")) for t in cand]
            base = {t.seed: t for t in inc}
            inc_pairs = [(base[t.seed].correct("test"), base[t.seed].correct("perturbed")) for t in cand]
            check = memorisation(pairs, inc_pairs, margin=self.bench.spec.integrity.memorised_margin)
            if check is not None:
                record.integrity["memorisation"] = {"excess_drop": check.excess_drop, "z": check.z,
                                                    "flagged": check.flagged, "detail": check.detail}
                if check.flagged:
                    record.reason, record.detail = Reason.MEMORISED, check.detail
                    return True
        return False

    def _failed(self, record: ProposalRecord, trials: list[TrialRecord]) -> bool:
        bad = next((t for t in trials if not t.ok), None)
        if bad is None:
            return False
        record.reason = Reason(bad.status)
        record.detail = f"seed {bad.seed}: {bad.detail}"
        return True

    def _check_matched(self, trials: list[TrialRecord]) -> None:
        for t in trials:
            if t.summary.get("fingerprints") != self.data.fingerprints or t.summary.get("counts") != self.data.counts:
                raise _DataMismatchRejection(f"trial on seed {t.seed} was scored on other data "
                                             f"({t.summary.get('counts')} vs {self.data.counts})")

    def _finish_proposal(self, record: ProposalRecord, parent: str, new_files: dict[str, str] | None) -> None:
        finish_proposal(self, record, parent, new_files)
        try:
            write_run_summary(self)
        except Exception as exc:  # the summary is rewritten after the next proposal and at the end
            _reraise_storage(exc)
            self.events.stage(f"note: REPORT.md/results.tsv not updated ({type(exc).__name__}: {exc})")

    def _finish_minimal(self, record: ProposalRecord, parent: str, exc: BaseException) -> None:
        finish_minimal(self, record, parent, exc)

    def load_record(self, row: dict) -> ProposalRecord:
        return load_record(self, row)

    def records(self) -> list[ProposalRecord]:
        return [self.load_record(r) for r in self.ledger.proposals(self.run_id) if r["state"] != "pending"]

    # ------------------------------------------------------------------ finishing

    def verify_chain(self, final_files: dict[str, str] | None = None,
                     baseline_files: dict[str, str] | None = None) -> dict:
        """Re-run the final incumbent against the original baseline on fresh seeds: the headline."""
        return verify_chain(self, final_files, baseline_files)

    def finish(self) -> dict:
        headline = self.verify_chain() if self.config.verify else {"verified": False, "detail": "verification skipped"}
        self.ledger.update_run(self.run_id, headline_json=dumps(headline), status="finished", finished_at=time.time())
        write_run_summary(self, headline)
        return headline


def _title(idx: int, parsed: Proposal | ProposalRejected) -> str:
    return parsed.title if isinstance(parsed, Proposal) else f"invalid proposal #{idx}"


class _DataMismatchRejection(ProposalRejected):
    reason = Reason.DATA_MISMATCH


STORAGE_ERRNOS = (28, 30, 13, 122)  # ENOSPC, EROFS, EACCES, EDQUOT: the host's problem, not the proposal's


def _reraise_storage(exc: BaseException) -> None:
    """Failures of the host, not of the proposal, stop the run (resume after fixing them): storage
    and the ledger, a sandbox that cannot be set up (unreadable files, a package missing from the
    environment). Nothing else does."""
    if isinstance(exc, (LedgerError, SandboxUnreadable, PackageNotInstalled)) or \
            (isinstance(exc, OSError) and exc.errno in STORAGE_ERRNOS):
        raise exc


def read_proposal_lines(text: str) -> list[str]:
    """Non-blank lines of a proposals file, each one proposal object (JSON Lines)."""
    return [line for line in text.splitlines() if line.strip()]


def run_proposal_lines(engine: RunEngine, lines: list[str]) -> list[ProposalRecord]:
    """Evaluate each line in order; a malformed line is a rejected proposal and the run goes on.
    With pipelining (the default for a file: it cannot change a decision, autoresearch.pipeline)
    up to ``slots`` proposals are in flight, judged in order by one judge."""
    from autoresearch.agent.proposal import InvalidProposal, parse_proposal_json
    from autoresearch.pipeline import Job, Judge

    engine.ensure_baseline()
    parsed: list[Proposal | ProposalRejected] = []
    for line in lines:
        try:
            parsed.append(parse_proposal_json(line))
        except InvalidProposal as exc:
            parsed.append(exc)
    if not engine.pipelining:
        return [engine.evaluate(idx, line, p, source="file") for idx, (line, p) in enumerate(zip(lines, parsed), 1)]
    slots = engine.config.slots
    judge = Judge(engine, limit=slots, speculate=slots - 1)
    try:
        for idx, (line, p) in enumerate(zip(lines, parsed), start=1):
            row = engine.ledger.proposal(engine.run_id, idx)
            if row is not None and row["state"] == "finished":
                continue  # a resumed run: decided before the kill
            judge.submit(Job(idx=idx, raw=line, parsed=p, source="file"))
    finally:
        judge.close()
    return engine.records()
