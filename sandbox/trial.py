"""One trial: train a candidate's code on one seed, then predict, each phase in a fresh sandbox.

The function here is the unit every executor runs (local slots or Ray tasks). It takes plain
data and returns plain data: the predictions come back as raw ``.npy`` bytes (size-capped), and
the trusted scorer on the driver parses and scores them. Nothing here reads labels of val/test.
"""

from __future__ import annotations

import errno
import hashlib
import json
import os
import shutil
import stat
import sys
from dataclasses import asdict, dataclass, field
from enum import Enum
from pathlib import Path

from autoresearch.sandbox.isolation import Limits, Mount, SandboxResult, run_sandboxed

EXIT_NONFINITE = 3  # the harness's convention (see autoresearch/harnesses/torch-classifier/run_train.py)
EXIT_TAMPERED = 4


class TrialStatus(str, Enum):
    OK = "ok"
    TIMEOUT = "timeout"
    OOM = "oom"
    CRASH = "crash"
    NONFINITE = "nonfinite"
    TAMPERED = "tampered"


@dataclass(frozen=True, kw_only=True)
class TrialRequest:
    """Everything a trial needs, as paths and numbers (picklable, for Ray)."""

    workspace: str  # the candidate's repo files (mounted read-only)
    harness: str  # the benchmark's frozen harness (read-only)
    train_data: str  # train inputs+labels (read-only)
    predict_data: str  # val/test inputs only (read-only)
    work_dir: str  # scratch for this trial's outputs, on the host
    seed: int
    config: dict  # epochs, batch_size, threads, num_classes, device, splits
    train_seconds: float
    predict_seconds: float
    grace_seconds: float
    memory_bytes: int
    max_processes: int
    max_prediction_bytes: int
    isolation: str
    protected: tuple[str, ...] = ()  # extra host paths hashed before/after (e.g. the labels dir)
    devices: tuple[str, ...] = ()  # device nodes to expose (GPU slot), bubblewrap only
    env: tuple[tuple[str, str], ...] = ()


@dataclass(kw_only=True)
class PhaseTiming:
    start: float = 0.0  # spawning the sandbox until the process runs
    run: float = 0.0  # wall time of the phase


@dataclass(kw_only=True)
class TrialOutput:
    seed: int
    status: TrialStatus
    detail: str
    isolation: str
    train: PhaseTiming = field(default_factory=PhaseTiming)
    predict: PhaseTiming = field(default_factory=PhaseTiming)
    train_report: dict = field(default_factory=dict)
    predictions: dict[str, bytes] = field(default_factory=dict)  # split -> raw .npy bytes
    log_tail: str = ""
    peak_memory_bytes: int | None = None
    notes: list[str] = field(default_factory=list)
    device: str = ""  # where it ran, e.g. "cpu" or "cuda:1" (the host's index of the one visible GPU)

    def summary(self) -> dict:
        d = asdict(self)
        d["status"] = self.status.value
        d.pop("predictions")
        return d


def tree_hash(path: str | Path) -> str:
    """Hash of every file's relative path, mode and content under path (or of one file)."""
    root = Path(path)
    h = hashlib.sha256()
    if root.is_file():
        h.update(root.read_bytes())
        return h.hexdigest()
    if not root.exists():
        return "missing"
    for dirpath, dirnames, filenames in os.walk(root, followlinks=False):
        dirnames.sort()
        for name in sorted(filenames) + [d for d in dirnames if os.path.islink(os.path.join(dirpath, d))]:
            p = os.path.join(dirpath, name)
            rel = os.path.relpath(p, root)
            st = os.lstat(p)
            h.update(f"{rel}\0{st.st_mode}\0".encode())
            if os.path.islink(p):
                h.update(os.readlink(p).encode())
            else:
                with open(p, "rb") as f:
                    for block in iter(lambda: f.read(1 << 20), b""):
                        h.update(block)
            h.update(b"\0")
    return h.hexdigest()


