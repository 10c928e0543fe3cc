"""Pipelining (autoresearch.pipeline): proposals overlap in time, decisions do not move.

* A proposals file gives the same decisions, reasons, gate figures, seeds and committed trees for
  1 and N slots, pipelining on and off (canned trials, through the CLI).
* With N slots, proposal i+1's trials run while proposal i's are still running; the agent asks the
  LLM for proposal i+1 while proposal i's trials are still running. Both proved by events from an
  executor that blocks until released, never by timing thresholds.
* A proposal drafted before an acceptance is rebased onto the new incumbent (three-way) or recorded
  ``stale``: never judged on the code it was drafted against.
* A run killed with proposals in flight resumes without new LLM calls for them (tests below, and
  the kill itself is a real SIGKILL of the fake CLI).
"""

from __future__ import annotations

import json
import os
import signal
import sqlite3
import subprocess
import threading
from pathlib import Path

import git
import pytest
from click.testing import CliRunner

from agent_fakes import ADAM_REPLY, MOMENTUM_REPLY, NO_EDITS_REPLY, FakeLLM, ScriptedServer
from conftest import ADAM, COMMENT_ONLY, FAKE_AUTORESEARCH, proposal_line
from fake_executor import FakeExecutor, _read_files, is_smoke

SECRET = "5e" * 32

MOMENTUM = proposal_line("Momentum", [{"path": "optim.py", "search": "lr=0.01)", "replace": "lr=0.01, momentum=0.9)"}])
TINY_LR = proposal_line("Tiny learning rate", [{"path": "optim.py", "search": "lr=0.01", "replace": "lr=1e-6"}])
DOCSTRING = proposal_line("Docstring", [{"path": "optim.py",
                                         "search": "    Baseline: plain stochastic gradient descent at a fixed learning "
                                                   "rate, no schedule.",
                                         "replace": "    Baseline: plain SGD at a fixed learning rate, no schedule."}])
# Accepted (momentum), then a change on top of it, a malformed line, a change that no longer applies
# once Adam is in, a comment (re-gated against each incumbent), and Adam on top of momentum.
ADAM_ON_MOMENTUM = proposal_line("Adam after momentum", [{"path": "optim.py",
                                                          "search": "torch.optim.SGD(params, lr=0.01, momentum=0.9)",
                                                          "replace": "torch.optim.Adam(params, lr=1e-3)"}])
LINES = [MOMENTUM, COMMENT_ONLY, "{not json", ADAM_ON_MOMENTUM, TINY_LR, DOCSTRING, ADAM]


def _cli_run(tmp: Path, name: str, *args: str) -> Path:
    from autoresearch.cli import main

    proposals = tmp / "p.jsonl"
    proposals.write_text("\n".join(LINES) + "\n")
    runs = tmp / name
    result = CliRunner().invoke(main, ["run", "--proposals-file", str(proposals), "--runs-dir", str(runs),
                                       "--no-verify", "--isolation", "none", "--device", "cpu", *args],
                                env={"AUTORESEARCH_RUN_SECRET": SECRET, "COLUMNS": "200"}, catch_exceptions=False)
    assert result.exit_code == 0, result.output
    (run_dir,) = list(runs.iterdir())
    return run_dir


def _outcome(run_dir: Path) -> dict:
    """What a run decided, in a form two runs can be compared by (commit shas hold the run id and
    times: their trees and the accepted chain's trees are compared instead)."""
    db = sqlite3.connect(run_dir / "ledger.sqlite")
    db.row_factory = sqlite3.Row
    props = [dict(r) for r in db.execute("SELECT * FROM proposals ORDER BY idx")]
    repo = git.Repo(run_dir / "repo")
    out = []
    for p in props:
        assert p["state"] == "finished"
        gate = json.loads(p["gate_json"]) if p["gate_json"] else None
        commit = repo.commit(p["commit_sha"])
        out.append((p["idx"], p["decision"], p["reason"], p["detail"], p["diff"], p["change_hash"], p["seeds_json"],
                    gate and (gate["p_value"], gate["mean_difference"], gate["seeds"]),
                    commit.tree.hexsha, commit.parents[0].tree.hexsha))
    chain = [c.tree.hexsha for c in repo.iter_commits("accepted")]
    return {"proposals": out, "accepted_trees": chain}


