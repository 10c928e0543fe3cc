"""Trials of one code version: train every seed it is asked for, then predict, each phase in one
fresh sandbox (protocol 2 of the frozen harness: one Python and one torch import per phase, each
seed in a child forked before any candidate code loads; see the harness's runtime.py).

The function here is the unit every executor runs (local slots or Ray tasks). It takes plain
data and returns plain data: per seed, a status, the harness's validated reports and the raw
logits bytes (size-capped), which the trusted scorer on the driver parses and scores. Nothing
here reads labels of val/test. Whatever the sandbox returns is parsed defensively
(sandbox.results); a malformed answer is that seed's failure, never an exception.
(Just over 400 lines: the two phases and how each failure of either is named belong together.)
"""

from __future__ import annotations

import errno
import hashlib
import json
import os
import shutil
import stat
import sys
import threading
import time
from dataclasses import asdict, dataclass, field, replace
from enum import Enum
from pathlib import Path

from autoresearch.sandbox.isolation import Limits, Mount, SandboxResult, run_sandboxed
from autoresearch.sandbox.results import (MAX_REPORT_BYTES, PredictReport, Record, TrainReport, file_bytes,
                                          parse_report, read_records)

PROTOCOL = 2
EXIT_NONFINITE = 3  # the harness's conventions (autoresearch/harnesses/torch-classifier/runtime.py)
EXIT_TAMPERED = 4
CHILD_GRACE_SECONDS = 5.0  # per seed, on top of its budget: importing the candidate, saving


class TrialStatus(str, Enum):
    OK = "ok"
    TIMEOUT = "timeout"
    OOM = "oom"
    CRASH = "crash"
    NONFINITE = "nonfinite"
    TAMPERED = "tampered"
    OVER_BUDGET = "over_budget"
    TRANSDUCTIVE = "transductive"


@dataclass(frozen=True, kw_only=True)
class Budget:
    """What one seed may use, as the harness counts it (limits, not rules)."""

    train_examples: int  # examples through the model with gradients on (epochs x train size, + tolerance)
    other_examples: int  # examples through the model with gradients off, in training (evaluation passes)
    predict_examples: int  # examples through the model in the predict phase (every input once, twice for the check rows)
    checkpoint_bytes: int
    prediction_bytes: int


@dataclass(frozen=True, kw_only=True)
class TrialRequest:
    """Every seed of one code version that one sandbox pair runs, as paths and numbers (picklable, for Ray)."""

    workspace: str  # the candidate's repo files (mounted read-only)
    harness: str  # the benchmark's frozen harness (read-only)
    train_data: str  # train inputs+labels (read-only)
    predict_data: str  # inputs.npy: val/test inputs and perturbed copies, mixed (read-only)
    work_dir: str  # scratch for this request's outputs, on the host
    seeds: tuple[int, ...]
    keys: tuple[str, ...]  # per seed: the secret key the harness seeds everything from (never the seed)
    sketch_key: str  # the run's key for the weight sketch positions (the same for every seed)
    config: dict  # epochs, batch_size, threads, num_classes, device
    predict: dict  # batch, check_rows, check_batch
    budget: Budget
    train_seconds: float  # per seed
    predict_seconds: float  # per seed
    grace_seconds: float  # per phase: interpreter and torch start-up
    memory_bytes: int
    max_processes: int
    isolation: str
    packages: tuple[str, ...] = ("numpy", "torch")
    protected: tuple[str, ...] = ()  # extra host paths hashed before/after (e.g. the labels dir)
    devices: tuple[str, ...] = ()  # device nodes to expose (GPU slot), bubblewrap only
    env: tuple[tuple[str, str], ...] = ()


@dataclass(kw_only=True)
class PhaseTiming:
    start: float = 0.0  # spawning the phase's sandbox until its process runs (shared by its seeds)
    run: float = 0.0  # wall time of this seed's child
    cpu: float | None = None  # CPU seconds of this seed's child (measured by the runner)
    # Wall time of the whole phase sandbox, shared by its seeds. For predict, which starts while the
    # seeds train and waits for its orders, the time from its orders to its end: what it adds.
    sandbox: float = 0.0