def read_output_file(path: Path, limit: int) -> bytes | None:
    """Read a file the sandbox wrote, or None when it is not a plain file (a symlink to a host
    file, a FIFO that would block us forever, a device) or is larger than ``limit`` bytes."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK)
    except OSError:
        return None
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode) or st.st_size > limit:
            return None
        with os.fdopen(fd, "rb", closefd=False) as f:
            data = f.read(limit + 1)
        return data if len(data) <= limit else None
    finally:
        os.close(fd)


HOST_MIN_FREE_BYTES = 32 * 1024**2


def _raise_if_host_disk_full(work: Path) -> None:
    """A trial that crashed while the host's disk was (nearly) full says nothing about the
    candidate: raise ENOSPC so the run stops with a storage error and resume re-runs the trial."""
    try:
        free = shutil.disk_usage(work).free
    except OSError:
        return
    if free < HOST_MIN_FREE_BYTES:
        shutil.rmtree(work, ignore_errors=True)
        raise OSError(errno.ENOSPC, f"no space left on the disk of {work} ({free} bytes free); the trial's crash "
                                    "is not the candidate's fault. Free some space and resume the run")


def _python() -> str:
    return sys.executable


def _classify(res: SandboxResult, phase: str) -> tuple[TrialStatus, str] | None:
    if res.timed_out:
        return TrialStatus.TIMEOUT, f"{phase} phase ran past its budget and was killed after {res.wall_seconds:.1f}s"
    if res.output_exceeded:
        return TrialStatus.CRASH, f"{phase} phase wrote more than its output cap and was killed"
    log = res.log_excerpt
    if res.oom or "MemoryError" in log or "DefaultCPUAllocator: can't allocate memory" in log or \
            "CUDA out of memory" in log or "OutOfMemoryError" in log:
        return TrialStatus.OOM, f"{phase} phase ran out of memory"
    if res.exit_code == 0:
        return None
    if phase == "train" and res.exit_code == EXIT_NONFINITE:
        return TrialStatus.NONFINITE, "training produced a non-finite loss or weights"
    if phase == "train" and res.exit_code == EXIT_TAMPERED:
        return TrialStatus.TAMPERED, "the candidate changed the seed it was given"
    if res.signal is not None:
        return TrialStatus.CRASH, f"{phase} phase killed by signal {res.signal}"
    last = next((line for line in reversed(log.strip().splitlines()) if line.strip()), "")
    return TrialStatus.CRASH, f"{phase} phase exited with code {res.exit_code}: {last[:300]}"


def run_trial(req: TrialRequest) -> TrialOutput:
    work = Path(req.work_dir)
    if work.exists():
        shutil.rmtree(work)
    train_out, predict_out = work / "train_out", work / "predict_out"
    train_out.mkdir(parents=True)
    predict_out.mkdir(parents=True)

    protected = {"workspace": req.workspace, "harness": req.harness, "train data": req.train_data,
                 "predict data": req.predict_data}
    protected.update({p: p for p in req.protected})
    before = {name: tree_hash(p) for name, p in protected.items()}
    env = dict(req.env)
    env.setdefault("OMP_NUM_THREADS", str(req.config.get("threads", 1)))
    env.setdefault("MKL_NUM_THREADS", str(req.config.get("threads", 1)))
    env.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
    config_json = json.dumps(req.config, sort_keys=True)
    output = TrialOutput(seed=req.seed, status=TrialStatus.OK, detail="", isolation=req.isolation)
    if str(req.config.get("device", "cpu")).startswith("cuda"):  # the host's name for the one visible GPU
        output.device = str(req.config.get("host_device") or f"cuda:{env.get('CUDA_VISIBLE_DEVICES', '?')}")
        if req.config.get("gpu_bus_id"):
            output.device += f" (PCI {req.config['gpu_bus_id']})"
    else:
        output.device = str(req.config.get("device", "cpu"))

    # The sandbox's /tmp is a tmpfs under bubblewrap; without it, give each phase a private host dir.
    def phase_env(name: str) -> dict[str, str]:
        e = dict(env)
        if req.isolation != "bubblewrap":
            tmp = work / f"{name}_tmp"
            tmp.mkdir(exist_ok=True)
            e["TMPDIR"] = str(tmp)
        return e

    def scratch(name: str) -> list[Mount]:
        # Without bubblewrap the private TMPDIR is a host folder: the output watchdog caps it too.
        if req.isolation == "bubblewrap":
            return []
        tmp = work / f"{name}_tmp"
        return [Mount(host=tmp, inside=str(tmp), writable=True)]

    def limits(seconds: float) -> Limits:
        return Limits(wall_seconds=seconds + req.grace_seconds, cpu_seconds=int(4 * (seconds + req.grace_seconds)) + 30,
                      memory_bytes=req.memory_bytes, max_processes=req.max_processes,
                      max_output_bytes=max(256 * 1024**2, 4 * req.max_prediction_bytes))

    common = [Mount(host=Path(req.workspace), inside="/sandbox/repo"),
              Mount(host=Path(req.harness), inside="/sandbox/harness")]
    train_res = run_sandboxed(
        [_python(), "-I", "-B", "/sandbox/harness/run_train.py", "--repo", "/sandbox/repo", "--data", "/sandbox/data",
         "--out", "/sandbox/out", "--seed", str(req.seed), "--config", config_json],
        mounts=common + [Mount(host=Path(req.train_data), inside="/sandbox/data"),
                         Mount(host=train_out, inside="/sandbox/out", writable=True)] + scratch("train"),
        limits=limits(req.train_seconds), isolation=req.isolation, env=phase_env("train"), cwd="/sandbox/repo",
        devices=req.devices)
    output.train = PhaseTiming(start=train_res.start_seconds, run=train_res.wall_seconds)
    output.log_tail = "== train ==\n" + train_res.log_excerpt[-6000:]
    output.peak_memory_bytes = train_res.peak_memory_bytes
    output.notes.extend(train_res.notes)
    failure = _classify(train_res, "train")
    ckpt = train_out / "checkpoint.pt"
    if failure is None and (ckpt.is_symlink() or not ckpt.is_file()):
        failure = (TrialStatus.CRASH, "train phase wrote no checkpoint (or not as a plain file)")
    if failure is None:
        try:
            report = json.loads(read_output_file(train_out / "train_report.json", 10000) or b"{}")
            output.train_report = report if isinstance(report, dict) else {}
        except ValueError:
            output.train_report = {}
        pred_res = run_sandboxed(
            [_python(), "-I", "-B", "/sandbox/harness/run_predict.py", "--repo", "/sandbox/repo", "--data",
             "/sandbox/data", "--checkpoint", "/sandbox/ckpt", "--out", "/sandbox/out", "--config", config_json],
            mounts=common + [Mount(host=Path(req.predict_data), inside="/sandbox/data"),
                             Mount(host=train_out, inside="/sandbox/ckpt"),
                             Mount(host=predict_out, inside="/sandbox/out", writable=True)] + scratch("predict"),
            limits=limits(req.predict_seconds), isolation=req.isolation, env=phase_env("predict"),
            cwd="/sandbox/repo", devices=req.devices)
        output.predict = PhaseTiming(start=pred_res.start_seconds, run=pred_res.wall_seconds)
        output.log_tail += "\n== predict ==\n" + pred_res.log_excerpt[-3000:]
        output.notes.extend(pred_res.notes)
        failure = _classify(pred_res, "predict")
        if failure is None:
            for split in req.config["splits"]:
                path = predict_out / f"{split}.npy"
                if not path.is_file() or path.is_symlink():
                    failure = (TrialStatus.CRASH, f"predict phase wrote no predictions for {split}")
                    break
                size = path.stat().st_size
                if size > req.max_prediction_bytes:
                    failure = (TrialStatus.CRASH, f"predictions for {split} are {size} bytes, over the cap of "
                                                  f"{req.max_prediction_bytes}")
                    break
                raw = read_output_file(path, req.max_prediction_bytes)
                if raw is None:
                    failure = (TrialStatus.CRASH, f"predictions for {split} are not a plain file within the cap")
                    break
                output.predictions[split] = raw

    if failure is not None and failure[0] == TrialStatus.CRASH:
        _raise_if_host_disk_full(work)
    after = {name: tree_hash(p) for name, p in protected.items()}
    changed = [name for name in protected if before[name] != after[name]]
    if changed:
        failure = (TrialStatus.TAMPERED, f"protected files changed during the trial: {', '.join(changed)}")
    if failure is not None:
        output.status, output.detail = failure
        output.predictions = {}
    # Checkpoints and scratch are not kept: the git commit and seed reproduce them.
    shutil.rmtree(work, ignore_errors=True)
    return output
