"""The CUDA path, on CPU: which device each slot gets, and what the sandbox is told for it
(only that GPU's node bound in, only it visible). No GPU is needed to check these."""

from __future__ import annotations

import subprocess
import sys
import threading
import time

import pytest

from autoresearch.sandbox.executors import LocalExecutor, cuda_device_nodes, pin_request, run_on_slots, slot_devices
from autoresearch.sandbox.isolation import Limits, Mount, build_command
from autoresearch.sandbox.trial import TrialOutput, TrialRequest, TrialStatus
from trial_fakes import make_request


def _request(seed: int = 1, device: str = "cpu") -> TrialRequest:
    req = make_request(seeds=(seed,))
    return make_request(seeds=(seed,), config=req.config | {"device": device})


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

    def fn(req: TrialRequest) -> list[TrialOutput]:
        dev = dict(req.env)["CUDA_VISIBLE_DEVICES"]
        with lock:
            active[dev] = active.get(dev, 0) + 1
            assert active[dev] == 1, "two trials on one slot's GPU"
            seen.append(dev)
        time.sleep(0.05)
        with lock:
            active[dev] -= 1
        return [TrialOutput(seed=s, status=TrialStatus.OK, detail=dev, isolation="none") for s in req.seeds]

    outs = run_on_slots(fn, [_request(seed=s, device="cuda") for s in range(8)], ["cuda:0", "cuda:1"])
    assert [o[0].seed for o in outs] == list(range(8))
    assert set(seen) == {"0", "1"}
    started = []
    outs = LocalExecutor(2, devices=["cuda:0", "cuda:1"], trial_fn=fn).map(
        [_request(seed=s, device="cuda") for s in range(4)], on_start=lambda r: started.append(r.seeds[0]))
    assert [o[0].seed for o in outs] == list(range(4)) and sorted(started) == list(range(4))


def test_cpu_slots_pass_requests_through():
    reqs = [_request(seed=s) for s in range(3)]
    got = LocalExecutor(2, devices=["cpu", "cpu"], trial_fn=lambda r: r).map(reqs)
    assert got == reqs


# --------------------------------------------------------------------------- GPU identity (sandbox.gpus)

@pytest.mark.parametrize("cores, slots, warm", [(2, 1, True), (2, 2, False), (16, 8, True)])
def test_slots_keep_sandboxes_started_ahead_only_with_a_core_to_spare(monkeypatch, cores, slots, warm):
    """A spare pair warms up on a core no slot trains on; with as many slots as cores it would
    slow the trials down, and each request starts its own."""
    from autoresearch.config import RunConfig
    from autoresearch.sandbox import executors

    monkeypatch.setattr(executors.os, "cpu_count", lambda: cores)
    executor = executors.make_executor(RunConfig(benchmark="digits-mlp", slots=slots, device="cpu"))
    assert (executor.slots, executor.warm) == (slots, warm)


from autoresearch.sandbox import gpus as gpus_mod  # noqa: E402
from autoresearch.sandbox.gpus import NvidiaGpu, nvidia_gpus, visible_gpus  # noqa: E402


def _fake_proc_gpus(root, table: dict[str, tuple[int, str]]):
    """/proc/driver/nvidia/gpus as the driver writes it: one folder per PCI address."""
    for bus, (minor, uuid) in table.items():
        (root / bus).mkdir(parents=True)
        (root / bus / "information").write_text(
            f"Model: \t\t NVIDIA H100 80GB HBM3\nIRQ:   \t\t 0\nGPU UUID: \t {uuid}\nVideo BIOS: \t 96.00.99.00.01\n"
            f"Bus Type: \t PCIe\nDMA Size: \t 52 bits\nDMA Mask: \t 0xfffffffffffff\nBus Location: \t {bus}\n"
            f"Device Minor: \t {minor}\nGPU Excluded:\t No\n")
    (root / "0000:ff:00.0").mkdir()  # a folder without a readable information file is skipped


# Minor numbers deliberately not in PCI order: the node for cuda:0 is /dev/nvidia2 here.
FAKE_GPUS = {"0000:3b:00.0": (0, "GPU-bbbb1111-0000-0000-0000-000000000000"),
             "0000:17:00.0": (2, "GPU-aaaa2222-0000-0000-0000-000000000000"),
             "0000:86:00.0": (1, "GPU-cccc3333-0000-0000-0000-000000000000")}


def test_nvidia_gpus_reads_the_drivers_list_in_pci_order(tmp_path):
    _fake_proc_gpus(tmp_path, FAKE_GPUS)
    found = nvidia_gpus(tmp_path)
    assert [g.bus_id for g in found] == ["0000:17:00.0", "0000:3b:00.0", "0000:86:00.0"]
    assert [g.minor for g in found] == [2, 0, 1] and found[0].node == "/dev/nvidia2"
    assert found[0].uuid == "GPU-aaaa2222-0000-0000-0000-000000000000"
    assert nvidia_gpus(tmp_path / "absent") == []