@dataclass(kw_only=True)
class TrialOutput:
    seed: int
    status: TrialStatus
    detail: str
    isolation: str
    train: PhaseTiming = field(default_factory=PhaseTiming)
    predict: PhaseTiming = field(default_factory=PhaseTiming)
    train_report: dict = field(default_factory=dict)  # validated TrainReport, as a dict
    predict_report: dict = field(default_factory=dict)
    logits: bytes = b""  # raw .npy bytes: one row per predict input
    check: bytes = b""  # raw .npy bytes: the check rows again, in another order and batch size
    log_tail: str = ""
    peak_memory_bytes: int | None = None
    notes: list[str] = field(default_factory=list)
    device: str = ""  # where it ran, e.g. "cpu" or "cuda:1" (the host's index of the one visible GPU)

    def summary(self) -> dict:
        d = asdict(self)
        d["status"] = self.status.value
        d.pop("logits")
        d.pop("check")
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


def _phase_failure(res: SandboxResult, phase: str) -> tuple[TrialStatus, str]:
    """Why a phase's sandbox gave no record for a seed (it died, or ran past its limits)."""
    if res.timed_out:
        return TrialStatus.TIMEOUT, f"{phase} phase ran past its budget and was killed after {res.wall_seconds:.1f}s"
    if res.output_exceeded:
        return TrialStatus.CRASH, f"{phase} phase wrote more than its output cap and was killed"
    log = res.log_excerpt
    if res.oom or "MemoryError" in log or "DefaultCPUAllocator: can't allocate memory" in log:
        return TrialStatus.OOM, f"{phase} phase ran out of memory"
    if res.signal is not None:
        return TrialStatus.CRASH, f"{phase} phase killed by signal {res.signal}"
    last = next((line for line in reversed(log.strip().splitlines()) if line.strip()), "")
    return TrialStatus.CRASH, f"{phase} phase ended (code {res.exit_code}) before this seed: {last[:300]}"


def _child_failure(rec: Record, res: SandboxResult, phase: str, seconds: float) -> tuple[TrialStatus, str] | None:
    """Why one seed's child failed, from what the runner saw of it; None when it exited 0."""
    log = rec.log
    if rec.timed_out:
        return TrialStatus.TIMEOUT, f"{phase} ran past its budget of {seconds:g}s (killed after {rec.seconds:.1f}s)"
    if "MemoryError" in log or "DefaultCPUAllocator: can't allocate memory" in log or \
            "CUDA out of memory" in log or "OutOfMemoryError" in log:
        return TrialStatus.OOM, f"{phase} ran out of memory"
    if rec.signal == 9 and res.oom:
        return TrialStatus.OOM, f"{phase} ran out of memory (killed by the memory cgroup)"
    if rec.exit == 0:
        return None
    if phase == "train" and rec.exit == EXIT_NONFINITE:
        return TrialStatus.NONFINITE, "training produced a non-finite loss or weights"
    if phase == "train" and rec.exit == EXIT_TAMPERED:
        return TrialStatus.TAMPERED, "the candidate reseeded the global torch generator the harness seeded"
    if phase == "predict" and "harness: the predict phase runs inference only" in log:
        return TrialStatus.OVER_BUDGET, ("tried to train in the predict phase (gradients, backward passes and "
                                         "optimizer steps are off there: it has no training budget)")
    if rec.signal is not None:
        return TrialStatus.CRASH, f"{phase} killed by signal {rec.signal}"
    last = next((line for line in reversed(log.strip().splitlines()) if line.strip()), "")
    return TrialStatus.CRASH, f"{phase} exited with code {rec.exit}: {last[:300]}"


def _over_budget(name: str, used: int, limit: int) -> tuple[TrialStatus, str] | None:
    if used > limit:
        return TrialStatus.OVER_BUDGET, f"{name}: {used} examples passed through the model, over the budget of {limit}"
    return None


