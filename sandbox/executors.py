"""Where trials run: device slots on this machine, and Ray tasks across machines.

Every executor runs the same trial function (``sandbox.trial.run_trials``: every seed of one
request, one sandbox per phase) on the same picklable requests and returns each request's outputs
in request order; it never scores, gates or records anything.
Decisions are therefore independent of how many slots ran the trials, or where.

Devices: one GPU per trial slot. A slot's GPU is pinned through the sandbox: only that device's
node is bound into it and ``CUDA_VISIBLE_DEVICES`` names only it (by UUID: sandbox.gpus says why),
so inside the trial it is always ``cuda:0``. Without CUDA, slots are CPU slots and requests pass through unchanged.
"""

from __future__ import annotations

import dataclasses
import os
import queue
import uuid
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Callable, Protocol

from autoresearch.sandbox import trial
from autoresearch.sandbox.gpus import NvidiaGpu, nvidia_gpus, visible_gpus
from autoresearch.sandbox.phase_sandbox import SPARE_CAPACITY, TrialSandboxes
from autoresearch.sandbox.trial import TrialOutput, TrialRequest, TrialStatus, run_trials

TrialFn = Callable[[TrialRequest], list[TrialOutput]]
OnStart = Callable[[TrialRequest], None]


class Executor(Protocol):
    """What the engine needs of an executor: how many requests it runs at once, and ``map``,
    which runs every request (calling ``on_start(request)`` on the driver as each one starts)
    and returns each request's outputs in request order."""

    slots: int

    def map(self, requests: list[TrialRequest], on_start: OnStart | None = None) -> list[list[TrialOutput]]: ...

CUDA_CONTROL_NODES = ("/dev/nvidiactl", "/dev/nvidia-uvm", "/dev/nvidia-uvm-tools", "/dev/nvidia-modeset")


def slot_devices(device: str, slots: int, gpu_count: int) -> list[str]:
    """The device each slot runs on. "cpu": CPU slots. "cuda:N": every slot on GPU N (the user
    chose it). "cuda"/"auto" with GPUs: slot i gets GPU i (round robin when slots > GPUs)."""
    if device == "cpu" or (device == "auto" and gpu_count == 0):
        return ["cpu"] * slots
    if device.startswith("cuda:"):
        return [device] * slots
    if gpu_count == 0:
        raise ValueError(f"device {device!r} asks for CUDA but this machine has no GPU")
    return [f"cuda:{i % gpu_count}" for i in range(slots)]


def cuda_device_nodes(node: str | int, exists: Callable[[str], bool] = os.path.exists) -> tuple[str, ...]:
    """The /dev nodes a process needs to use one GPU (its node, or /dev/nvidia<index>) and only it."""
    node = f"/dev/nvidia{node}" if isinstance(node, int) else node
    return tuple(p for p in (*CUDA_CONTROL_NODES, node) if exists(p))


@dataclasses.dataclass(frozen=True)
class Pinning:
    """What a request on one device is given: the device nodes bound into its sandbox, the CUDA
    environment and what the harness is told (its device, and where that is on the host)."""

    devices: tuple[str, ...]
    env: dict[str, str]
    config: dict


def pinning(device: str, exists: Callable[[str], bool] = os.path.exists,
            gpus: list[NvidiaGpu] | None = None) -> Pinning:
    """For a GPU, only its node is bound into the sandbox and only it is visible (as cuda:0
    inside); for the CPU, no GPU node and no visible GPU.

    ``cuda:N`` is N as this process's CUDA numbers GPUs (see sandbox.gpus). Where the driver lists
    its GPUs, the node is the GPU's own (by minor number) and CUDA inside is given its UUID; where
    it does not, /dev/nvidia<N> and index N are used as they are."""
    if device == "cpu":
        return Pinning(devices=(), env={"CUDA_VISIBLE_DEVICES": ""}, config={"device": "cpu"})
    index = int(device.split(":")[1]) if ":" in device else 0
    table = visible_gpus(nvidia_gpus() if gpus is None else gpus)
    if table:
        if index >= len(table):
            raise ValueError(f"{device} does not exist here: CUDA sees {len(table)} GPU(s)")
        gpu = table[index]
        nodes, visible = cuda_device_nodes(gpu.node, exists), gpu.uuid or "0"
        where = {"host_device": f"cuda:{index}", "gpu_bus_id": gpu.bus_id, "gpu_uuid": gpu.uuid}
    else:
        nodes, visible = cuda_device_nodes(index, exists), str(index)
        where = {"host_device": f"cuda:{index}"}
    return Pinning(devices=nodes, env={"CUDA_VISIBLE_DEVICES": visible, "CUDA_DEVICE_ORDER": "PCI_BUS_ID"},
                   config={"device": "cuda:0"} | where)