def test_same_decisions_for_one_and_n_slots_pipelining_on_and_off(tmp_path, fake_trials):
    runs = {(1, "off"): _cli_run(tmp_path, "one-off", "--slots", "1", "--no-pipeline"),
            (1, "on"): _cli_run(tmp_path, "one-on", "--slots", "1", "--pipeline"),
            (3, "on"): _cli_run(tmp_path, "three-on", "--slots", "3"),  # the default for a file: on
            (3, "off"): _cli_run(tmp_path, "three-off", "--slots", "3", "--no-pipeline")}
    outcomes = {k: _outcome(v) for k, v in runs.items()}
    reference = outcomes[1, "off"]
    assert [p[2] for p in reference["proposals"]] == ["accepted", "not_better", "invalid_proposal", "accepted",
                                                      "apply_failed", "not_better", "apply_failed"]
    for key, outcome in outcomes.items():
        assert outcome == reference, key
    # The run's config records the choice (resolved: a file's default is on).
    config = json.loads((runs[3, "on"] / "config.json").read_text())["run"]
    assert config["pipeline"] is True and config["slots"] == 3
    assert json.loads((runs[1, "off"] / "config.json").read_text())["run"]["pipeline"] is False
    # With 3 slots and pipelining, proposals ran ahead of their turn: trials of code that was never
    # judged (speculated against an incumbent that then moved) exist, and no trial ran twice.
    db = sqlite3.connect(runs[3, "on"] / "ledger.sqlite")
    judged = {r[0] for r in db.execute("SELECT change_hash FROM proposals WHERE change_hash IS NOT NULL")}
    trained = db.execute("SELECT code_hash, seed FROM trials").fetchall()
    assert len(trained) == len(set(trained))
    baseline = git.Repo(runs[3, "on"] / "repo").tags["baseline"].commit
    from autoresearch.outcomes import files_hash
    from autoresearch.records import tree_files

    judged |= {files_hash(tree_files(git.Repo(runs[3, "on"] / "repo").commit(sha))) for (sha,) in
               db.execute("SELECT parent_commit FROM proposals")} | {files_hash(tree_files(baseline))}
    assert {h for h, _ in trained} - judged, "no proposal was trained ahead of its turn"


class Blocking:
    """A trial function for LocalExecutor that records events and holds the trials of one code
    version until a test releases them (or 20 s pass: then "timeout" is recorded and the test fails)."""

    def __init__(self, holds, events: list, on_start=lambda code: None):
        self.fake = FakeExecutor()
        self.on_start = on_start  # called with the code's name once its start is recorded
        self.holds = holds  # files -> whether its gate trials wait for the release
        self.events = events
        self.release = threading.Event()
        self.held = threading.Event()  # a held trial has started
        self.lock = threading.Lock()

    def note(self, what: str) -> None:
        with self.lock:
            self.events.append(what)

    def __call__(self, req):
        files = _read_files(req.workspace)
        label = "smoke" if is_smoke(req) else "trials"
        code = "momentum" if "momentum=0.9" in files.get("optim.py", "") else \
            "adam" if "Adam" in files.get("optim.py", "") else "other"
        self.note(f"{label}-{code}-start")
        if not is_smoke(req):
            self.on_start(code)
        if not is_smoke(req) and self.holds(files):
            self.held.set()
            if not self.release.wait(20):
                self.note("timeout")
        out = self.fake.run(req)
        self.note(f"{label}-{code}-end")
        return out


def test_with_n_slots_the_next_proposal_trains_while_one_is_still_training(tmp_path, monkeypatch):
    """Momentum's trials (two seeds, two slots) hold until Adam's, the next proposal's, start on the
    third slot: only a pipeline gets there; one proposal at a time would wait 20 s, record a timeout."""
    from autoresearch.config import RunConfig
    from autoresearch.engine import RunEngine, run_proposal_lines
    from autoresearch.sandbox.executors import LocalExecutor

    events: list[str] = []
    release = threading.Event()
    # The next proposal's trial has started: let the first one's finish.
    blocking = Blocking(lambda files: "momentum=0.9" in files.get("optim.py", ""), events,
                        on_start=lambda code: code == "adam" and release.set())
    blocking.release = release
    trial_fn = blocking

    monkeypatch.setenv("AUTORESEARCH_RUN_SECRET", SECRET)
    config = RunConfig(benchmark="digits-mlp", runs_dir=tmp_path, proposals=2, verify=False, slots=3,
                       pipeline=True, isolation="none", device="cpu")
    engine = RunEngine.create(config, executor=LocalExecutor(3, trial_fn=trial_fn))
    records = run_proposal_lines(engine, [MOMENTUM, ADAM])
    assert "timeout" not in events
    assert events.index("trials-adam-start") < events.index("trials-momentum-end")
    assert [r.reason for r in records] == ["accepted", "apply_failed"]  # Adam's search text is gone


