"""A code version's two phase sandboxes (train, predict), startable before their work exists.

Starting a phase sandbox costs more than most seeds of a small benchmark take: Python, torch and
the harness's warm-up (the train phase's first optimizer imports torch._dynamo): ~3.5 s of one
core for train and ~1.7 s for predict on digits-mlp, against ~0.3 s per seed. A runner needs
none of its work for that: it warms up first and reads its orders after (run_train.py,
run_predict.py). So a slot keeps one pair started ahead, a *spare*, while its current request
runs: the next request of the same shape finds both warm, their start spent on a core training
leaves idle, or while the agent drafts.

What a spare's sandboxes see is what a phase always sees (the harness, its own split, the code
version read-only, a size-capped /tmp of its own), and nothing of the request before it: a pair
serves one request and ends. The code version is not known when they start, so their read-only
repo mount is an empty folder the trusted side fills (``stage``) before handing over any orders;
no candidate code runs before then (a runner imports it only in the children it forks per seed).
A phase's wall limit counts from its orders (the wait costs no CPU), and its size limits are those
of up to ``capacity`` seeds.
"""

from __future__ import annotations

import json
import os
import shutil
import sys
import threading
from pathlib import Path

from autoresearch.sandbox.isolation import Limits, Mount, SandboxResult, run_sandboxed
from autoresearch.sandbox.results import MAX_REPORT_BYTES

PROTOCOL = 2
CHILD_GRACE_SECONDS = 5.0  # per seed, on top of its budget: importing the candidate, saving
SPARE_CAPACITY = 32  # seeds a spare is sized for (the default gate looks at 16 at most)


def phase_limits(req, seconds_per_seed: float, count: int, file_cap: int) -> Limits:
    """A phase sandbox's limits for ``count`` seeds of ``req`` (a sandbox.trial.TrialRequest)."""
    wall = req.grace_seconds + count * (seconds_per_seed + CHILD_GRACE_SECONDS + 1.0)
    tmp_bytes = max(256 * 1024**2, 3 * req.budget.checkpoint_bytes + 64 * 1024**2)
    # RLIMIT_FSIZE is one limit for every file of every process: the results file (bounded by
    # the runner's per-file caps) and what a child writes to its size-capped /tmp alike. An
    # over-large file must reach the runner's cap check, not kill the write that makes it.
    return Limits(wall_seconds=wall, cpu_seconds=int(4 * wall) + 30, memory_bytes=req.memory_bytes,
                  max_processes=req.max_processes, max_file_bytes=max(file_cap, tmp_bytes),
                  tmp_bytes=tmp_bytes, max_output_bytes=file_cap)


def file_caps(req, phase: str) -> dict[str, int]:
    """The size cap of each file a phase's child may ship, per seed."""
    if phase == "train":
        return {"checkpoint.pt": req.budget.checkpoint_bytes, "report.json": MAX_REPORT_BYTES}
    return {"logits.npy": req.budget.prediction_bytes, "check.npy": req.budget.prediction_bytes,
            "report.json": MAX_REPORT_BYTES}


def results_cap(req, phase: str, count: int) -> int:
    """The most a phase's results file may hold for ``count`` seeds (framing included)."""
    return count * (sum(file_caps(req, phase).values()) + 128 * 1024) + 1024**2


def shape(req) -> tuple:
    """What a request's sandboxes fix when they start: requests of one shape can use the same spare."""
    return (req.harness, req.train_data, req.predict_data, req.isolation, tuple(req.packages), tuple(req.env),
            tuple(req.devices), req.memory_bytes, req.max_processes, req.grace_seconds, req.train_seconds,
            req.predict_seconds, req.budget.checkpoint_bytes, req.budget.prediction_bytes)


def _python() -> str:
    return sys.executable


