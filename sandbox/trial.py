"""Trials of one code version: train every seed it is asked for, then predict, each phase in one
fresh sandbox (protocol 2 of the frozen harness: one Python and one torch import per phase, each
seed in a child forked before any candidate code loads; see the harness's runtime.py). Both
sandboxes may have been started ahead, before the code version was known (sandbox.phase_sandbox).

The function here is the unit every executor runs (local slots or Ray tasks). It takes plain
data and returns plain data: per seed, a status, the harness's validated reports and the raw
logits bytes (size-capped), which the trusted scorer on the driver parses and scores. Nothing
here reads labels of val/test. Whatever the sandbox returns is parsed defensively
(sandbox.results); a malformed answer is that seed's failure, never an exception.
"""

from __future__ import annotations

import errno
import hashlib
import os
import shutil
import stat
from dataclasses import asdict, dataclass, field
from enum import Enum
from pathlib import Path

from autoresearch.sandbox.isolation import SandboxResult
from autoresearch.sandbox.results import (PredictReport, Record, TrainReport, file_bytes,
                                          parse_report, read_records)
from autoresearch.sandbox.phase_sandbox import (CHILD_GRACE_SECONDS, PhaseSandbox, TrialSandboxes,
                                                file_caps, phase_limits)

EXIT_NONFINITE = 3  # the harness's conventions (autoresearch/harnesses/torch-classifier/runtime.py)
EXIT_TAMPERED = 4


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
    # Gradient computations in training (backward passes, autograd.grad, torch.func.grad: every spelling
    # reaches autograd's engine): epochs x steps per epoch at the spec's batch size, + tolerance. None: no limit.
    train_steps: int | None = None


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
    keep_warm: bool = False  # the slot keeps a train sandbox started ahead for its next such request


@dataclass(kw_only=True)
class PhaseTiming:
    start: float = 0.0  # spawning the phase's sandbox until its process runs (shared by its seeds)
    run: float = 0.0  # wall time of this seed's child
    cpu: float | None = None  # CPU seconds of this seed's child (measured by the runner)
    # Wall time of the phase sandbox from its orders to its end, shared by its seeds: what it adds.
    # (Both phases start before their orders: predict while the seeds train, train while the slot's
    # request before it ran, sandbox.train_sandbox.)
    sandbox: float = 0.0
    ahead: float = 0.0  # how long the sandbox had been up before its orders (started ahead, warm)


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


def _last_message(log: str) -> str:
    """The log's last line that says something: not a bare traceback header, which is all a
    process killed mid-print leaves (a detached process's, killed when its seed ended, after the
    seed's own last words)."""
    lines = [line for line in log.strip().splitlines() if line.strip()]
    return next((line for line in reversed(lines) if line.strip() != "Traceback (most recent call last):"),
                lines[-1] if lines else "")


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
    last = _last_message(log)
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
    if rec.exit == EXIT_TAMPERED:  # the harness's own verdict (both phases); its log line says which rule
        if "harness's compute count off" in log:
            return TrialStatus.TAMPERED, (f"{phase}: candidate code took the harness's compute count off torch's "
                                          "function-mode stack")
        if phase == "train":
            return TrialStatus.TAMPERED, "the candidate reseeded the global torch generator the harness seeded"
    if phase == "predict" and "harness: the predict phase runs inference only" in log:
        return TrialStatus.OVER_BUDGET, ("tried to train in the predict phase (gradients, backward passes and "
                                         "optimizer steps are off there: it has no training budget)")
    if rec.signal is not None:
        return TrialStatus.CRASH, f"{phase} killed by signal {rec.signal}"
    last = _last_message(log)
    return TrialStatus.CRASH, f"{phase} exited with code {rec.exit}: {last[:300]}"


def _over_budget(name: str, used: int, limit: int) -> tuple[TrialStatus, str] | None:
    if used > limit:
        return TrialStatus.OVER_BUDGET, f"{name}: {used} examples passed through the model, over the budget of {limit}"
    return None


def _over_steps(used: int, limit: int | None) -> tuple[TrialStatus, str] | None:
    if limit is not None and used > limit:
        return TrialStatus.OVER_BUDGET, (f"training: {used} gradient computations (backward passes), over the budget "
                                         f"of {limit} (epochs x steps per epoch at the spec's batch size): a longer "
                                         "training loop, however it is spelt, or smaller batches than the budget's")
    return None


