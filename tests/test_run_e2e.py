"""End to end through the CLI: a proposals file with a real improvement, a cosmetic change, and
each failure mode; then show --json, the reports, the git records and replay --verify.

The module's run uses canned trials (tests/fake_executor.py: the same command, the engine, gate,
ledger, git records and reports as they are, no sandboxed training); the last test runs the
failure modes with real sandboxed trials (slow)."""

import json
import re
import subprocess
import time
from pathlib import Path

import git
import pytest

from autoresearch.sandbox.trial import CHILD_GRACE_SECONDS
from conftest import ADAM, AUTORESEARCH, COMMENT_ONLY, FAKE_AUTORESEARCH, FAST_BUDGET, proposal_line

CASES = [
    ("Adam optimizer", ADAM, "accepted"),
    ("Add a comment", COMMENT_ONLY, "not_better"),
    ("not json", "{this is not json", "invalid_proposal"),
    ("Edit the harness", proposal_line("Edit the harness", [{"path": "../harness/run_train.py", "search": "",
                                                              "replace": "print('owned')"}]), "not_editable"),
    ("Edit the spec", proposal_line("Edit the spec", [{"path": "spec.toml", "search": "", "replace": "x=1"}]),
     "not_editable"),
    ("Missing search", proposal_line("Missing search", [{"path": "optim.py", "search": "lr=0.5",
                                                         "replace": "lr=0.1"}]), "apply_failed"),
    ("Crash", proposal_line("Crash", [{"path": "train.py", "search": "    loss_fn = nn.CrossEntropyLoss()",
                                       "replace": "    raise RuntimeError('boom')"}]), "crash"),
    ("Loop forever", proposal_line("Loop forever", [{"path": "train.py", "search": "    loss_fn = nn.CrossEntropyLoss()",
                                                     "replace": "    while True:\n        pass"}]), "timeout"),
    ("NaN loss", proposal_line("NaN loss", [{"path": "train.py", "search": "loss = loss_fn(model(x[idx]), y[idx])",
                                             "replace": "loss = loss_fn(model(x[idx]), y[idx]) * float('nan')"}]),
     "nonfinite"),
]


def cli(*args, timeout=900, check=True, real=False):
    proc = subprocess.run([*([AUTORESEARCH] if real else FAKE_AUTORESEARCH), *args], capture_output=True, text=True,
                          timeout=timeout)
    if check and proc.returncode != 0:
        raise AssertionError(f"autoresearch {' '.join(args)} failed ({proc.returncode}):\n{proc.stdout}\n{proc.stderr}")
    return proc


@pytest.fixture(scope="module")
def finished_run(tmp_path_factory, fast_bench):
    root = tmp_path_factory.mktemp("e2e")
    pfile = root / "proposals.jsonl"
    pfile.write_text("\n".join(line for _, line, _ in CASES) + "\n")
    runs = root / "runs"
    started = time.monotonic()
    cli("run", "--benchmark", str(fast_bench), "--proposals-file", str(pfile), "--runs-dir", str(runs), "--slots", "2")
    elapsed = time.monotonic() - started
    run_dir = next(runs.iterdir())
    summary = json.loads(cli("show", str(run_dir), "--json").stdout)
    return run_dir, summary, elapsed


def test_each_proposal_gets_the_right_decision(finished_run):
    _, summary, _ = finished_run
    got = [(p["title"], p["reason"]) for p in summary["proposals"]]
    assert [r for _, r in got] == [reason for _, _, reason in CASES], got
    assert [p["decision"] for p in summary["proposals"]] == ["accepted"] + ["rejected"] * (len(CASES) - 1)
    assert summary["benchmark"] == "digits-mlp"  # the copy's spec keeps the benchmark's name
    assert summary["run_id"] == finished_run[0].name


def test_headline_is_reverified_on_fresh_seeds(finished_run):
    _, summary, _ = finished_run
    h = summary["headline"]
    assert h["verified"] and h["holds"] and len(h["seeds"]) == 5
    gate_seeds = {t["seed"] for p in summary["proposals"] for t in p["per_seed"]}
    assert not gate_seeds & set(h["seeds"])  # fresh: none of the gate's seeds
    assert h["final_mean"] > h["baseline_mean"] + 0.1