class PhaseSandbox:
    """One phase's sandbox, started now: it warms up and waits (no CPU) for ``give``."""

    def __init__(self, req, *, phase: str, repo: Path, folder: Path, capacity: int, fds: tuple[int, ...] = ()):
        self.phase = phase
        self.isolated = req.isolation == "bubblewrap"
        self.results = folder / f"{phase}.results"
        self.results_fd = os.open(self.results, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        data = req.train_data if phase == "train" else req.predict_data
        env = dict(req.env)
        env.setdefault("OMP_NUM_THREADS", str(req.config.get("threads", 1)))
        env.setdefault("MKL_NUM_THREADS", str(req.config.get("threads", 1)))
        env.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
        mounts = [Mount(host=repo, inside="/sandbox/repo"), Mount(host=Path(req.harness), inside="/sandbox/harness"),
                  Mount(host=Path(data), inside="/sandbox/data")]
        if self.isolated:
            self.scratch = "/tmp"  # the sandbox's own, size-capped
        else:  # none of its own: a private host folder instead
            tmp = folder / f"{phase}_tmp"
            tmp.mkdir()
            self.scratch = str(tmp)
            mounts.append(Mount(host=tmp, inside=str(tmp), writable=True))
            env["TMPDIR"] = str(tmp)
        # Paths as the runner sees them (the host's own without bubblewrap).
        self.repo = "/sandbox/repo" if self.isolated else str(repo)
        self.data = "/sandbox/data" if self.isolated else data
        harness = "/sandbox/harness" if self.isolated else req.harness
        seconds = req.train_seconds if phase == "train" else req.predict_seconds
        limits = phase_limits(req, seconds, capacity, results_cap(req, phase, capacity))
        self._wall = limits.wall_seconds
        self._orders = b""
        self._given = threading.Event()
        self._done: list = []  # the SandboxResult, or what setting the sandbox up raised

        def run() -> None:
            try:
                self._done.append(run_sandboxed(
                    [_python(), "-I", "-B", f"{harness}/run_{phase}.py"], mounts=mounts, limits=limits,
                    isolation=req.isolation, env=env, cwd=self.repo, devices=req.devices,
                    stdin_data=self._wait_for_orders, pass_fds=(self.results_fd, *fds), packages=req.packages,
                    wall_after_orders=lambda: self._wall))
            except BaseException as exc:  # re-raised by result()
                self._done.append(exc)

        self._thread = threading.Thread(target=run, name=f"{phase}-sandbox", daemon=True)
        self._thread.start()

    @property
    def given(self) -> bool:
        return self._given.is_set()

    @property
    def waiting(self) -> bool:
        """Still up and without orders (a sandbox that died while waiting is no use)."""
        return not self.given and self._thread.is_alive()

    def give(self, orders: dict, wall_seconds: float) -> None:
        """Hand over the orders; the wall limit (``wall_seconds``) counts from now."""
        if self.given:
            raise RuntimeError(f"the {self.phase} sandbox already has its orders")
        self._wall = wall_seconds
        self._orders = json.dumps({"protocol": PROTOCOL, "phase": self.phase, "results_fd": self.results_fd,
                                   "isolated": self.isolated, "scratch": self.scratch, "repo": self.repo,
                                   "data": self.data, **orders}).encode()
        self._given.set()

    def result(self) -> SandboxResult:
        """Wait for the phase to end (its orders given) and return how it ran."""
        self._thread.join()
        done = self._done[0]
        if isinstance(done, BaseException):
            raise done
        return done

    def close(self) -> None:
        """End it: without orders yet, orders with no trials (the runner exits at once)."""
        if not self.given:
            self.give({"trials": [], "child_seconds": 1}, 30.0)
        self._thread.join(timeout=60)
        try:
            os.close(self.results_fd)
        except OSError:
            pass

    def _wait_for_orders(self) -> bytes:
        self._given.wait()
        return self._orders


class TrialSandboxes:
    """The train and predict sandboxes of one request, started together (ahead, as a spare, or
    when the request comes). The predict sandbox reads checkpoints from the train phase's
    results file through a descriptor opened now, by offset; no path inside it names the file."""

    def __init__(self, req, folder: Path, *, capacity: int):
        self.shape = shape(req)
        self.capacity = capacity
        self.folder = folder
        folder.mkdir(parents=True)
        self.staged = folder / "repo"
        self.staged.mkdir()
        os.chmod(self.staged, 0o755)  # the sandbox's unprivileged uid reads what is staged here
        self.train = PhaseSandbox(req, phase="train", repo=self.staged, folder=folder, capacity=capacity)
        self.checkpoints_fd = os.open(self.train.results, os.O_RDONLY)
        self.predict = PhaseSandbox(req, phase="predict", repo=self.staged, folder=folder, capacity=capacity,
                                    fds=(self.checkpoints_fd,))
        self._used = False

    def fits(self, req) -> bool:
        """Whether ``req`` can run here: same shape, no more seeds than they are sized for, unused,
        and both still waiting."""
        return (not self._used and shape(req) == self.shape and len(req.seeds) <= self.capacity
                and self.train.waiting and self.predict.waiting)

    def stage(self, workspace: str) -> None:
        """Copy the request's code version into the (still empty) read-only repo both phases mount."""
        self._used = True
        for src in sorted(Path(workspace).rglob("*")):
            if src.is_symlink():
                continue  # a materialised code version holds plain files only
            dst = self.staged / src.relative_to(workspace)
            if src.is_dir():
                dst.mkdir(exist_ok=True)
                os.chmod(dst, 0o755)
            else:
                shutil.copyfile(src, dst)
                os.chmod(dst, 0o644)

    def close(self) -> None:
        """End both (unused ones exit at once) and remove their folder."""
        self._used = True
        self.train.close()
        self.predict.close()
        try:
            os.close(self.checkpoints_fd)
        except OSError:
            pass
        shutil.rmtree(self.folder, ignore_errors=True)