def pin_request(req: TrialRequest, device: str, exists: Callable[[str], bool] = os.path.exists,
                gpus: list[NvidiaGpu] | None = None) -> TrialRequest:
    """The request as it runs on ``device`` (see ``pinning``)."""
    pin = pinning(device, exists, gpus)
    env = {k: v for k, v in req.env if k not in ("CUDA_VISIBLE_DEVICES", "CUDA_DEVICE_ORDER")} | pin.env
    config = {k: v for k, v in req.config.items() if k not in ("host_device", "gpu_bus_id", "gpu_uuid")}
    return dataclasses.replace(req, devices=pin.devices, env=tuple(sorted(env.items())), config=config | pin.config)


def run_on_slots(fn: TrialFn, requests: list[TrialRequest], devices: list[str]) -> list[list[TrialOutput]]:
    """Run requests on len(devices) slots; a slot holds its device for the whole request."""
    free: queue.Queue[str] = queue.Queue()
    for d in devices:
        free.put(d)

    def one(req: TrialRequest) -> list[TrialOutput]:
        device = free.get()
        try:
            return fn(pin_request(req, device))
        finally:
            free.put(device)

    with ThreadPoolExecutor(max_workers=len(devices)) as pool:
        return list(pool.map(one, requests))


class LocalExecutor:
    """Runs trials in parallel slots on this machine (threads that each drive one sandbox).
    ``devices``: one per slot (e.g. cuda:0, cuda:1); each trial is pinned to its slot's device.
    ``trial_fn``: what runs one request (default: the sandboxed ``run_trials``, looked up when
    called, so that a test can stand a fake in for it).

    The slots are one pool shared by every ``map`` call: with pipelining several threads ask for
    trials at once (the judge, a speculative gate of the next proposal, the agent's smoke run), and
    N slots must stay N sandboxes at a time, one per GPU. A request takes a free slot (first come,
    first served) and gives it back when it ends.

    ``warm``: each slot keeps a pair of phase sandboxes started ahead (sandbox.phase_sandbox) for
    its next request that asks for it (``keep_warm``: the gate's trials, not smoke runs): it is started as
    a request begins, and warms up beside it. ``close()`` ends the spares."""

    def __init__(self, slots: int = 1, devices: list[str] | None = None, *, trial_fn: TrialFn | None = None,
                 warm: bool = False):
        self.slots = max(1, slots)
        self.devices = list(devices) if devices else None
        self.trial_fn = trial_fn
        self.warm = warm
        self._free: queue.Queue[tuple[int, str]] = queue.Queue()
        for slot, device in enumerate(self.devices[:self.slots] if self.devices else ["cpu"] * self.slots):
            self._free.put((slot, device))
        self._pin = bool(self.devices) and any(d != "cpu" for d in self.devices)
        self._spares: dict[int, TrialSandboxes] = {}  # per slot; only the slot's holder touches its entry

    def map(self, requests: list[TrialRequest], on_start: OnStart | None = None) -> list[list[TrialOutput]]:
        def one(req: TrialRequest) -> list[TrialOutput]:
            slot, device = self._free.get()
            try:
                if on_start is not None:
                    on_start(req)
                req = pin_request(req, device) if self._pin else req
                fn = self.trial_fn or run_trials
                if not (self.warm and req.keep_warm and fn is trial.run_trials):
                    return fn(req)
                spare = self._spares.pop(slot, None)
                if spare is not None and not spare.fits(req):
                    spare.close()
                    spare = None
                self._spares[slot] = TrialSandboxes(
                    req, Path(req.work_dir).parent / f".spare-{slot}-{uuid.uuid4().hex[:8]}",
                    capacity=max(SPARE_CAPACITY, len(req.seeds)))
                return trial.run_trials(req, sandboxes=spare)
            finally:
                self._free.put((slot, device))

        if len(requests) <= 1:
            return [one(r) for r in requests]
        with ThreadPoolExecutor(max_workers=min(self.slots, len(requests))) as pool:
            return list(pool.map(one, requests))

    def close(self) -> None:
        """End the sandbox pairs started ahead (none is left running when a run ends)."""
        while self._spares:
            self._spares.popitem()[1].close()


