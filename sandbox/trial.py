"""One trial: train a candidate's code on one seed, then predict, each phase in a fresh sandbox.

The function here is the unit every executor runs (local slots or Ray tasks). It takes plain
data and returns plain data: the predictions come back as raw ``.npy`` bytes (size-capped), and
the trusted scorer on the driver parses and scores them. Nothing here reads labels of val/test.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import sys
import tempfile
import time
from dataclasses import asdict, dataclass, field
from enum import Enum
from pathlib import Path

from autoresearch.sandbox.isolation import Limits, Mount, SandboxResult, run_sandboxed

EXIT_NONFINITE = 3  # the harness's convention (see any benchmark's harness/run_train.py)
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

    # The sandbox's /tmp is a tmpfs under bubblewrap; without it, give each phase a private host dir.
    def phase_env(name: str) -> dict[str, str]:
        e = dict(env)
        if req.isolation != "bubblewrap":
            tmp = work / f"{name}_tmp"
            tmp.mkdir(exist_ok=True)
            e["TMPDIR"] = str(tmp)
        return e

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
                         Mount(host=train_out, inside="/sandbox/out", writable=True)],
        limits=limits(req.train_seconds), isolation=req.isolation, env=phase_env("train"), cwd="/sandbox/repo",
        devices=req.devices)
    output.train = PhaseTiming(start=train_res.start_seconds, run=train_res.wall_seconds)
    output.log_tail = "== train ==\n" + train_res.log_excerpt[-6000:]
    output.peak_memory_bytes = train_res.peak_memory_bytes
    output.notes.extend(train_res.notes)
    failure = _classify(train_res, "train")
    if failure is None and not (train_out / "checkpoint.pt").is_file():
        failure = (TrialStatus.CRASH, "train phase wrote no checkpoint")
    if failure is None:
        try:
            output.train_report = json.loads((train_out / "train_report.json").read_text()[:10000])
        except (OSError, ValueError):
            output.train_report = {}
        pred_res = run_sandboxed(
            [_python(), "-I", "-B", "/sandbox/harness/run_predict.py", "--repo", "/sandbox/repo", "--data",
             "/sandbox/data", "--checkpoint", "/sandbox/ckpt", "--out", "/sandbox/out", "--config", config_json],
            mounts=common + [Mount(host=Path(req.predict_data), inside="/sandbox/data"),
                             Mount(host=train_out, inside="/sandbox/ckpt"),
                             Mount(host=predict_out, inside="/sandbox/out", writable=True)],
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
                output.predictions[split] = path.read_bytes()

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
