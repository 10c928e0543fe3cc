"""Training ahead (TrialCache.ahead_pays): a look that has to start a sandbox also trains the seeds
of later looks when they cost little beside that start. It changes which trials exist early and
how many sandboxes start, never a decision: every look decides on its own seeds only.

Canned trials (tests/fake_executor.py) report the timings the rule reads; nothing sleeps.
"""

from __future__ import annotations

import json
import sqlite3
from pathlib import Path

from click.testing import CliRunner

from conftest import COMMENT_ONLY, proposal_line

SECRET = "5e" * 32
MOMENTUM = proposal_line("Momentum", [{"path": "optim.py", "search": "lr=0.01)", "replace": "lr=0.01, momentum=0.9)"}])
ADAM_ON_MOMENTUM = proposal_line("Adam after momentum", [{"path": "optim.py",
                                                          "search": "torch.optim.SGD(params, lr=0.01, momentum=0.9)",
                                                          "replace": "torch.optim.Adam(params, lr=1e-3)"}])
LINES = [MOMENTUM, COMMENT_ONLY, ADAM_ON_MOMENTUM]


def _run(tmp: Path, name: str) -> Path:
    from autoresearch.cli import main

    proposals = tmp / "p.jsonl"
    proposals.write_text("\n".join(LINES) + "\n")
    runs = tmp / name
    result = CliRunner().invoke(main, ["run", "--proposals-file", str(proposals), "--runs-dir", str(runs),
                                       "--no-verify", "--isolation", "none", "--device", "cpu", "--no-pipeline"],
                                env={"AUTORESEARCH_RUN_SECRET": SECRET, "COLUMNS": "200"}, catch_exceptions=False)
    assert result.exit_code == 0, result.output
    (run_dir,) = list(runs.iterdir())
    return run_dir


def _decisions(run_dir: Path) -> list[tuple]:
    db = sqlite3.connect(run_dir / "ledger.sqlite")
    rows = db.execute("SELECT idx, decision, reason, detail, seeds_json, gate_json FROM proposals ORDER BY idx")
    return [(i, d, r, detail, seeds, json.loads(gate)["p_value"] if gate else None)
            for i, d, r, detail, seeds, gate in rows]


def _counting(monkeypatch, fake) -> list:
    """The requests (one per sandbox pair started) the local executor hands the canned trials."""
    started = []

    def run(req):
        started.append(req)
        return fake.run(req)

    monkeypatch.setattr("autoresearch.sandbox.executors.run_trials", run)
    return started


def _trained(run_dir: Path) -> int:
    return sqlite3.connect(run_dir / "ledger.sqlite").execute("SELECT count(*) FROM trials").fetchone()[0]


def test_cheap_seeds_are_trained_ahead_and_decide_nothing(tmp_path, fake_trials, monkeypatch):
    started = _counting(monkeypatch, fake_trials)
    plain = _run(tmp_path, "plain")  # the fake reports no sandbox start: nothing to save
    plain_requests = len(started)
    started.clear()
    fake_trials.sandbox_seconds, fake_trials.seed_seconds = 3.0, 0.2  # digits-mlp's figures, about
    ahead = _run(tmp_path, "ahead")
    assert _decisions(ahead) == _decisions(plain)
    assert [d[1] for d in _decisions(plain)] == ["accepted", "rejected", "accepted"]
    assert any(len(json.loads(d[4])) > 2 for d in _decisions(plain)), "no proposal went past the first look"
    # Fewer sandboxes started, and seeds no look used were trained in them.
    assert len(started) < plain_requests
    assert _trained(ahead) > _trained(plain)


def test_seeds_that_cost_more_than_a_start_are_not_trained_ahead(tmp_path, fake_trials, monkeypatch):
    started = _counting(monkeypatch, fake_trials)
    plain = _run(tmp_path, "plain")
    plain_requests = len(started)
    started.clear()
    fake_trials.sandbox_seconds, fake_trials.seed_seconds = 12.0, 5.0  # a GPU seed that trains for seconds
    costly = _run(tmp_path, "costly")
    assert _decisions(costly) == _decisions(plain)
    assert len(started) == plain_requests and _trained(costly) == _trained(plain)