def make_executor(config) -> Executor:
    """The executor a run's config asks for (``autoresearch.config.RunConfig``): Ray tasks, or
    local slots, one GPU per slot where the device is CUDA. A device this machine lacks, or a Ray
    cluster that does not answer, is a clear error before anything starts."""
    if config.executor == "ray":
        return RayExecutor(address=config.ray_address, slots=config.slots)
    from autoresearch.envinfo import resolve_device

    resolve_device(config.device)
    gpus = 0 if config.device == "cpu" else __import__("torch").cuda.device_count()
    # A slot's spare warms up (~5 s of one core on digits-mlp) on a core no slot trains on: with as
    # many slots as cores it would take CPU from the trials (2 slots on 2 cores: 0.4x the decisions
    # per hour of 1 slot with spares), so there each request starts its own pair.
    warm = (os.cpu_count() or 1) > config.slots
    return LocalExecutor(config.slots, devices=slot_devices(config.device, config.slots, gpus), warm=warm)


# --------------------------------------------------------------------------- Ray


def _lost(req: TrialRequest, exc: BaseException, attempts: int) -> list[TrialOutput]:
    detail = (f"ray task failed on {attempts} attempt(s) without a result (worker lost or task error) "
              f"({type(exc).__name__}: {str(exc).splitlines()[0][:300] if str(exc) else '-'})")
    return [TrialOutput(seed=seed, status=TrialStatus.CRASH, isolation=req.isolation, detail=detail)
            for seed in req.seeds]


def _ray_trial(fn: TrialFn, req: TrialRequest) -> list[TrialOutput]:
    """Runs on a Ray worker: pin the GPU Ray assigned to this task (if any), then run the trial."""
    import ray

    gpus = ray.get_gpu_ids()
    if gpus:
        # Ray narrowed this worker's CUDA_VISIBLE_DEVICES to its GPU, so it is the worker's cuda:0;
        # without the driver's GPU list, fall back to Ray's (nvidia-smi) index as the node number.
        table = nvidia_gpus()
        req = pin_request(req, "cuda:0" if table else f"cuda:{int(gpus[0])}", gpus=table)
    elif req.config.get("device", "cpu") != "cpu":
        req = pin_request(req, "cpu")
    return fn(req)


class ExecutorUnavailable(RuntimeError):
    """The executor asked for cannot run here (e.g. no Ray cluster at the given address)."""


def _host_port(address: str) -> tuple[str, int] | None:
    rest = address.removeprefix("ray://").strip()
    host, sep, port = rest.rpartition(":")
    if not sep or not port.isdigit():
        return None
    return host.strip("[]"), int(port)


def _is_loopback(address: str) -> bool:
    hp = _host_port(address)
    return hp is not None and (hp[0] in ("localhost", "::1") or hp[0].startswith("127."))


def _check_reachable(address: str, timeout: float = 5.0) -> None:
    import socket

    hp = _host_port(address)
    if hp is None:
        raise ExecutorUnavailable(f"--ray-address {address!r} is not HOST:PORT (or ray://HOST:PORT)")
    try:
        socket.create_connection(hp, timeout=timeout).close()
    except OSError as exc:
        raise ExecutorUnavailable(f"no Ray cluster answers at {address} ({exc}); start one with "
                                  "`ray start --head` or drop --ray-address to start a local one") from None


