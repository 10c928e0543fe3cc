"""Hostile proposals against digits-mlp: each must end rejected with the right reason, and none
may change the run, the ledger, the incumbent, the labels or anything outside the scratch area.

All cases ran in one run (see conftest.py); these tests only read its results.
"""

from __future__ import annotations

import json
import os
import sqlite3
import subprocess
from pathlib import Path

import git
import pytest

from adversarial.cases import CASES
from autoresearch.benchmark import load_benchmark, prepare_data
from conftest import REPO_ROOT

pytestmark = pytest.mark.slow

CANARY = "PW" + "NED"  # never written literally anywhere in the suite's inputs
RUN_DIR_ENTRIES = {"config.json", "ledger.sqlite", "ledger.sqlite-wal", "ledger.sqlite-shm", "repo", "reports", "data",
                   "work", "trials", "REPORT.md", "results.tsv", "proposals.jsonl"}
SCRATCH = {"work", "trials"}


def test_the_runs_themselves_finished(suite):
    assert suite.returncodes == [0] * len(suite.parts), suite.output
    for summary, part in zip(suite.summaries, suite.parts):
        assert summary["status"] == "finished"
        assert summary["isolation"] == "bubblewrap"
        assert len(summary["proposals"]) == len(part)
    assert sum(len(p) for p in suite.parts) == len(CASES)


@pytest.mark.parametrize("case", CASES, ids=[c.name for c in CASES])
def test_case_rejected_for_the_right_reason(suite, case):
    result = suite.by_name[case.name]
    assert result is not None, f"{case.name} has no decision"
    detail = result["detail"] or ""
    assert result["decision"] == "rejected", detail
    assert result["reason"] in case.reasons, f"{case.name}: {result['reason']}: {detail}"
    assert "ESCAPED" not in detail, detail
    if case.marker:
        assert case.marker in detail, f"{case.name}: {result['reason']}: {detail}"


def test_case_names_are_unique():
    assert len({c.name for c in CASES}) == len(CASES)


def test_nothing_reached_the_host_listeners(suite):
    assert suite.listeners.received == []


def test_no_process_outlives_its_trial(suite):
    out = subprocess.run(["ps", "-eo", "pid,args"], capture_output=True, text=True).stdout
    assert "987654" not in out  # setsid-detach's sleeper (its message says it was running)


def _canary_files(root: Path, max_depth: int = 12) -> list[str]:
    found = []
    root_depth = str(root).count(os.sep)
    for dirpath, dirnames, filenames in os.walk(root):
        if dirpath.count(os.sep) - root_depth >= max_depth:
            dirnames[:] = []
        dirnames[:] = [d for d in dirnames if d not in (".venv", ".git", "node_modules")]
        found += [os.path.join(dirpath, n) for n in filenames + dirnames if CANARY in n]
    return found


def test_no_canary_file_anywhere(suite):
    found = _canary_files(suite.runs_dir.parent)
    for top in ("/tmp", "/var/tmp", "/dev/shm", str(Path.home())):
        if os.path.isdir(top):
            found += [os.path.join(top, n) for n in os.listdir(top) if CANARY in n]
    for sub in ("autoresearch", "agent", "sandbox", "baselines"):
        found += _canary_files(REPO_ROOT / sub)
    assert found == []


def test_no_canary_content_in_the_run_records(suite):
    for run_dir in suite.run_dirs:
        for path in (run_dir / "ledger.sqlite", run_dir / "REPORT.md", *(run_dir / "reports").iterdir()):
            assert CANARY.encode() not in path.read_bytes(), path


def test_benchmark_untouched(suite):
    assert suite.bench_hash_after == suite.bench_hash_before


@pytest.mark.parametrize("part", [0, 1])
def test_incumbent_untouched(suite, part):
    repo = git.Repo(suite.run_dirs[part] / "repo")
    assert repo.commit("accepted").hexsha == repo.tags["baseline"].commit.hexsha
    files = {b.path: b.data_stream.read() for b in repo.commit("accepted").tree.traverse() if b.type == "blob"}
    assert files == load_benchmark(suite.bench).template_files()
    assert not repo.is_dirty(untracked_files=True)


