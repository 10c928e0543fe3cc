"""Faults: kill -9 of a real run at several points, then `autoresearch resume`; a full disk and a
read-only runs folder; two runs at once in one runs folder.

AUTORESEARCH_FAULT=<point>[:n] makes the run SIGKILL itself the n-th time it reaches a point
(autoresearch.engine.fault): train (2 s into a sandboxed trial), score (trial scored, not yet in
the ledger), commit (git commit and ref written, ledger not told), report (report written,
proposal not marked finished). After resume, the run must hold the same finished proposals, trial
results and git refs as an uninterrupted run, with nothing duplicated.

What is checked here is the engine's bookkeeping, so the runs use canned trials (the same command
with tests/fake_executor.py, whose trials take AUTORESEARCH_FAKE_TRIAL_SECONDS); two tests kill and
starve runs whose trials train for real in the sandbox (a kill mid-training, a disk that fills).
"""

from __future__ import annotations

import json
import os
import signal
import sqlite3
import subprocess
import time
from pathlib import Path

import git
import pytest

from conftest import AUTORESEARCH, FAKE_AUTORESEARCH, copy_benchmark, proposal_line

# Each test starts and kills whole processes (a few seconds each, more on a busy machine).
pytestmark = pytest.mark.slow

# Three cheap proposals: two rejected at the gate's one look of 2 seeds (--seeds 2), one malformed
# (6 trials in all with the incumbent's 2 seeds).
TINY_LR = proposal_line("Tiny learning rate", [{"path": "optim.py", "search": "lr=0.01", "replace": "lr=1e-6"}])
TINIER_LR = proposal_line("Tinier learning rate", [{"path": "optim.py", "search": "lr=0.01", "replace": "lr=1e-7"}])
LINES = [TINY_LR, "{not json", TINIER_LR]


# One secret for every run here: the same seeds and predict set, so that an interrupted and
# resumed run can be compared trial by trial with an uninterrupted one.
SECRET = "5e" * 32


def _env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k != "AUTORESEARCH_FAULT"}
    env.update(COLUMNS="200", AUTORESEARCH_RUN_SECRET=SECRET, **extra)
    return env


def _cli(real: bool) -> list[str]:
    return [AUTORESEARCH] if real else FAKE_AUTORESEARCH


def _run_cmd(bench: Path, proposals: Path, runs: Path, real: bool = False) -> list[str]:
    return [*_cli(real), "run", "--benchmark", str(bench), "--proposals-file", str(proposals), "--seeds", "2",
            "--no-verify", "--runs-dir", str(runs)]


def _only_run(runs: Path) -> Path:
    found = [d for d in runs.iterdir() if (d / "ledger.sqlite").is_file()]
    assert len(found) == 1, found
    return found[0]


def snapshot(run_dir: Path) -> dict:
    """What a finished run holds, in a form two runs can be compared by."""
    conn = sqlite3.connect(f"file:{run_dir / 'ledger.sqlite'}?mode=ro", uri=True)
    conn.row_factory = sqlite3.Row
    assert conn.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
    props = [dict(r) for r in conn.execute("SELECT idx, title, state, decision, reason, commit_sha, report_path "
                                           "FROM proposals ORDER BY idx")]
    trials = [dict(r) for r in conn.execute("SELECT cache_key, role, seed, status, val_metric, test_metric "
                                            "FROM trials ORDER BY role, seed, cache_key")]
    keys = [t["cache_key"] for t in trials]
    assert len(keys) == len(set(keys)), "a trial was recorded twice"
    repo = git.Repo(run_dir / "repo")
    refs = {r.path: r.commit.hexsha for r in repo.refs if r.path.startswith("refs/proposals/")}
    baseline = repo.tags["baseline"].commit.hexsha
    for p in props:
        assert p["state"] == "finished", p
        assert refs[f"refs/proposals/{p['idx']:03d}"] == p["commit_sha"], p
        assert [c.hexsha for c in repo.commit(p["commit_sha"]).parents] == [baseline]
        assert (run_dir / p["report_path"]).is_file()
    reports = sorted(os.listdir(run_dir / "reports"))
    assert len(reports) == len(props), reports
    repo.git.fsck("--no-dangling")
    return {
        "proposals": [(p["idx"], p["title"], p["decision"], p["reason"]) for p in props],
        "refs": sorted(refs),
        "accepted_is_baseline": repo.commit("accepted").hexsha == baseline,
        "trials": [(t["role"], t["seed"], t["status"], t["val_metric"], t["test_metric"]) for t in trials],
    }


