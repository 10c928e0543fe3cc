"""Warm trials (protocol 2): one sandbox per phase runs every seed of a code version, each seed in a
child forked before candidate code loads. Results must not depend on how seeds are batched, and
nothing of one seed may reach the next: files, processes, descriptors, the runner's memory."""

from __future__ import annotations

import ast
import dataclasses
import hashlib
import io
import textwrap
import time
from pathlib import Path

import numpy as np
import pytest

from autoresearch.benchmark import load_benchmark, prepare_data
from autoresearch.sandbox.executors import LocalExecutor
from autoresearch.sandbox.isolation import bubblewrap_works
from autoresearch.sandbox.phase_sandbox import SPARE_CAPACITY, TrialSandboxes
from autoresearch.sandbox.trial import TrialStatus, run_trials
from autoresearch.seeding import trial_key
from trial_fakes import make_request

pytestmark = [pytest.mark.slow,
              pytest.mark.skipif(not bubblewrap_works(), reason="needs bubblewrap (apt-get install bubblewrap)")]

SECRET = "cd" * 32


@pytest.fixture(scope="module")
def digits(tmp_path_factory):
    root = tmp_path_factory.mktemp("warm")
    bench = load_benchmark("digits-mlp")
    return bench, prepare_data(bench, root / "data", SECRET)


def _workspace(bench, root: Path, prefix: str = "") -> Path:
    ws = root / "ws"
    ws.mkdir()
    for rel, content in bench.template_files().items():
        (ws / rel).write_bytes(content)
    if prefix:
        (ws / "train.py").write_text(textwrap.dedent(prefix) + (ws / "train.py").read_text())
    return ws


def _request(bench, data, ws: Path, work: Path, seeds, **overrides):
    layout = data.layout()
    base = make_request(seeds=seeds)
    fields = dict(workspace=str(ws), harness=str(bench.harness_dir), train_data=str(data.train_dir),
                  predict_data=str(data.predict_dir), work_dir=str(work), keys=tuple(trial_key(SECRET, s) for s in seeds),
                  config=base.config | {"epochs": 2, "batch_size": 32},
                  predict={"batch": 500, "check_rows": layout.check_rows.tolist(), "check_batch": 37},
                  train_seconds=30, predict_seconds=30, grace_seconds=20, memory_bytes=3 * 2**30, max_processes=64)
    fields.update(overrides)
    return make_request(seeds=seeds, **fields)


def test_results_do_not_depend_on_how_seeds_are_batched(digits, tmp_path):
    bench, data = digits
    ws = _workspace(bench, tmp_path)
    together = run_trials(_request(bench, data, ws, tmp_path / "a", (11, 12, 13)))
    alone = [run_trials(_request(bench, data, ws, tmp_path / f"b{s}", (s,)))[0] for s in (13, 11)]
    by_seed = {o.seed: o for o in together}
    for out in alone:
        twin = by_seed[out.seed]
        assert out.status == twin.status == TrialStatus.OK, out.detail + twin.detail
        assert out.train_report["checkpoint_sha256"] == twin.train_report["checkpoint_sha256"]
        assert out.logits == twin.logits
    digests = {o.train_report["checkpoint_sha256"] for o in together}
    assert len(digests) == 3  # and the seeds did train different models


LEAK_PROBE = '''
import glob as _glob, os as _os, subprocess as _sp
def _probe():
    scratch = _os.path.dirname(_os.environ["TMPDIR"])
    seen = sorted(p for p in _glob.glob("/tmp/**", recursive=True) + _glob.glob("/dev/shm/*")
                  if "LEFTOVER" in p)
    family = {_os.getpid()}
    pid = _os.getpid()
    while pid > 1:  # this child and its ancestors (the runner, bubblewrap's init)
        pid = int(open("/proc/%d/stat" % pid).read().rsplit(")", 1)[1].split()[1])
        family.add(pid)
    sleepers = [int(p) for p in _os.listdir("/proc") if p.isdigit() and int(p) not in family]
    fds = {}
    for fd in _os.listdir("/proc/self/fd"):
        try:
            fds[int(fd)] = _os.readlink("/proc/self/fd/" + fd)
        except OSError:
            pass
    fds = sorted((fd, target) for fd, target in fds.items() if not target.startswith("/proc/"))  # listdir's own
    parent = []
    for what in ("fd/3", "fd/4", "mem", "environ"):
        try:
            p = "/proc/%d/%s" % (_os.getppid(), what)
            (_os.readlink(p) if what.startswith("fd/") else open(p, "rb").read(1))
            parent.append(what)
        except OSError:
            pass
    print("PROBE leftovers", seen, "sleepers", sleepers, "fds", fds, "parent", parent, flush=True)
    for place in ("/tmp/LEFTOVER", "/dev/shm/LEFTOVER", _os.path.join(scratch, "LEFTOVER"),
                  _os.path.join(scratch, "out", "LEFTOVER")):
        try:
            open(place, "w").write("x")
        except OSError:
            pass
    try:  # a daemon, detached from the child's session (the one-process rule refuses it first)
        if _os.fork() == 0:
            _os.setsid()
            if _os.fork() == 0:
                import time as _time
                _time.sleep(424242)
            _os._exit(0)
    except OSError:
        pass
_probe()
'''