def _agent_engine(tmp_path: Path, monkeypatch, trial_fn, *, slots: int, pipeline: bool | None, proposals: int):
    from autoresearch.config import RunConfig
    from autoresearch.engine import RunEngine
    from autoresearch.sandbox.executors import LocalExecutor

    monkeypatch.setenv("AUTORESEARCH_RUN_SECRET", SECRET)
    config = RunConfig(benchmark="digits-mlp", runs_dir=tmp_path, idea="adaptive LR optimizer", proposals=proposals,
                       verify=False, slots=slots, pipeline=pipeline, isolation="none", device="cpu", parse_retries=0)
    return RunEngine.create(config, executor=LocalExecutor(slots, trial_fn=trial_fn))


def test_the_agent_asks_for_the_next_proposal_while_trials_run(tmp_path, monkeypatch):
    """One slot: proposal 1's gate trials hold until the LLM is asked for proposal 2."""
    from autoresearch.agent.loop import LLMSession, run_agent

    events: list[str] = []
    blocking = Blocking(lambda files: "momentum=0.9" in files.get("optim.py", ""), events)

    class Recording(FakeLLM):
        def complete(self, messages, *, log=None, temperature=None):
            if len(self.calls) + 1 == 2:
                # The agent may get here before the judge has started proposal 1's trials: wait for
                # them (without pipelining they would be over by now), then release them.
                blocking.held.wait(10)
                blocking.note("llm-2")
                blocking.release.set()
            return super().complete(messages, log=log, temperature=temperature)

    engine = _agent_engine(tmp_path, monkeypatch, blocking, slots=1, pipeline=True, proposals=2)
    assert engine.pipelining
    run_agent(engine, LLMSession(client=Recording([MOMENTUM_REPLY, NO_EDITS_REPLY])))
    assert "timeout" not in events
    assert events.index("trials-momentum-start") < events.index("llm-2") < events.index("trials-momentum-end")
    rows = engine.ledger.proposals(engine.run_id)
    assert [r["reason"] for r in rows] == ["accepted", "invalid_proposal"]
    # What proposal 2 was drafted from: the baseline, before proposal 1's decision (recorded).
    draft = json.loads(rows[1]["draft_json"])
    assert draft["drafted_on"] == engine.repo.baseline and draft["seen_upto"] == 0


def test_the_agent_default_is_not_to_pipeline(tmp_path, monkeypatch):
    engine = _agent_engine(tmp_path, monkeypatch, FakeExecutor().run, slots=2, pipeline=None, proposals=1)
    assert not engine.pipelining


# A change far from the optimizer's line that merges with momentum. (A docstring alone never reaches
# the gate from the agent: it computes what the current code computes, a `duplicate` repair round.)
CONSTANT_REPLY = {"title": "Clipping constant", "hypothesis": "h", "edits": [
    {"path": "optim.py", "search": "import torch\n", "replace": "import torch\nGRAD_CLIP = None  # clipping: off\n"}]}
ADAM_ON_MOMENTUM_REPLY = json.loads(ADAM_ON_MOMENTUM)
LR_ON_MOMENTUM_REPLY = {"title": "Larger step with momentum", "hypothesis": "h", "edits": [
    {"path": "optim.py", "search": "lr=0.01, momentum=0.9", "replace": "lr=0.02, momentum=0.9"}]}