@pytest.fixture(scope="module")
def setup(tmp_path_factory) -> dict:
    root = tmp_path_factory.mktemp("faults")
    bench = copy_benchmark(root / "bench", train_seconds=20, predict_seconds=15, grace_seconds=15)
    proposals = root / "p.jsonl"
    proposals.write_text("\n".join(LINES) + "\n")
    return {"root": root, "bench": bench, "proposals": proposals}


def _reference(setup: dict, real: bool) -> dict:
    runs = setup["root"] / ("real-reference" if real else "reference")
    proc = subprocess.run(_run_cmd(setup["bench"], setup["proposals"], runs, real), capture_output=True, text=True,
                          env=_env(), timeout=900)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    snap = snapshot(_only_run(runs))
    assert [p[3] for p in snap["proposals"]] == ["not_better", "invalid_proposal", "not_better"]
    assert len(snap["trials"]) == 6
    return snap


@pytest.fixture(scope="module")
def reference(setup) -> dict:
    return _reference(setup, real=False)


@pytest.fixture(scope="module")
def real_reference(setup) -> dict:
    return _reference(setup, real=True)


def _resume(run_dir: Path, real: bool = False) -> subprocess.CompletedProcess:
    return subprocess.run([*_cli(real), "resume", str(run_dir)], capture_output=True, text=True, env=_env(),
                          timeout=900)


def _kill_then_resume(setup: dict, reference: dict, runs: Path, fault: str, real: bool) -> None:
    # Canned trials take 3 s here: the `train` fault's timer (2 s) fires while one is "training".
    proc = subprocess.run(_run_cmd(setup["bench"], setup["proposals"], runs, real), capture_output=True, text=True,
                          env=_env(AUTORESEARCH_FAULT=fault, AUTORESEARCH_FAKE_TRIAL_SECONDS="3"
                                   if fault.startswith("train") else "0"), timeout=900)
    assert proc.returncode == -signal.SIGKILL, (proc.returncode, proc.stdout[-2000:], proc.stderr[-2000:])
    run_dir = _only_run(runs)
    if fault in ("train:3", "report:3"):  # killed in proposal 3: the summary of 1 and 2 is kept
        assert "## Proposals" in (run_dir / "REPORT.md").read_text()
        rows = (run_dir / "results.tsv").read_text().splitlines()
        assert [r.split("\t")[0] for r in rows] == ["proposal", "1", "2"], rows
    resumed = _resume(run_dir, real)
    assert resumed.returncode == 0, resumed.stdout[-3000:] + resumed.stderr[-3000:]
    assert "Traceback" not in resumed.stderr
    assert snapshot(run_dir) == reference


@pytest.mark.parametrize("fault", ["train:3", "score:4", "commit:1", "report:3"])
def test_kill_at_a_point_then_resume(setup, reference, tmp_path, fault):
    _kill_then_resume(setup, reference, tmp_path / "runs", fault, real=False)


@pytest.mark.slow
def test_kill_while_the_sandbox_trains_then_resume(setup, real_reference, tmp_path):
    """kill -9 of a run 2 s into a real sandboxed trial: the resumed run equals an uninterrupted one."""
    _kill_then_resume(setup, real_reference, tmp_path / "runs", "train:3", real=True)