def test_nothing_of_one_seed_reaches_the_next(digits, tmp_path):
    bench, data = digits
    ws = _workspace(bench, tmp_path, LEAK_PROBE)
    outs = run_trials(_request(bench, data, ws, tmp_path / "w", (1, 2, 3)))
    for out in outs:
        assert out.status == TrialStatus.OK, out.detail + out.log_tail
        line = next(x for x in out.log_tail.splitlines() if x.startswith("PROBE"))
        # No file, process or descriptor of an earlier seed; the runner's descriptors, memory and
        # environment are out of reach (it is not dumpable).
        assert "leftovers [] sleepers [] fds [(0, '/dev/null'), (1, " in line and "parent []" in line, line
        assert [fd for fd, _ in ast.literal_eval(line.split(" fds ")[1].split(" parent")[0])] == [0, 1, 2], line


def _fit_seed(seed: int) -> int:
    """The seed of the generator the harness hands to fit for this trial (runtime.derive)."""
    key = trial_key(SECRET, seed)
    return int.from_bytes(hashlib.sha256(f"{key}|fit".encode()).digest()[:8], "little") & (2**63 - 1)


def test_one_seed_running_past_its_budget_does_not_take_the_others(digits, tmp_path):
    bench, data = digits
    ws = _workspace(bench, tmp_path)
    (ws / "train.py").write_text((ws / "train.py").read_text().replace(
        "def fit(model, x, y, *, epochs, batch_size, generator, device):\n",
        "def fit(model, x, y, *, epochs, batch_size, generator, device):\n"
        "    if generator.initial_seed() % 2 == 0:\n        while True:\n            pass\n"))
    even = next(s for s in range(100) if _fit_seed(s) % 2 == 0)
    odd = next(s for s in range(100) if _fit_seed(s) % 2 == 1)
    outs = run_trials(_request(bench, data, ws, tmp_path / "w", (even, odd), train_seconds=3))
    assert [o.status for o in outs] == [TrialStatus.TIMEOUT, TrialStatus.OK], [(o.status, o.detail) for o in outs]
    assert "budget" in outs[0].detail


def test_a_child_cannot_forge_another_seeds_results(digits, tmp_path):
    """The results leave through a descriptor only the runner holds: a child writing into every
    descriptor it can find, and into its own output folder under other names, changes nothing of
    what the trusted side reads for the other seeds."""
    bench, data = digits
    ws = _workspace(bench, tmp_path, '''
        import os as _os
        for _fd in range(3, 64):
            try:
                _os.write(_fd, b"ARREC2 {\\"slot\\": 1}\\n")
            except OSError:
                pass
        _out = _os.path.join(_os.path.dirname(_os.environ["TMPDIR"]), "out")
        open(_os.path.join(_out, "logits.npy"), "wb").write(b"forged")
    ''')
    outs = run_trials(_request(bench, data, ws, tmp_path / "w", (5, 6)))
    for out in outs:
        assert out.status == TrialStatus.OK, out.detail + out.log_tail
        logits = np.load(io.BytesIO(out.logits), allow_pickle=False)
        assert logits.shape[1] == 10 and np.isfinite(logits).all()


def test_children_may_use_several_threads(digits, tmp_path):
    """A thread pool started in the runner does not survive fork: a child asking for 2 threads hung
    in its first parallel op (libgomp) until the budget killed it. The runner stays single-threaded."""
    bench, data = digits
    ws = _workspace(bench, tmp_path)
    (ws / "train.py").write_text((ws / "train.py").read_text().replace(
        "def fit(model, x, y, *, epochs, batch_size, generator, device):\n",
        "def fit(model, x, y, *, epochs, batch_size, generator, device):\n"
        "    torch.ones(1 << 20).mul_(2.0).sum()  # large enough for a parallel region\n"))
    req = _request(bench, data, ws, tmp_path / "w", (5, 6), train_seconds=20)
    outs = run_trials(dataclasses.replace(req, config=req.config | {"threads": 2}))
    assert [o.status for o in outs] == [TrialStatus.OK, TrialStatus.OK], [(o.status, o.detail) for o in outs]


ONE_PROCESS_PROBE = '''
import os as _os, posix as _posix, subprocess as _sp, sys as _sys, threading as _th
def _starts():
    tried = {}
    for name, start in (("os.fork", _os.fork), ("posix.fork", _posix.fork),
                        ("subprocess", lambda: _sp.Popen([_sys.executable, "-c", "pass"]).wait())):
        try:
            if start() == 0:
                _os._exit(0)
            tried[name] = "started"
        except OSError as exc:
            tried[name] = "refused" + (" (one process)" if "one process" in str(exc) else "")
    box = []
    t = _th.Thread(target=lambda: box.append(1))
    t.start()
    t.join()
    tried["thread"] = "ran" if box else "did not run"
    print("STARTS", sorted(tried.items()), flush=True)
_starts()
'''