def test_visible_gpus_applies_cuda_visible_devices_as_cuda_does():
    g = [NvidiaGpu("0000:17:00.0", 2, "GPU-aaaa"), NvidiaGpu("0000:3b:00.0", 0, "GPU-bbbb"),
         NvidiaGpu("0000:86:00.0", 1, "GPU-cccc")]
    assert visible_gpus(g, {}) == g
    assert visible_gpus(g, {"CUDA_VISIBLE_DEVICES": "2,0"}) == [g[2], g[0]]
    assert visible_gpus(g, {"CUDA_VISIBLE_DEVICES": "GPU-bb, 0"}) == [g[1], g[0]]  # UUID prefix
    assert visible_gpus(g, {"CUDA_VISIBLE_DEVICES": "1,7,2"}) == [g[1]]  # stops at the first bad entry
    assert visible_gpus(g, {"CUDA_VISIBLE_DEVICES": "GPU-,1"}) == []  # an ambiguous prefix names none
    assert visible_gpus(g, {"CUDA_VISIBLE_DEVICES": ""}) == []


def test_pin_request_uses_the_gpus_own_node_and_uuid(tmp_path, monkeypatch):
    _fake_proc_gpus(tmp_path, FAKE_GPUS)
    monkeypatch.setattr(gpus_mod, "PROC_GPUS", tmp_path)
    monkeypatch.delenv("CUDA_VISIBLE_DEVICES", raising=False)
    dev = FAKE_DEV | {"/dev/nvidia2"}
    req = pin_request(_request(device="cuda"), "cuda:0", exists=dev.__contains__)
    assert req.devices == ("/dev/nvidiactl", "/dev/nvidia-uvm", "/dev/nvidia2")  # cuda:0 is minor 2 here
    env = dict(req.env)
    assert env["CUDA_VISIBLE_DEVICES"] == "GPU-aaaa2222-0000-0000-0000-000000000000"
    assert env["CUDA_DEVICE_ORDER"] == "PCI_BUS_ID"
    assert req.config["device"] == "cuda:0" and req.config["host_device"] == "cuda:0"
    assert req.config["gpu_bus_id"] == "0000:17:00.0"
    # The host's own CUDA_VISIBLE_DEVICES narrows the list first: its cuda:1 is PCI-order GPU 0.
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "2,0")
    req = pin_request(_request(device="cuda"), "cuda:1", exists=dev.__contains__)
    assert req.devices[-1] == "/dev/nvidia2" and req.config["gpu_bus_id"] == "0000:17:00.0"
    with pytest.raises(ValueError, match="cuda:2 does not exist"):
        pin_request(_request(device="cuda"), "cuda:2", exists=dev.__contains__)


def test_ray_worker_pins_the_gpu_ray_gave_it(tmp_path, monkeypatch):
    import sys
    import types

    from autoresearch.sandbox import executors

    _fake_proc_gpus(tmp_path, FAKE_GPUS)
    monkeypatch.setattr(gpus_mod, "PROC_GPUS", tmp_path)
    monkeypatch.setitem(sys.modules, "ray", types.SimpleNamespace(get_gpu_ids=lambda: [2]))
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "2")  # what Ray sets for a worker holding GPU 2
    seen = []
    executors._ray_trial(lambda r: seen.append(r) or TrialOutput(seed=r.seeds[0], status=TrialStatus.OK, detail="",
                                                                 isolation="none"), _request(device="cuda"))
    assert seen[0].config["gpu_bus_id"] == "0000:86:00.0"  # PCI-order GPU 2 (minor 1)
    assert dict(seen[0].env)["CUDA_VISIBLE_DEVICES"] == "GPU-cccc3333-0000-0000-0000-000000000000"


def test_gpu_sandbox_sees_sys_read_only_and_cpu_sandbox_does_not():
    limits = Limits(wall_seconds=1, cpu_seconds=1, memory_bytes=2**30, max_processes=8, max_output_bytes=2**20)

    def ro_binds(devices):
        cmd, _, _ = build_command(["python"], [], isolation="bubblewrap", limits=limits, env={}, cwd="/tmp",
                                  devices=devices)
        return [cmd[i + 1] for i, a in enumerate(cmd) if a == "--ro-bind"]

    assert "/sys" in ro_binds(["/dev/nvidiactl", "/dev/nvidia0"])
    cpu = ro_binds([])
    assert "/sys" not in cpu and "/sys/devices/system/cpu" in cpu