@pytest.mark.parametrize("fault", ["train:2:raise", "score:3:raise", "commit:1:raise", "report:3:raise"])
def test_an_exception_while_judging_one_proposal_ends_it_and_the_run_goes_on(setup, reference, tmp_path, fault):
    """Whatever breaks while trialling, scoring, recording or reporting one proposal ends that
    proposal as a crash with the cause; the others are decided as in an uninterrupted run, and a
    resume finds nothing left to do (it never meets the same failure again)."""
    runs = tmp_path / "runs"
    proc = subprocess.run(_run_cmd(setup["bench"], setup["proposals"], runs), capture_output=True, text=True,
                          env=_env(AUTORESEARCH_FAULT=fault), timeout=900)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert "Traceback" not in proc.stderr
    run_dir = _only_run(runs)
    conn = sqlite3.connect(f"file:{run_dir / 'ledger.sqlite'}?mode=ro", uri=True)
    rows = conn.execute("SELECT idx, state, decision, reason, detail FROM proposals ORDER BY idx").fetchall()
    status = conn.execute("SELECT status FROM runs").fetchone()[0]
    conn.close()
    assert status == "finished" and [r[1] for r in rows] == ["finished"] * 3
    crashed = [r for r in rows if r[3] == "crash"]
    assert len(crashed) == 1 and "injected fault at " + fault.split(":")[0] in crashed[0][4], rows
    others = [(r[0], r[3]) for r in rows if r[3] != "crash"]
    assert others == [(p[0], p[3]) for p in reference["proposals"] if p[0] != crashed[0][0]]
    assert (run_dir / "REPORT.md").is_file() and len(os.listdir(run_dir / "reports")) == 3
    resumed = _resume(run_dir)
    assert resumed.returncode == 0 and "Traceback" not in resumed.stderr, resumed.stderr[-3000:]


def _wait_for_first_trial(runs: Path, proc: subprocess.Popen, timeout: float = 600) -> None:
    """Until the running `autoresearch run` has one trial in its ledger (or it ends, or time runs out)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and proc.poll() is None:
        ledgers = list(runs.glob("*/ledger.sqlite")) if runs.is_dir() else []
        if ledgers:
            try:
                conn = sqlite3.connect(f"file:{ledgers[0]}?mode=ro", uri=True, timeout=5)
                try:
                    if conn.execute("SELECT COUNT(*) FROM trials").fetchone()[0] >= 1:
                        return
                finally:
                    conn.close()
            except sqlite3.Error:
                pass
        time.sleep(0.2)


def test_plain_timed_kill_then_resume(setup, reference, tmp_path):
    """SIGKILL from outside, once the first trial is in the ledger (a moment nobody chose)."""
    runs = tmp_path / "runs"
    proc = subprocess.Popen(_run_cmd(setup["bench"], setup["proposals"], runs), stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL, env=_env(AUTORESEARCH_FAKE_TRIAL_SECONDS="1"))
    try:
        _wait_for_first_trial(runs, proc)
        time.sleep(1.5)
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait()
    run_dir = _only_run(runs)
    resumed = _resume(run_dir)
    assert resumed.returncode == 0, resumed.stdout[-3000:] + resumed.stderr[-3000:]
    assert snapshot(run_dir) == reference


def test_resume_of_a_finished_run_repeats_nothing(setup, reference, tmp_path):
    runs = setup["root"] / "reference"
    run_dir = _only_run(runs)
    before = snapshot(run_dir)
    started = time.monotonic()
    resumed = _resume(run_dir)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert snapshot(run_dir) == before
    assert time.monotonic() - started < 120  # nothing retrained


# ------------------------------------------------------------------ storage faults


def _mount_tmpfs(path: Path, size: str, *options: str) -> bool:
    path.mkdir(parents=True, exist_ok=True)
    opts = ",".join((f"size={size}",) + options)
    return subprocess.run(["mount", "-t", "tmpfs", "-o", opts, "tmpfs", str(path)], capture_output=True).returncode == 0


def _umount(path: Path) -> None:
    subprocess.run(["umount", "-l", str(path)], capture_output=True)


@pytest.mark.slow
def test_full_disk_mid_run_is_a_storage_error_and_resumes(setup, real_reference, tmp_path):
    """The disk fills while real trials train: the sandbox's crash is not blamed on the candidate."""
    runs = tmp_path / "small"
    reference = real_reference
    if not _mount_tmpfs(runs, "96m"):
        pytest.skip("cannot mount a tmpfs here (needs root)")
    try:
        proc = subprocess.Popen(_run_cmd(setup["bench"], setup["proposals"], runs, real=True), stdout=subprocess.PIPE,
                                stderr=subprocess.PIPE, text=True, env=_env())
        filler = runs / "filler"
        _wait_for_first_trial(runs, proc)
        # Fill the disk to the last byte while the run goes on.
        with open(filler, "wb") as f:
            try:
                while True:
                    f.write(b"\0" * (1 << 20))
                    f.flush()
            except OSError:
                pass
        out, err = proc.communicate(timeout=600)
        assert proc.returncode == 4, (proc.returncode, out[-2000:], err[-3000:])
        assert "Traceback" not in err, err[-3000:]
        assert "storage" in err.lower() or "no space" in err.lower() or "disk" in err.lower(), err[-2000:]
        run_dir = _only_run(runs)
        filler.unlink()
        conn = sqlite3.connect(f"file:{run_dir / 'ledger.sqlite'}?mode=ro", uri=True)
        assert conn.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
        assert conn.execute("SELECT COUNT(*) FROM trials WHERE status != 'ok'").fetchone()[0] == 0
        conn.close()
        resumed = _resume(run_dir, real=True)
        assert resumed.returncode == 0, resumed.stdout[-3000:] + resumed.stderr[-3000:]
        assert snapshot(run_dir) == reference
    finally:
        _umount(runs)