def run_trials(req: TrialRequest) -> list[TrialOutput]:
    """Train and predict every seed of ``req``; one output per seed, in request order."""
    work = Path(req.work_dir)
    if work.exists():
        shutil.rmtree(work)
    work.mkdir(parents=True)
    slots = list(range(len(req.seeds)))
    outputs = [TrialOutput(seed=s, status=TrialStatus.OK, detail="", isolation=req.isolation) for s in req.seeds]
    device = str(req.config.get("device", "cpu"))
    for out in outputs:
        if device.startswith("cuda"):  # the host's name for the one visible GPU
            out.device = str(req.config.get("host_device") or f"cuda:{dict(req.env).get('CUDA_VISIBLE_DEVICES', '?')}")
            if req.config.get("gpu_bus_id"):
                out.device += f" (PCI {req.config['gpu_bus_id']})"
        else:
            out.device = device

    protected = {"workspace": req.workspace, "harness": req.harness, "train data": req.train_data,
                 "predict data": req.predict_data}
    protected.update({p: p for p in req.protected})
    before = {name: tree_hash(p) for name, p in protected.items()}
    isolated = req.isolation == "bubblewrap"
    env = dict(req.env)
    env.setdefault("OMP_NUM_THREADS", str(req.config.get("threads", 1)))
    env.setdefault("MKL_NUM_THREADS", str(req.config.get("threads", 1)))
    env.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")

    def inside(host: str, where: str) -> str:
        return where if isolated else host

    def scratch(name: str) -> tuple[str, list[Mount], dict[str, str]]:
        """The runner's scratch: the sandbox's own size-capped /tmp, or without it a private host folder."""
        if isolated:
            return "/tmp", [], env
        tmp = work / f"{name}_tmp"
        tmp.mkdir()
        return str(tmp), [Mount(host=tmp, inside=str(tmp), writable=True)], env | {"TMPDIR": str(tmp)}

    def limits(seconds_per_seed: float, count: int, file_cap: int) -> Limits:
        wall = req.grace_seconds + count * (seconds_per_seed + CHILD_GRACE_SECONDS + 1.0)
        tmp_bytes = max(256 * 1024**2, 3 * req.budget.checkpoint_bytes + 64 * 1024**2)
        # RLIMIT_FSIZE is one limit for every file of every process: the results file (bounded by
        # the runner's per-file caps) and what a child writes to its size-capped /tmp alike. An
        # over-large file must reach the runner's cap check, not kill the write that makes it.
        return Limits(wall_seconds=wall, cpu_seconds=int(4 * wall) + 30, memory_bytes=req.memory_bytes,
                      max_processes=req.max_processes, max_file_bytes=max(file_cap, tmp_bytes),
                      tmp_bytes=tmp_bytes, max_output_bytes=file_cap)

    common = [Mount(host=Path(req.workspace), inside="/sandbox/repo"),
              Mount(host=Path(req.harness), inside="/sandbox/harness")]
    harness = inside(req.harness, "/sandbox/harness")

    # ---------------------------------------------------------------- files and the predict sandbox
    # The predict sandbox starts beside the train phase: its runner imports torch and warms up while
    # the seeds train, then waits for its orders, which exist once the checkpoints do. Its wall
    # limit covers the wait; waiting costs no CPU, so its CPU limit stays the predict phase's own.
    train_file = work / "train.results"
    train_caps = {"checkpoint.pt": req.budget.checkpoint_bytes, "report.json": MAX_REPORT_BYTES}
    train_cap = len(slots) * (req.budget.checkpoint_bytes + MAX_REPORT_BYTES + 128 * 1024) + 1024**2
    train_limits = limits(req.train_seconds, len(slots), train_cap)
    predict_file = work / "predict.results"
    predict_caps = {"logits.npy": req.budget.prediction_bytes, "check.npy": req.budget.prediction_bytes,
                    "report.json": MAX_REPORT_BYTES}
    predict_cap = len(slots) * (2 * req.budget.prediction_bytes + MAX_REPORT_BYTES + 128 * 1024) + 1024**2
    predict_limits = limits(req.predict_seconds, len(slots), predict_cap)
    predict_limits = replace(predict_limits, wall_seconds=predict_limits.wall_seconds + train_limits.wall_seconds + 10)
    train_fd = os.open(train_file, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    ckpt_fd = os.open(train_file, os.O_RDONLY)  # the predict runner reads checkpoints through it, by offset
    predict_fd = os.open(predict_file, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    ptmp, ptmp_mounts, predict_env = scratch("predict")
    predict_orders = {"protocol": PROTOCOL, "phase": "predict", "isolated": isolated, "scratch": ptmp,
                      "child_seconds": req.predict_seconds + CHILD_GRACE_SECONDS,
                      "repo": inside(req.workspace, "/sandbox/repo"), "data": inside(req.predict_data, "/sandbox/data"),
                      "config": req.config, **req.predict, "file_caps": predict_caps, "results_fd": predict_fd,
                      "checkpoints_fd": ckpt_fd, "private_fds": [ckpt_fd], "trials": []}
    orders_ready = threading.Event()
    predict_done: list = []  # the SandboxResult, or the exception setting the sandbox up raised

    def predict_stdin() -> bytes:
        orders_ready.wait()
        return json.dumps(predict_orders).encode()

    def run_predict_phase() -> None:
        try:
            predict_done.append(run_sandboxed(
                [_python(), "-I", "-B", f"{harness}/run_predict.py"],
                mounts=common + [Mount(host=Path(req.predict_data), inside="/sandbox/data")] + ptmp_mounts,
                limits=predict_limits, isolation=req.isolation, env=predict_env,
                cwd=inside(req.workspace, "/sandbox/repo"), devices=req.devices, stdin_data=predict_stdin,
                pass_fds=(predict_fd, ckpt_fd), packages=req.packages))
        except BaseException as exc:  # re-raised on the caller's thread
            predict_done.append(exc)

    predict_thread = threading.Thread(target=run_predict_phase, name="predict-phase", daemon=True)
    predict_thread.start()
    try:
        trained, records = _train_phase(req, outputs, slots, train_file, train_fd, train_caps, train_limits, common,
                                        harness, inside, scratch, isolated)
        predict_orders["trials"] = [{"slot": i, "key": req.keys[i], "offset": records[i].files["checkpoint.pt"][0],
                                     "size": records[i].files["checkpoint.pt"][1]} for i in trained]
    finally:
        orders_ready.set()  # with no trials (or after an error) the predict runner just exits
        orders_given = time.monotonic()
        predict_thread.join()
        after_training = time.monotonic() - orders_given
        for fd in (train_fd, ckpt_fd, predict_fd):
            os.close(fd)
    predict_res = predict_done[0]
    if isinstance(predict_res, BaseException):
        raise predict_res
    if trained:
        _predict_results(req, outputs, trained, predict_file, predict_caps, predict_res, after_training)

    if any(o.status == TrialStatus.CRASH for o in outputs):
        _raise_if_host_disk_full(work)
    after = {name: tree_hash(p) for name, p in protected.items()}
    changed = [name for name in protected if before[name] != after[name]]
    for out in outputs:
        if changed:
            out.status, out.detail = TrialStatus.TAMPERED, f"protected files changed during the trial: {', '.join(changed)}"
        if out.status != TrialStatus.OK:
            out.logits = out.check = b""
    # Checkpoints and scratch are not kept: the git commit and seed reproduce them.
    shutil.rmtree(work, ignore_errors=True)
    return outputs


def _train_phase(req: TrialRequest, outputs: list[TrialOutput], slots: list[int], train_file: Path, fd: int,
                 train_caps: dict[str, int], train_limits: Limits, common: list[Mount], harness: str, inside,
                 scratch, isolated: bool) -> tuple[list[int], dict[int, Record]]:
    """Train every seed in one sandbox; mark the outputs of seeds that failed. Returns the slots
    that trained within budget and the runner's records (checkpoint offsets for predict)."""
    tmp, tmp_mounts, train_env = scratch("train")
    orders = {"protocol": PROTOCOL, "phase": "train", "results_fd": fd, "isolated": isolated, "scratch": tmp,
              "child_seconds": req.train_seconds + CHILD_GRACE_SECONDS,
              "repo": inside(req.workspace, "/sandbox/repo"), "data": inside(req.train_data, "/sandbox/data"),
              "config": req.config, "sketch_key": req.sketch_key, "file_caps": train_caps,
              "trials": [{"slot": i, "key": k} for i, k in zip(slots, req.keys)]}
    train_res = run_sandboxed(
        [_python(), "-I", "-B", f"{harness}/run_train.py"],
        mounts=common + [Mount(host=Path(req.train_data), inside="/sandbox/data")] + tmp_mounts,
        limits=train_limits, isolation=req.isolation, env=train_env,
        cwd=inside(req.workspace, "/sandbox/repo"), devices=req.devices,
        stdin_data=json.dumps(orders).encode(), pass_fds=(fd,), packages=req.packages)
    records, problem = read_records(train_file, allowed_files=train_caps, slots=set(slots))
    trained: list[int] = []
    for i, out in enumerate(outputs):
        out.train = PhaseTiming(start=train_res.start_seconds, sandbox=train_res.wall_seconds)
        out.notes.extend(train_res.notes)
        out.peak_memory_bytes = train_res.peak_memory_bytes
        rec = records.get(i)
        if rec is None:
            out.status, out.detail = _phase_failure(train_res, "train")
            if problem:
                out.detail += f" ({problem})"
            out.log_tail = "== train (phase) ==\n" + train_res.log_excerpt[-6000:]
            continue
        out.train.run, out.train.cpu = rec.seconds, rec.cpu_seconds
        out.log_tail = "== train ==\n" + rec.log[-6000:]
        failure = _child_failure(rec, train_res, "train", req.train_seconds)
        if failure is None:
            report, why = parse_report(file_bytes(train_file, rec, "report.json"), TrainReport)
            size = rec.files.get("checkpoint.pt", (0, -1))[1]
            if "checkpoint.pt" in rec.oversized:
                failure = (TrialStatus.OVER_BUDGET, f"the checkpoint is {rec.oversized['checkpoint.pt']} bytes, over "
                                                    f"the spec's limit of {req.budget.checkpoint_bytes}")
            elif report is None:
                failure = (TrialStatus.CRASH, f"train wrote no valid report: {why}")
            elif size < 0:
                failure = (TrialStatus.CRASH, "train wrote no checkpoint")
            else:
                out.train_report = report.model_dump()
                compute = report.compute
                failure = _over_budget("training (gradients on)", compute.train_examples, req.budget.train_examples) \
                    or _over_budget("training (gradients off)", compute.other_examples, req.budget.other_examples)
        if failure is not None:
            out.status, out.detail = failure
        else:
            trained.append(i)
    return trained, records


def _predict_results(req: TrialRequest, outputs: list[TrialOutput], trained: list[int], predict_file: Path,
                     predict_caps: dict[str, int], predict_res: SandboxResult, after_training: float) -> None:
    """Read the predict runner's records into the outputs of the seeds that trained."""
    precords, problem = read_records(predict_file, allowed_files=predict_caps, slots=set(trained))
    for i in trained:
        out = outputs[i]
        out.predict = PhaseTiming(start=predict_res.start_seconds, sandbox=after_training)
        out.notes.extend(n for n in predict_res.notes if n not in out.notes)
        rec = precords.get(i)
        if rec is None:
            out.status, out.detail = _phase_failure(predict_res, "predict")
            if problem:
                out.detail += f" ({problem})"
            out.log_tail += "\n== predict (phase) ==\n" + predict_res.log_excerpt[-3000:]
            continue
        out.predict.run, out.predict.cpu = rec.seconds, rec.cpu_seconds
        out.log_tail += "\n== predict ==\n" + rec.log[-3000:]
        failure = _child_failure(rec, predict_res, "predict", req.predict_seconds)
        if failure is None:
            report, why = parse_report(file_bytes(predict_file, rec, "report.json"), PredictReport)
            logits, check = file_bytes(predict_file, rec, "logits.npy"), file_bytes(predict_file, rec, "check.npy")
            big = sorted(set(rec.oversized) & {"logits.npy", "check.npy"})
            if big:
                failure = (TrialStatus.CRASH, f"predictions ({big[0]}: {rec.oversized[big[0]]} bytes) are over the "
                                              f"cap of {req.budget.prediction_bytes} bytes")
            elif report is None:
                failure = (TrialStatus.CRASH, f"predict wrote no valid report: {why}")
            elif logits is None or check is None:
                failure = (TrialStatus.CRASH, "predict wrote no predictions")
            else:
                out.predict_report = report.model_dump()
                out.logits, out.check = logits, check
                failure = _over_budget("prediction", report.compute.train_examples + report.compute.other_examples,
                                       req.budget.predict_examples)
        if failure is not None:
            out.status, out.detail = failure