def test_gpu_trial_is_not_given_an_address_space_limit(tmp_path, monkeypatch):
    """Without cgroups, memory falls back to RLIMIT_AS, except for a GPU trial (CUDA cannot start under
    it); that trial's result says its memory was not capped."""
    from autoresearch.sandbox import cgroups
    from autoresearch.sandbox.isolation import run_sandboxed

    monkeypatch.setattr(cgroups, "CGROUP_ROOT", tmp_path / "no-cgroups")
    probe = ["python3", "-c", "import resource; print('AS', resource.getrlimit(resource.RLIMIT_AS)[0])"]
    limits = Limits(wall_seconds=20, cpu_seconds=20, memory_bytes=2**31, max_processes=64, max_output_bytes=2**20)
    cpu = run_sandboxed(probe, mounts=[], limits=limits, isolation="none", cwd=str(tmp_path))
    assert f"AS {2**31}" in cpu.log_excerpt and "memory: RLIMIT_AS 2048 MiB" in " ".join(cpu.notes)
    gpu = run_sandboxed(probe, mounts=[], limits=limits, isolation="none", cwd=str(tmp_path), devices=["/dev/null"])
    assert f"AS {resource_unlimited()}" in gpu.log_excerpt, gpu.log_excerpt
    assert "memory: NOT capped (GPU trial" in " ".join(gpu.notes)


def resource_unlimited() -> int:
    import resource

    return resource.RLIM_INFINITY


def test_stale_empty_cgroups_are_swept_and_live_ones_kept():
    import os
    import uuid

    from autoresearch.sandbox.cgroups import CGROUP_ROOT, sweep_stale_cgroups

    base = CGROUP_ROOT / "pids"
    if not os.access(base, os.W_OK) or not (base / "cgroup.procs").exists():
        pytest.skip("no writable cgroup v1 pids controller here")
    old, fresh = base / f"autoresearch-{uuid.uuid4().hex[:12]}", base / f"autoresearch-{uuid.uuid4().hex[:12]}"
    old.mkdir()
    fresh.mkdir()
    try:
        t = time.time() - 3600
        os.utime(old, (t, t))
        assert sweep_stale_cgroups() >= 1
        assert not old.exists() and fresh.exists()  # a just-made cgroup (not yet joined) is left alone
    finally:
        for p in (old, fresh):
            if p.exists():
                p.rmdir()


def _doctor(monkeypatch) -> str:
    from click.testing import CliRunner

    from autoresearch.cli import main

    result = CliRunner().invoke(main, ["doctor"], env={"COLUMNS": "250"})
    assert result.exit_code == 0, result.output + repr(result.exception)
    return result.output


def test_doctor_lists_devices_on_cpu(monkeypatch):
    import torch

    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    out = _doctor(monkeypatch)
    assert "device cpu:" in out and "GPU: none" in out and "bubblewrap:" in out


def test_doctor_lists_each_gpu_with_what_its_sandbox_sees(tmp_path, monkeypatch):
    """The CUDA branch of `doctor`, on CPU: torch's CUDA queries and the driver's GPU list faked."""
    import types

    import torch

    _fake_proc_gpus(tmp_path, FAKE_GPUS)
    monkeypatch.setattr(gpus_mod, "PROC_GPUS", tmp_path)
    monkeypatch.delenv("CUDA_VISIBLE_DEVICES", raising=False)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 3)
    monkeypatch.setattr(torch.cuda, "get_device_properties",
                        lambda i: types.SimpleNamespace(name="NVIDIA H100 80GB HBM3", total_memory=80 * 2**30,
                                                        major=9, minor=0))
    out = " ".join(_doctor(monkeypatch).split())
    assert "device cuda:0: NVIDIA H100 80GB HBM3, 80 GiB, compute 9.0, PCI 0000:17:00.0" in out
    assert "sees only /dev/nvidia2" in out and "CUDA_VISIBLE_DEVICES=GPU-aaaa2222" in out
    assert "device cuda:2:" in out and "PCI 0000:86:00.0" in out and "one GPU per slot" in out


def test_resolve_device_refuses_a_gpu_index_the_machine_lacks(monkeypatch):
    import torch

    from autoresearch.envinfo import DeviceUnavailable, resolve_device

    monkeypatch.setattr("autoresearch.envinfo.gpu_driver_present", lambda: True)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)
    assert resolve_device("cuda:1") == "cuda:1" and resolve_device("auto") == "cuda"
    with pytest.raises(DeviceUnavailable, match="sees 2 GPU"):
        resolve_device("cuda:2")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert resolve_device("auto") == "cpu"
    with pytest.raises(DeviceUnavailable, match="not available"):
        resolve_device("cuda")


def test_no_gpu_driver_means_cpu_without_importing_torch():
    """`auto` on a machine with no GPU kernel driver is the CPU, known without importing torch in
    the host (about 2 s of every command); with a driver, torch decides."""
    code = ("import sys, autoresearch.envinfo as e\n"
            "e.gpu_driver_present = lambda: False\n"
            "assert e.resolve_device('auto') == 'cpu' and e.resolve_device('cpu') == 'cpu'\n"
            "assert e.device_description('cpu').startswith('cpu (')\n"
            "print('torch' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0 and out.stdout.strip() == "False", out.stderr