@pytest.mark.parametrize("slots", [1, 2])
def test_a_draft_is_rebased_onto_a_moved_incumbent_or_recorded_stale(tmp_path, monkeypatch, slots):
    """Proposal j is drafted from decision j-2. #2 (a constant) was drafted on the baseline, #1
    (momentum) was then accepted: its change merges into optim.py and the merged code is judged.
    #4 was drafted on momentum, #3 (Adam) was then accepted and rewrote the same line: stale."""
    from autoresearch.agent.loop import LLMSession, run_agent

    replies = [MOMENTUM_REPLY, json.dumps(CONSTANT_REPLY), json.dumps(ADAM_ON_MOMENTUM_REPLY),
               json.dumps(LR_ON_MOMENTUM_REPLY)]
    engine = _agent_engine(tmp_path, monkeypatch, FakeExecutor().run, slots=slots, pipeline=True, proposals=4)
    llm = FakeLLM(replies)
    run_agent(engine, LLMSession(client=llm))
    rows = engine.ledger.proposals(engine.run_id)
    assert [r["reason"] for r in rows] == ["accepted", "not_better", "accepted", "stale"]
    repo = engine.repo
    first, second, third, fourth = rows
    # #2: judged on momentum + its constant, against momentum; its diff is the constant alone.
    draft = json.loads(second["draft_json"])
    assert draft["drafted_on"] == repo.baseline and draft["seen_upto"] == 0
    assert draft["rebased_onto"] == first["commit_sha"] == second["parent_commit"] and draft["merged"] == ["optim.py"]
    judged = repo.files_at(second["commit_sha"])["optim.py"]
    assert "momentum=0.9" in judged and "GRAD_CLIP = None" in judged
    changed = [line for line in second["diff"].splitlines() if line[:1] in "+-" and line[:3] not in ("+++", "---")]
    assert changed == ["+GRAD_CLIP = None  # clipping: off"]
    # What the agent saw when drafting #2: the baseline and no decision (#1's reply was not in its prompt).
    assert "momentum=0.9" not in llm.calls[1][1]["content"] and "(none yet)" in llm.calls[1][1]["content"]
    # #4: drafted on momentum (#1), stale after #3; never trained as what it was drafted against.
    draft = json.loads(fourth["draft_json"])
    assert draft["drafted_on"] == first["commit_sha"] and draft["seen_upto"] == 2
    assert "#3" in fourth["detail"] and "optim.py" in fourth["detail"] and fourth["seeds_json"] is None
    assert "lr=0.02, momentum=0.9" in fourth["diff"]  # the drafted change, recorded with its reason
    assert repo.files_at(fourth["commit_sha"]) == repo.files_at(third["commit_sha"])  # nothing of it applied
    report = (engine.run_dir / fourth["report_path"]).read_text()
    assert "`stale`" in report and "drafted ahead (pipelining)" in report
    report = (engine.run_dir / second["report_path"]).read_text()
    assert "rebased onto" in report and "three-way merge" in report
    # Every judged proposal's parent is the accepted tip of its turn: the chain is 1 then 3.
    chain = repo.accepted_chain()
    assert chain == [first["commit_sha"], third["commit_sha"]]
    assert third["parent_commit"] == first["commit_sha"] and fourth["parent_commit"] == third["commit_sha"]


def test_kill_with_proposals_in_flight_then_resume(tmp_path):
    """SIGKILL when proposal 2 is stored while proposal 1 is still being judged (its second look);
    resume judges both from the ledger without asking the LLM again, as an uninterrupted run would."""

    def run(runs: Path, fault: str | None) -> tuple[subprocess.CompletedProcess, ScriptedServer]:
        env = {k: v for k, v in os.environ.items() if k != "AUTORESEARCH_FAULT"}
        env.update(AUTORESEARCH_RUN_SECRET=SECRET, AUTORESEARCH_FAKE_TRIAL_SECONDS="1.5",
                   AUTORESEARCH_FAKE_SMOKE_SECONDS="0", **({"AUTORESEARCH_FAULT": fault} if fault else {}))
        server = ScriptedServer([ADAM_REPLY, MOMENTUM_REPLY], default=NO_EDITS_REPLY)
        server.__enter__()
        proc = subprocess.run([*FAKE_AUTORESEARCH, "run", "--idea", "adaptive LR optimizer", "--pipeline",
                               "--proposals", "3", "--slots", "2", "--no-verify", "--isolation", "none",
                               "--device", "cpu", "--llm-base-url", server.base_url, "--runs-dir", str(runs)],
                              capture_output=True, text=True, env=env, timeout=300)
        return proc, server, env

    def outcome(run_dir: Path) -> list[tuple]:
        db = sqlite3.connect(run_dir / "ledger.sqlite")
        rows = db.execute("SELECT idx, state, decision, reason, seeds_json, change_hash FROM proposals "
                          "ORDER BY idx").fetchall()
        trials = db.execute("SELECT code_hash, seed FROM trials").fetchall()
        assert len(trials) == len(set(trials)), "a trial ran twice"
        return rows

    proc, server, _ = run(tmp_path / "reference", None)
    server.__exit__()
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    reference = outcome(next((tmp_path / "reference").iterdir()))
    assert [r[3] for r in reference] == ["accepted", "stale", "invalid_proposal"]

    proc, server, env = run(tmp_path / "killed", "submitted:2")
    try:
        assert proc.returncode == -signal.SIGKILL, proc.stdout[-3000:] + proc.stderr[-3000:]
        (run_dir,) = list((tmp_path / "killed").iterdir())
        db = sqlite3.connect(run_dir / "ledger.sqlite")
        states = db.execute("SELECT idx, state, raw FROM proposals ORDER BY idx").fetchall()
        assert [(i, s) for i, s, _ in states][:1] == [(1, "pending")] and states[1][:2] == (2, "pending")
        assert states[1][2] == MOMENTUM_REPLY  # stored before the kill
        assert server.chat_requests == 2
        db.close()
        env.pop("AUTORESEARCH_FAULT")
        resumed = subprocess.run([*FAKE_AUTORESEARCH, "resume", str(run_dir)], capture_output=True, text=True,
                                 env=env, timeout=300)
        assert resumed.returncode == 0, resumed.stdout[-3000:] + resumed.stderr[-3000:]
        assert server.chat_requests == 2 + 4  # proposal 3 only (NO_EDITS, repaired three times: parse_retries 3)
    finally:
        server.__exit__()
    assert outcome(run_dir) == reference
    db = sqlite3.connect(run_dir / "ledger.sqlite")
    assert [r[0] for r in db.execute("SELECT proposal_idx FROM llm_calls ORDER BY id")] == [1, 2, 3, 3, 3, 3]