@pytest.mark.parametrize("isolation", ["bubblewrap", "none"])
def test_a_seed_is_one_process(digits, tmp_path, isolation):
    """Fork, the raw fork call and a subprocess are refused in a seed's child (a seccomp rule the
    harness installs before candidate code loads), with or without the sandbox; threads run. So
    no work of a seed happens outside the process its counts and CPU seconds come from."""
    bench, data = digits
    ws = _workspace(bench, tmp_path, ONE_PROCESS_PROBE)
    outs = run_trials(_request(bench, data, ws, tmp_path / "w", (7,), isolation=isolation))
    assert outs[0].status == TrialStatus.OK, outs[0].detail + outs[0].log_tail
    line = next(x for x in outs[0].log_tail.splitlines() if x.startswith("STARTS"))
    assert line == ("STARTS [('os.fork', 'refused (one process)'), ('posix.fork', 'refused'), "
                    "('subprocess', 'refused'), ('thread', 'ran')]"), line


# ---------------------------------------------------------------------------- sandboxes started ahead


def test_sandboxes_started_before_their_code_version_give_the_same_results(digits, tmp_path):
    """A slot's spare pair starts with an empty repo and warms up; the request's code version is
    staged into it before any orders. Same seeds, same checkpoints and logits as a pair started
    with the request; the spare serves that one request and its folder goes with it."""
    bench, data = digits
    ws = _workspace(bench, tmp_path)
    req = _request(bench, data, ws, tmp_path / "w", (21, 22))
    spare = TrialSandboxes(req, tmp_path / "spare", capacity=SPARE_CAPACITY)
    assert spare.fits(req) and list(spare.staged.iterdir()) == []
    time.sleep(1.5)  # the sandboxes are up before their orders
    warm = run_trials(req, sandboxes=spare)
    cold = run_trials(req)
    for a, b in zip(warm, cold):
        assert a.status == b.status == TrialStatus.OK, a.detail + b.detail
        assert a.train_report["checkpoint_sha256"] == b.train_report["checkpoint_sha256"]
        assert a.logits == b.logits
        assert a.train.ahead >= 1.0 and a.predict.ahead >= 1.0  # up before their orders
    assert not spare.fits(req) and not spare.folder.exists()


def test_a_spare_that_does_not_fit_is_not_used(digits, tmp_path):
    """Another train split (a smoke run's slice), more seeds than it is sized for: the request
    starts its own pair and the spare stays as it was."""
    bench, data = digits
    ws = _workspace(bench, tmp_path)
    req = _request(bench, data, ws, tmp_path / "w", (3,))
    spare = TrialSandboxes(req, tmp_path / "spare", capacity=1)
    try:
        assert not spare.fits(_request(bench, data, ws, tmp_path / "w", (3, 4)))
        other = dataclasses.replace(req, train_data=str(tmp_path))
        assert not spare.fits(other)
        out = run_trials(_request(bench, data, ws, tmp_path / "w", (3, 4)), sandboxes=spare)
        assert [o.status for o in out] == [TrialStatus.OK] * 2
        assert spare.fits(req) and list(spare.staged.iterdir()) == []
    finally:
        spare.close()
    assert not spare.folder.exists()


def test_nothing_of_a_request_reaches_the_spare_started_beside_it(digits, tmp_path):
    """The slot's next pair starts while a request runs on it: the request's candidate leaves
    files and a daemon behind and looks for other processes; the next request, on the spare, finds
    none of it (its own sandboxes: PID namespace, /tmp, /dev/shm), and its own code version."""
    bench, data = digits
    (tmp_path / "one").mkdir()
    (tmp_path / "two").mkdir()
    first = _workspace(bench, tmp_path / "one", LEAK_PROBE)
    second = _workspace(bench, tmp_path / "two", LEAK_PROBE + "\nprint('VERSION two', flush=True)\n")
    executor = LocalExecutor(1, warm=True)
    try:
        req1 = dataclasses.replace(_request(bench, data, first, tmp_path / "w1", (1,)), keep_warm=True)
        (out1,) = executor.map([req1])[0]
        spare = executor._spares[0]
        assert out1.status == TrialStatus.OK and spare.fits(req1), out1.detail
        smoke = _request(bench, data, second, tmp_path / "s", (9,))  # keep_warm off: leaves the spare alone
        executor.map([smoke])
        assert executor._spares[0] is spare and spare.fits(req1)
        req2 = dataclasses.replace(_request(bench, data, second, tmp_path / "w2", (2,)), keep_warm=True)
        (out2,) = executor.map([req2])[0]
        assert not spare.fits(req2) and executor._spares[0] is not spare  # used, and a fresh one started
        assert out2.status == TrialStatus.OK and out2.train.ahead > 1.0, out2.detail + out2.log_tail
        line = next(x for x in out2.log_tail.splitlines() if x.startswith("PROBE"))
        assert "VERSION two" in out2.log_tail
        assert "leftovers [] sleepers [] " in line and "parent []" in line, line
        assert (spare.staged / "train.py").exists() is False  # its folder is gone
    finally:
        executor.close()
    assert executor._spares == {} and not list(tmp_path.glob("**/.spare-*"))