def test_reports_are_self_contained(finished_run):
    run_dir, summary, _ = finished_run
    reports = sorted((run_dir / "reports").glob("*.md"))
    assert len(reports) == len(CASES)
    adam = (run_dir / "reports" / "001-adam-optimizer.md").read_text()
    for needle in ["```diff", "-    optimizer = torch.optim.SGD(params, lr=0.01)", "+    optimizer = torch.optim.Adam",
                   "| seed |", "95% interval", "one-sided p =", "alpha/m", "seeds won: 100%", "Decision: ACCEPTED", "fingerprints",
                   "isolation: **", "versions:", "torch", "autoresearch replay"]:
        assert needle in adam, needle
    crash = next(r for r in reports if "crash" in r.name).read_text()
    assert "RuntimeError: boom" in crash and "reason: `crash`" in crash
    summary_md = (run_dir / "REPORT.md").read_text()
    assert "Headline (re-verified on fresh seeds)" in summary_md and (run_dir / "summary.png").stat().st_size > 1000


def test_results_tsv_has_one_row_per_proposal(finished_run):
    run_dir, summary, _ = finished_run
    header, *rows = [line.split("\t") for line in (run_dir / "results.tsv").read_text().splitlines()]
    assert header[:4] == ["proposal", "commit", "decision", "reason"]
    assert [(int(r[0]), r[2], r[3]) for r in rows] == [(p["index"], p["decision"], p["reason"])
                                                       for p in summary["proposals"]]
    assert all(len(r) == len(header) for r in rows)


def test_git_records(finished_run):
    run_dir, summary, _ = finished_run
    repo = git.Repo(run_dir / "repo")
    refs = sorted(r.path for r in repo.refs if r.path.startswith("refs/proposals/"))
    assert refs == [f"refs/proposals/{i:03d}" for i in range(1, len(CASES) + 1)]
    chain = list(repo.iter_commits("baseline..accepted"))
    assert [c.summary for c in chain] == ["Adam optimizer"]
    assert "Autoresearch-Decision: accepted" in chain[0].message
    # Rejected proposals hang off the incumbent of their time, never on the accepted branch.
    rejected = repo.commit("refs/proposals/002")
    assert rejected.parents[0].hexsha == chain[0].hexsha and "Autoresearch-Reason: not_better" in rejected.message
    assert repo.commit("refs/proposals/001").parents[0].hexsha == repo.tags["baseline"].commit.hexsha


def test_ledger_holds_matched_trials(finished_run):
    import sqlite3

    run_dir, _, _ = finished_run
    db = sqlite3.connect(run_dir / "ledger.sqlite")
    rows = db.execute("SELECT role, seed, summary_json FROM trials WHERE status = 'ok'").fetchall()
    fps = {json.dumps(json.loads(s)["fingerprints"], sort_keys=True) for _, _, s in rows}
    assert len(fps) == 1
    inc = sorted(seed for role, seed, _ in rows if role == "incumbent")
    # Incumbent runs are cached by seed: the baseline's 5 and the accepted Adam's 5 (as incumbent), no more.
    assert inc.count(1) <= 2 and len(inc) <= 10
    migrations = [r[0] for r in db.execute("SELECT name FROM _migrations")]
    assert migrations[0] == "001_initial"


def test_replay_verify_reproduces_the_gain(finished_run, tmp_path):
    run_dir, _, _ = finished_run
    onto = tmp_path / "replayed"
    proc = cli("replay", str(run_dir), "--onto", str(onto), "--verify")
    assert "replayed 1 accepted commit(s)" in proc.stdout
    assert "matches the run's accepted tip" in proc.stdout
    flat = " ".join(proc.stdout.split())
    assert "verification: accepted at stage 1/1" in flat and "lower bound" in flat, flat
    replayed = git.Repo(onto)
    assert [c.summary for c in replayed.iter_commits("HEAD~1..HEAD")] == ["Adam optimizer"]
    assert "torch.optim.Adam" in (onto / "optim.py").read_text()