def test_rebase_merges_what_only_one_side_touched_and_refuses_conflicts():
    from autoresearch.rebase import StaleProposal, rebase

    base = {"a.py": "x = 1\ny = 2\n\n\nz = 3\n", "b.py": "b = 1\n"}
    theirs = {**base, "a.py": "x = 1\ny = 2\n\n\nz = 30\n"}  # the incumbent moved: z
    # The draft changed another file, and another line of the same file: both kept.
    files, merged = rebase(base, {**base, "b.py": "b = 2\n"}, theirs)
    assert files == {**theirs, "b.py": "b = 2\n"} and merged == []
    files, merged = rebase(base, {**base, "a.py": "x = 10\ny = 2\n\n\nz = 3\n"}, theirs)
    assert files["a.py"] == "x = 10\ny = 2\n\n\nz = 30\n" and merged == ["a.py"]
    # The same change on both sides is no conflict; a new file is added.
    assert rebase(base, theirs, theirs)[0] == theirs
    assert rebase(base, {**base, "c.py": "c\n"}, theirs)[0] == {**theirs, "c.py": "c\n"}
    # Both changed z (a whole-file reply carrying the old file is the common case): stale, never merged blindly.
    with pytest.raises(StaleProposal, match="a.py conflicts with #7"):
        rebase(base, {**base, "a.py": "x = 1\ny = 2\n\n\nz = 4\n"}, theirs, moved_by="#7")


def test_one_trial_per_key_when_two_threads_ask_at_once(tmp_path, monkeypatch):
    """The judge and a speculative gate may want the incumbent's seeds at the same moment: the key
    is trained once, the second thread waits for it and reads the same row."""
    from autoresearch.config import RunConfig
    from autoresearch.engine import RunEngine
    from autoresearch.sandbox.executors import LocalExecutor

    started, release, seen = threading.Event(), threading.Event(), []
    fake = FakeExecutor()

    def trial_fn(req):
        seen.append(req.seeds)
        started.set()
        assert release.wait(20)
        return fake.run(req)

    monkeypatch.setenv("AUTORESEARCH_RUN_SECRET", SECRET)
    config = RunConfig(benchmark="digits-mlp", runs_dir=tmp_path, proposals=1, verify=False, slots=2,
                       isolation="none", device="cpu")
    engine = RunEngine.create(config, executor=LocalExecutor(2, trial_fn=trial_fn))
    _, files = engine.incumbent
    seeds = engine.gate_seeds[:2]
    results = {}
    first = threading.Thread(target=lambda: results.setdefault("a", engine.run_trials(files, seeds, role="incumbent")))
    first.start()
    assert started.wait(20)
    second = threading.Thread(target=lambda: results.setdefault("b", engine.run_trials(files, seeds, role="incumbent")))
    second.start()
    release.set()
    first.join(30)
    second.join(30)
    assert sorted(s for batch in seen for s in batch) == sorted(seeds)  # each seed trained once
    assert [t.test_metric for t in results["a"]] == [t.test_metric for t in results["b"]]
    assert all(t.cached for t in results["b"]) and len(engine.ledger.trials(engine.run_id)) == 2


def test_a_draft_whose_change_an_acceptance_already_made_is_stale_not_judged(tmp_path, monkeypatch):
    """#2 repeats #1's change, drafted before #1 was accepted: after the rebase nothing is left of it."""
    from autoresearch.agent.loop import LLMSession, run_agent

    engine = _agent_engine(tmp_path, monkeypatch, FakeExecutor().run, slots=1, pipeline=True, proposals=2)
    run_agent(engine, LLMSession(client=FakeLLM([MOMENTUM_REPLY, MOMENTUM_REPLY])))
    rows = engine.ledger.proposals(engine.run_id)
    assert [r["reason"] for r in rows] == ["accepted", "stale"]
    assert "already there" in rows[1]["detail"] and "#1" in rows[1]["detail"] and rows[1]["seeds_json"] is None