class RayExecutor:
    """The trial function as Ray tasks (``--executor ray``): one CPU slot, or one GPU, per task.

    ``address`` joins an existing cluster (``ray start --head`` elsewhere); without it a local
    one is started bound to 127.0.0.1 only, with no dashboard. The gate, the scorer and the
    ledger stay on the driver: tasks return the raw outputs. Paths in the requests (run folder,
    data, workspace) must be visible at the same place on every node (one machine, or shared
    storage). A task whose worker dies is retried by Ray (``max_retries``); if it still fails,
    its trial is returned as a ``crash`` with the reason, never dropped. ``trial_fn`` is what a
    task runs (the sandboxed ``run_trials``; it must be picklable).
    """

    def __init__(self, address: str | None = None, slots: int = 1, *, max_retries: int = 1,
                 num_gpus_per_trial: float | None = None, init_kwargs: dict | None = None,
                 trial_fn: TrialFn = run_trials):
        loopback = not address or _is_loopback(address)
        if loopback:
            # Ray turns a 127.0.0.1 node address into the machine's public one (and binds its
            # servers there, or dials the cluster there) unless "cluster mode" is off; it reads
            # this when first imported.
            os.environ.setdefault("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "0")
        if address:
            # Ray aborts the whole process when no cluster answers; find out first, with a clear error.
            _check_reachable(address)
        import ray

        self.slots = max(1, slots)
        self.max_retries = max_retries
        self.trial_fn = trial_fn
        self._started_here = False
        if not ray.is_initialized():
            if address:
                try:
                    ray.init(address=address, log_to_driver=False,
                             **({"_node_ip_address": "127.0.0.1"} if loopback else {}), **(init_kwargs or {}))
                except (ConnectionError, RuntimeError, ray.exceptions.RayError) as exc:
                    auth = "Auth" in f"{exc!r}{exc.__cause__!r}"
                    raise ExecutorUnavailable(
                        f"could not join the Ray cluster at {address}: {str(exc).splitlines()[0]}"
                        + ("; the cluster wants a token: set RAY_AUTH_MODE=token and its token (RAY_AUTH_TOKEN or "
                           "~/.ray/auth_token) here as on the cluster" if auth else "")) from None
            else:
                # address="local": always a new cluster of our own, never one found through a
                # (possibly stale) /tmp/ray/ray_current_cluster that may not be on loopback.
                ray.init(address="local", num_cpus=self.slots, include_dashboard=False, _node_ip_address="127.0.0.1",
                         log_to_driver=False, configure_logging=False, **(init_kwargs or {}))
                self._started_here = True
                node_ip = ray.util.get_node_ip_address()
                if node_ip != "127.0.0.1":  # never leave a local cluster listening beyond loopback
                    ray.shutdown()
                    raise RuntimeError(f"the local Ray cluster came up on {node_ip}, not 127.0.0.1 (ray was imported "
                                       "before RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER=0 could be set); refusing to use it")
        gpus = ray.cluster_resources().get("GPU", 0)
        self.num_gpus = (1 if gpus else 0) if num_gpus_per_trial is None else num_gpus_per_trial
        self._remote = ray.remote(_ray_trial)

    def map(self, requests: list[TrialRequest], on_start: OnStart | None = None) -> list[list[TrialOutput]]:
        import ray

        # on_start closes over the driver (ledger, live view): it runs here, as each task is submitted.
        options = {"num_cpus": 1, "num_gpus": self.num_gpus, "max_retries": self.max_retries,
                   "retry_exceptions": False}
        refs = []
        for req in requests:
            if on_start is not None:
                on_start(req)
            refs.append(self._remote.options(**options).remote(self.trial_fn, req))
        outputs = []
        for req, ref in zip(requests, refs):
            try:
                out = ray.get(ref)
            except (ray.exceptions.RayError, OSError) as exc:  # worker died, node lost, task error
                out = _lost(req, exc, self.max_retries + 1)
            if not (isinstance(out, list) and len(out) == len(req.seeds)
                    and all(isinstance(o, TrialOutput) for o in out)):
                out = _lost(req, TypeError(f"task returned {type(out).__name__}"), 1)
            outputs.append(out)
        return outputs

    def shutdown(self) -> None:
        import ray

        if self._started_here and ray.is_initialized():
            ray.shutdown()