def test_list_and_benchmarks(finished_run):
    run_dir, _, _ = finished_run
    out = cli("list", "--runs-dir", str(run_dir.parent)).stdout
    assert run_dir.name[:15] in out
    items = json.loads(cli("benchmarks", "--json").stdout)
    digits = next(i for i in items if i["name"] == "digits-mlp")
    assert all(Path(p).is_absolute() and Path(p).is_file() for p in digits["editable"])


def test_the_sequential_gate_stops_as_soon_as_the_evidence_allows(finished_run):
    """A no-effect change ends at the first look (2 seeds); a clear winner is accepted at one of the
    looks, never with more seeds than the look it stopped at; reports give both noise components."""
    run_dir, summary, _ = finished_run
    by_title = {p["title"]: p for p in summary["proposals"]}

    def candidate_seeds(title):
        return sorted(s["seed"] for s in by_title[title]["per_seed"] if s["role"] == "candidate")

    assert len(candidate_seeds("Add a comment")) == 2
    adam = candidate_seeds("Adam optimizer")
    assert len(adam) in (2, 4, 6, 10, 16)
    report = (run_dir / by_title["Adam optimizer"]["report"]).read_text()
    assert f"this look used {len(adam)} seeds x 500 test examples" in report
    assert "two sources of noise: seeds" in report and "test examples" in report


@pytest.mark.slow
def test_failure_modes_with_real_trials(tmp_path, fast_bench):
    """The failure modes as the sandbox meets them: a raise is a crash whose report shows the
    traceback, an endless loop is killed within its budget plus grace, a NaN loss is nonfinite;
    a cosmetic change trained for real is no better than the incumbent."""
    names = ["Add a comment", "Crash", "Loop forever", "NaN loss"]
    cases = [c for c in CASES if c[0] in names]
    pfile = tmp_path / "proposals.jsonl"
    pfile.write_text("\n".join(line for _, line, _ in cases) + "\n")
    runs = tmp_path / "runs"
    # One look of 2 seeds: each case ends at its first look (the comment is identical code, p = 1).
    cli("run", "--benchmark", str(fast_bench), "--proposals-file", str(pfile), "--runs-dir", str(runs), "--slots", "2",
        "--seeds", "2", "--no-verify", real=True)
    run_dir = next(runs.iterdir())
    summary = json.loads(cli("show", str(run_dir), "--json", real=True).stdout)
    assert [p["reason"] for p in summary["proposals"]] == [reason for _, _, reason in cases]
    loop = next(p for p in summary["proposals"] if p["title"] == "Loop forever")
    seconds = float(re.search(r"killed after ([0-9.]+)s", loop["detail"]).group(1))
    limit = FAST_BUDGET["train_seconds"] + CHILD_GRACE_SECONDS + 3  # its budget, the per-seed grace, slack
    assert seconds <= limit, loop["detail"]
    crash = next(r for r in (run_dir / "reports").glob("*.md") if "crash" in r.name).read_text()
    assert "RuntimeError: boom" in crash and "reason: `crash`" in crash


def test_show_reads_the_records_alone(finished_run, tmp_path):
    """`show` needs neither the benchmark nor the engine: a run whose benchmark version this machine
    lacks, stored by an older schema (migrated when opened), shows as it did."""
    import shutil
    import sqlite3

    run_dir, summary, _ = finished_run
    old = tmp_path / run_dir.name
    shutil.copytree(run_dir, old, ignore=shutil.ignore_patterns("data", "work"))
    db = sqlite3.connect(old / "ledger.sqlite")
    with db:
        db.execute("ALTER TABLE proposals ADD COLUMN screen_json TEXT")  # as before migration 004
        db.execute("DELETE FROM _migrations WHERE name = '004_drop_screen_json'")
        db.execute("UPDATE runs SET benchmark_version = 'from-another-machine'")
    db.close()
    shown = json.loads(cli("show", str(old), "--json").stdout)
    assert shown["proposals"] == summary["proposals"] and shown["benchmark_version"] == "from-another-machine"
    db = sqlite3.connect(old / "ledger.sqlite")
    assert "004_drop_screen_json" in [r[0] for r in db.execute("SELECT name FROM _migrations")]
