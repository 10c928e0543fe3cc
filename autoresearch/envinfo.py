"""What machine and software produced a result: recorded with every run and every report."""

from __future__ import annotations

import os
import platform
import subprocess
import sys
from importlib import metadata

# The hub benchmarks train with datasets and transformers: recorded too ("not installed" without the [hub] extra).
PACKAGES = ("torch", "numpy", "scipy", "scikit-learn", "GitPython", "openai", "langgraph", "datasets", "transformers",
            "autoresearch-gate")


def versions() -> dict[str, str]:
    out = {"python": platform.python_version()}
    for name in PACKAGES:
        try:
            out[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            out[name] = "not installed"
    try:
        out["git"] = subprocess.run(["git", "--version"], capture_output=True, text=True, timeout=10).stdout.strip()
    except OSError:
        out["git"] = "not found"
    return out


class DeviceUnavailable(ValueError):
    """The device asked for is not on this machine."""


def gpu_driver_present() -> bool:
    """Whether this machine has a GPU kernel driver (NVIDIA's, or ROCm's /dev/kfd) at all. Without
    one, torch.cuda cannot be available, and the host need not import torch (about 2 s) to know."""
    return (os.path.exists("/proc/driver/nvidia/version") or os.path.exists("/dev/nvidiactl")
            or os.path.exists("/dev/kfd"))


def resolve_device(requested: str) -> str:
    if requested == "cpu" or (requested == "auto" and not gpu_driver_present()):
        return "cpu"
    import torch

    if requested == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if requested.startswith("cuda") and not torch.cuda.is_available():
        raise DeviceUnavailable(f"device {requested!r} requested but CUDA is not available here (use --device cpu or auto)")
    if requested.startswith("cuda:") and int(requested.split(":")[1]) >= torch.cuda.device_count():
        raise DeviceUnavailable(f"device {requested!r} requested but this machine's CUDA sees "
                                f"{torch.cuda.device_count()} GPU(s): cuda:0 .. cuda:{torch.cuda.device_count() - 1}")
    return requested


def device_description(device: str) -> str:
    if device.startswith("cuda"):
        import torch

        idx = int(device.split(":")[1]) if ":" in device else 0
        return f"{device} ({torch.cuda.get_device_name(idx)})"
    return f"cpu ({platform.processor() or platform.machine()}, {os.cpu_count()} cores)"


def environment(device: str, isolation: str) -> dict:
    return {"versions": versions(), "platform": platform.platform(), "device": device_description(device),
            "isolation": isolation, "argv": sys.argv}