def run_trials(req: TrialRequest, sandboxes: TrialSandboxes | None = None) -> list[TrialOutput]:
    """Train and predict every seed of ``req``; one output per seed, in request order.
    ``sandboxes``: the slot's pair started ahead (used if it fits ``req``, then ended; the caller
    closes one that does not fit), else a pair is started now."""
    work = Path(req.work_dir)
    if work.exists():
        shutil.rmtree(work)
    work.mkdir(parents=True)
    pair = sandboxes if sandboxes is not None and sandboxes.fits(req) else \
        TrialSandboxes(req, work / "sandboxes", capacity=len(req.seeds))
    try:
        return _run_trials(req, pair, work)
    finally:
        pair.close()  # a phase not yet given orders (an error before them) exits at once


def _run_trials(req: TrialRequest, pair: TrialSandboxes, work: Path) -> list[TrialOutput]:
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

    pair.stage(req.workspace)  # the read-only repo both phases mount: empty until now
    protected = {"workspace": req.workspace, "staged workspace": str(pair.staged), "harness": req.harness,
                 "train data": req.train_data, "predict data": req.predict_data}
    protected.update({p: p for p in req.protected})
    before = {name: tree_hash(p) for name, p in protected.items()}

    trained, records = _train_phase(req, outputs, slots, pair.train)
    # The predict phase has been warming up beside the train phase (or since the pair started
    # ahead); its orders are the checkpoints' places in the train results file.
    predict = pair.predict
    predict_caps = file_caps(req, "predict")
    predict.give({"child_seconds": req.predict_seconds + CHILD_GRACE_SECONDS, "config": req.config, **req.predict,
                  "file_caps": predict_caps, "checkpoints_fd": pair.checkpoints_fd,
                  "private_fds": [pair.checkpoints_fd],
                  "trials": [{"slot": i, "key": req.keys[i], "offset": records[i].files["checkpoint.pt"][0],
                              "size": records[i].files["checkpoint.pt"][1]} for i in trained]},
                 phase_limits(req, req.predict_seconds, len(trained), 0).wall_seconds)
    predict_res = predict.result()
    if trained:
        _predict_results(req, outputs, trained, predict.results, predict_caps, predict_res)

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


def _timing(res: SandboxResult) -> PhaseTiming:
    return PhaseTiming(start=res.start_seconds, sandbox=res.wall_seconds - res.waited_seconds, ahead=res.waited_seconds)


def _train_phase(req: TrialRequest, outputs: list[TrialOutput], slots: list[int],
                 sandbox: PhaseSandbox) -> tuple[list[int], dict[int, Record]]:
    """Train every seed in one sandbox (started ahead, or with the request); mark the outputs of
    seeds that failed. Returns the slots that trained within budget and the runner's records
    (checkpoint offsets for predict)."""
    train_caps = file_caps(req, "train")
    sandbox.give({"child_seconds": req.train_seconds + CHILD_GRACE_SECONDS, "config": req.config,
                  "sketch_key": req.sketch_key, "file_caps": train_caps,
                  "trials": [{"slot": i, "key": k} for i, k in zip(slots, req.keys)]},
                 phase_limits(req, req.train_seconds, len(slots), 0).wall_seconds)
    train_res = sandbox.result()
    train_file = sandbox.results
    records, problem = read_records(train_file, allowed_files=train_caps, slots=set(slots))
    trained: list[int] = []
    for i, out in enumerate(outputs):
        out.train = _timing(train_res)
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
                    or _over_budget("training (gradients off)", compute.other_examples, req.budget.other_examples) \
                    or _over_steps(compute.backward_passes, req.budget.train_steps)
        if failure is not None:
            out.status, out.detail = failure
        else:
            trained.append(i)
    return trained, records


def _predict_results(req: TrialRequest, outputs: list[TrialOutput], trained: list[int], predict_file: Path,
                     predict_caps: dict[str, int], predict_res: SandboxResult) -> None:
    """Read the predict runner's records into the outputs of the seeds that trained."""
    precords, problem = read_records(predict_file, allowed_files=predict_caps, slots=set(trained))
    for i in trained:
        out = outputs[i]
        out.predict = _timing(predict_res)
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
