"""Which NVIDIA GPU a CUDA index names, and how to give a sandbox that GPU alone.

A trial's GPU is pinned in two ways at once: only that GPU's device node is bound into the sandbox,
and ``CUDA_VISIBLE_DEVICES`` inside names it by UUID. Both need the GPU's identity, not just an
index, because three numberings differ in general:

* the index this process's CUDA uses (``cuda:N``): an index into ``CUDA_VISIBLE_DEVICES`` if set,
  in ``CUDA_DEVICE_ORDER`` (which autoresearch sets to ``PCI_BUS_ID``: nvidia-smi's and Ray's order);
* the device node ``/dev/nvidia<minor>``: the driver's minor number, not guaranteed to be the index;
* what CUDA inside the sandbox would number the one GPU it can open: a UUID is unambiguous there
  whatever the driver enumerates.

The driver lists every GPU under ``/proc/driver/nvidia/gpus/<PCI address>/information`` with its
minor number and UUID; that is read here (no NVML, no CUDA initialisation in the driver process).
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Mapping

PROC_GPUS = Path("/proc/driver/nvidia/gpus")


@dataclass(frozen=True)
class NvidiaGpu:
    bus_id: str  # PCI address, e.g. "0000:17:00.0"
    minor: int  # its node is /dev/nvidia<minor>
    uuid: str | None  # "GPU-...", when the driver reports it

    @property
    def node(self) -> str:
        return f"/dev/nvidia{self.minor}"


def nvidia_gpus(root: Path | None = None) -> list[NvidiaGpu]:
    """Every NVIDIA GPU the driver knows, in PCI bus order; [] where the driver's list is not readable."""
    root = PROC_GPUS if root is None else root
    found = []
    try:
        entries = sorted(p for p in root.iterdir() if p.is_dir())
    except OSError:
        return []
    for entry in entries:
        fields: dict[str, str] = {}
        try:
            for line in (entry / "information").read_text(errors="replace").splitlines():
                key, sep, value = line.partition(":")
                if sep:
                    fields[key.strip().lower()] = value.strip()
            minor = int(fields["device minor"])
        except (OSError, KeyError, ValueError):
            continue
        uuid = fields.get("gpu uuid") or None
        found.append(NvidiaGpu(bus_id=entry.name.lower(), minor=minor, uuid=uuid if uuid and uuid.startswith("GPU-") else None))
    return sorted(found, key=lambda g: g.bus_id)


def visible_gpus(gpus: list[NvidiaGpu], env: Mapping[str, str] | None = None) -> list[NvidiaGpu]:
    """The GPUs this process's CUDA numbers 0, 1, ...: ``CUDA_VISIBLE_DEVICES`` (indices in PCI
    order, or UUIDs / unique UUID prefixes) applied to the PCI-ordered list. As CUDA does, the list
    ends at the first entry that names no GPU."""
    env = os.environ if env is None else env
    spec = env.get("CUDA_VISIBLE_DEVICES")
    if spec is None:
        return list(gpus)
    out: list[NvidiaGpu] = []
    for token in (t.strip() for t in spec.split(",")):
        if token.isdigit() and int(token) < len(gpus):
            match = [gpus[int(token)]]
        elif token.startswith("GPU-"):
            match = [g for g in gpus if g.uuid and g.uuid.startswith(token)]
        else:
            match = []
        if len(match) != 1 or match[0] in out:
            break
        out.append(match[0])
    return out