@pytest.mark.parametrize("part", [0, 1])
def test_labels_untouched(suite, tmp_path, part):
    fresh = prepare_data(load_benchmark(suite.bench), tmp_path / "data", "ab" * 32)
    run_labels = suite.run_dirs[part] / "data" / "labels"
    assert sorted(os.listdir(run_labels)) == sorted(os.listdir(fresh.labels_dir))
    for name in os.listdir(fresh.labels_dir):
        if name.endswith("_y.npy"):  # the labels; *_rows.npy (the predict set's layout) depend on the run's secret
            assert (run_labels / name).read_bytes() == (fresh.labels_dir / name).read_bytes(), name
    assert suite.summaries[part]["fingerprints"] == fresh.fingerprints


@pytest.mark.parametrize("part", [0, 1])
def test_ledger_and_git_agree(suite, part):
    run_dir, cases = suite.run_dirs[part], suite.parts[part]
    conn = sqlite3.connect(f"file:{run_dir / 'ledger.sqlite'}?mode=ro", uri=True)
    assert conn.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
    rows = conn.execute("SELECT idx, state, commit_sha FROM proposals ORDER BY idx").fetchall()
    assert [r[0] for r in rows] == list(range(1, len(cases) + 1))
    assert all(r[1] == "finished" for r in rows)
    repo = git.Repo(run_dir / "repo")
    refs = {r.path: r.commit.hexsha for r in repo.refs if r.path.startswith("refs/proposals/")}
    assert refs == {f"refs/proposals/{idx:03d}": sha for idx, _, sha in rows}
    tables = {r[0] for r in conn.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}
    assert tables <= {"_migrations", "runs", "proposals", "trials", "llm_calls", "sqlite_sequence"}, tables
    assert conn.execute("SELECT COUNT(*) FROM runs").fetchone()[0] == 1


@pytest.mark.parametrize("part", [0, 1])
def test_run_dir_holds_only_its_own_files(suite, part):
    run_dir = suite.run_dirs[part]
    entries = set(os.listdir(run_dir))
    extra = {e for e in entries - RUN_DIR_ENTRIES if not e.endswith(".png")}
    assert extra == set()
    reports = sorted(os.listdir(run_dir / "reports"))
    assert len(reports) == len(suite.parts[part]) and all(r[:3].isdigit() and r.endswith(".md") for r in reports)
    assert not any((run_dir / "trials").iterdir()) if (run_dir / "trials").is_dir() else True


def test_log_flood_is_capped_in_the_records(suite):
    for run_dir in suite.run_dirs:
        assert (run_dir / "ledger.sqlite").stat().st_size < 30 * 1024**2
        for report in (run_dir / "reports").iterdir():
            assert report.stat().st_size < 1024**2, report


def _case_trials(suite, name: str) -> tuple[list[dict], dict]:
    """The candidate trials of one case (ledger rows, summary parsed) and its run's config."""
    for part, run_dir in zip(suite.parts, suite.run_dirs):
        names = [c.name for c in part]
        if name in names:
            idx = names.index(name) + 1
            conn = sqlite3.connect(f"file:{run_dir / 'ledger.sqlite'}?mode=ro", uri=True)
            conn.row_factory = sqlite3.Row
            rows = [dict(r) for r in conn.execute("SELECT * FROM trials WHERE proposal_idx = ?", (idx,))]
            for r in rows:
                r["summary"] = json.loads(r["summary_json"])
            return rows, json.loads((run_dir / "config.json").read_text())
    raise AssertionError(f"no case {name}")


def test_a_constant_private_seed_still_varies_per_trial(suite):
    """torch.Generator().manual_seed(1234) in candidate code: the harness mixes the trial's key in,
    so the two gate seeds trained different models (not one lucky draw repeated)."""
    rows, _ = _case_trials(suite, "mixed-constant-seed")
    digests = {r["summary"]["train_report"]["checkpoint_sha256"] for r in rows if r["status"] == "ok"}
    assert len(rows) >= 2 and len(digests) == len(rows)


def test_candidate_code_never_sees_its_seed(suite):
    """Not in argv, not in the environment, not from the generator handed to fit or torch's global
    one: the seeds of the run appear nowhere in what the snooping candidate printed."""
    rows, config = _case_trials(suite, "seed-snoop")
    logs = "\n".join(r["summary"]["log_tail"] for r in rows)
    assert "SNOOP argv" in logs and "SNOOP generator" in logs
    for seed in config["seeds"]["gate"] + config["seeds"]["verify"]:
        assert str(seed) not in logs


def test_gate_seeds_are_drawn_per_run(suite):
    seeds = [json.loads((d / "config.json").read_text())["seeds"] for d in suite.run_dirs]
    assert seeds[0]["gate"] != seeds[1]["gate"]
    assert not set(seeds[0]["gate"]) & set(seeds[0]["verify"])