def test_disk_full_from_the_start(setup, tmp_path):
    runs = tmp_path / "tiny"
    if not _mount_tmpfs(runs, "64k"):
        pytest.skip("cannot mount a tmpfs here (needs root)")
    try:
        proc = subprocess.run(_run_cmd(setup["bench"], setup["proposals"], runs), capture_output=True, text=True,
                              env=_env(), timeout=300)
        assert proc.returncode == 4, (proc.returncode, proc.stdout[-2000:], proc.stderr[-3000:])
        assert "Traceback" not in proc.stderr, proc.stderr[-3000:]
    finally:
        _umount(runs)


def test_read_only_runs_dir(setup, tmp_path):
    runs = tmp_path / "ro"
    if not _mount_tmpfs(runs, "1m", "ro"):
        pytest.skip("cannot mount a tmpfs here (needs root)")
    try:
        proc = subprocess.run(_run_cmd(setup["bench"], setup["proposals"], runs), capture_output=True, text=True,
                              env=_env(), timeout=300)
        assert proc.returncode == 4, (proc.returncode, proc.stdout[-2000:], proc.stderr[-3000:])
        assert "Traceback" not in proc.stderr and "writable" in proc.stderr, proc.stderr[-3000:]
    finally:
        _umount(runs)


def test_resume_on_a_read_only_run_is_a_clear_error(setup, reference, tmp_path):
    src = _only_run(setup["root"] / "reference")
    ro = tmp_path / "ro-run"
    ro.mkdir()
    if subprocess.run(["mount", "--bind", "-o", "ro", str(src), str(ro)], capture_output=True).returncode != 0:
        pytest.skip("cannot bind-mount here (needs root)")
    try:
        subprocess.run(["mount", "-o", "remount,bind,ro", str(ro)], capture_output=True)
        proc = _resume(ro)
        assert proc.returncode == 4, (proc.returncode, proc.stdout[-2000:], proc.stderr[-3000:])
        assert "Traceback" not in proc.stderr, proc.stderr[-3000:]
    finally:
        _umount(ro)
    assert snapshot(src) == reference


def test_two_runs_at_once_do_not_interfere(setup, reference, tmp_path):
    runs = tmp_path / "shared"
    procs = [subprocess.Popen(_run_cmd(setup["bench"], setup["proposals"], runs), stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE, text=True, env=_env()) for _ in range(2)]
    outs = [p.communicate(timeout=900) for p in procs]
    for p, (out, err) in zip(procs, outs):
        assert p.returncode == 0, out[-2000:] + err[-3000:]
    dirs = sorted(d for d in runs.iterdir() if (d / "ledger.sqlite").is_file())
    assert len(dirs) == 2
    for d in dirs:
        assert snapshot(d) == reference
        shown = subprocess.run([*FAKE_AUTORESEARCH, "show", str(d), "--json"], capture_output=True, text=True)
        assert json.loads(shown.stdout)["run_id"] == d.name
