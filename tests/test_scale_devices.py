"""The CUDA path, on CPU: which device each slot gets, and what the sandbox is told for it
(only that GPU's node bound in, only it visible). No GPU is needed to check these."""

from __future__ import annotations

import threading
import time

import pytest

from autoresearch.engine import LocalExecutor
from autoresearch.sandbox.executors import cuda_device_nodes, pin_request, run_on_slots, slot_devices
from autoresearch.sandbox.isolation import Limits, Mount, build_command
from autoresearch.sandbox.trial import TrialOutput, TrialRequest, TrialStatus


def _request(seed: int = 1, device: str = "cpu") -> TrialRequest:
    return TrialRequest(workspace="/w", harness="/h", train_data="/t", predict_data="/p", work_dir="/x", seed=seed,
                        config={"device": device, "threads": 1, "splits": ["val", "test"]}, train_seconds=1,
                        predict_seconds=1, grace_seconds=1, memory_bytes=2**30, max_processes=8,
                        max_prediction_bytes=2**20, isolation="bubblewrap")


def test_slot_devices():
    assert slot_devices("cpu", 3, gpu_count=4) == ["cpu"] * 3
    assert slot_devices("auto", 2, gpu_count=0) == ["cpu", "cpu"]
    assert slot_devices("auto", 2, gpu_count=4) == ["cuda:0", "cuda:1"]
    assert slot_devices("cuda", 3, gpu_count=2) == ["cuda:0", "cuda:1", "cuda:0"]  # more slots than GPUs: shared
    assert slot_devices("cuda:3", 2, gpu_count=4) == ["cuda:3", "cuda:3"]
    with pytest.raises(ValueError):
        slot_devices("cuda", 1, gpu_count=0)


FAKE_DEV = {"/dev/nvidiactl", "/dev/nvidia-uvm", "/dev/nvidia0", "/dev/nvidia1", "/dev/nvidia2"}


def test_pin_request_binds_only_its_gpu():
    req = pin_request(_request(device="cuda"), "cuda:2", exists=FAKE_DEV.__contains__)
    assert req.devices == ("/dev/nvidiactl", "/dev/nvidia-uvm", "/dev/nvidia2")
    assert dict(req.env)["CUDA_VISIBLE_DEVICES"] == "2"
    assert req.config["device"] == "cuda:0"  # the one visible GPU, inside
    cpu = pin_request(req, "cpu")
    assert cpu.devices == () and dict(cpu.env)["CUDA_VISIBLE_DEVICES"] == "" and cpu.config["device"] == "cpu"
    assert cuda_device_nodes(1, exists=FAKE_DEV.__contains__) == ("/dev/nvidiactl", "/dev/nvidia-uvm", "/dev/nvidia1")


def test_bwrap_command_for_a_gpu_slot():
    req = pin_request(_request(device="cuda"), "cuda:1", exists=FAKE_DEV.__contains__)
    cmd, env, _ = build_command(["python", "x.py"], [Mount(host="/w", inside="/sandbox/repo")], isolation="bubblewrap",
                                limits=Limits(wall_seconds=1, cpu_seconds=1, memory_bytes=2**30, max_processes=8,
                                              max_output_bytes=2**20),
                                env=dict(req.env), cwd="/sandbox/repo", devices=list(req.devices))
    binds = [cmd[i + 1] for i, a in enumerate(cmd) if a == "--dev-bind"]
    assert binds == ["/dev/nvidiactl", "/dev/nvidia-uvm", "/dev/nvidia1"]
    assert "/dev/nvidia0" not in cmd and "/dev/nvidia2" not in cmd
    setenv = {cmd[i + 1]: cmd[i + 2] for i, a in enumerate(cmd) if a == "--setenv"}
    assert setenv["CUDA_VISIBLE_DEVICES"] == "1"
    assert "--clearenv" in cmd and "--unshare-all" in cmd


def test_each_slot_holds_its_own_device():
    """Two slots on two GPUs: a device is never used by two trials at once, order of results kept."""
    active: dict[str, int] = {}
    lock = threading.Lock()
    seen = []

    def fn(req: TrialRequest) -> TrialOutput:
        dev = dict(req.env)["CUDA_VISIBLE_DEVICES"]
        with lock:
            active[dev] = active.get(dev, 0) + 1
            assert active[dev] == 1, "two trials on one slot's GPU"
            seen.append(dev)
        time.sleep(0.05)
        with lock:
            active[dev] -= 1
        return TrialOutput(seed=req.seed, status=TrialStatus.OK, detail=dev, isolation="none")

    outs = run_on_slots(fn, [_request(seed=s, device="cuda") for s in range(8)], ["cuda:0", "cuda:1"])
    assert [o.seed for o in outs] == list(range(8))
    assert set(seen) == {"0", "1"}
    outs = LocalExecutor(2, devices=["cuda:0", "cuda:1"]).map(fn, [_request(seed=s, device="cuda") for s in range(4)])
    assert [o.seed for o in outs] == list(range(4))


def test_cpu_slots_pass_requests_through():
    reqs = [_request(seed=s) for s in range(3)]
    got = LocalExecutor(2, devices=["cpu", "cpu"]).map(lambda r: r, reqs)
    assert got == reqs
