"""A throwaway cgroup per sandboxed command: an exact memory cap with OOM detection, a process-count
cap, and a way to find and kill every process the command started, detached or not.

Two layouts, found by looking at ``CGROUP_ROOT``:

* **v1** (one hierarchy per controller, ``/sys/fs/cgroup/memory`` and ``/sys/fs/cgroup/pids``): one
  child in each, at the top of its hierarchy.
* **v2** (one unified hierarchy: ``cgroup.controllers`` at the root): one child under this process's
  own cgroup or under the root, wherever the ``memory`` and ``pids`` controllers are (or may be)
  enabled for children. The kernel's "no internal processes" rule forbids enabling controllers in a
  cgroup that holds processes (only the true root is exempt), so we never try that, and we never move
  other processes to make room.

Where neither works (not root, cgroups mounted read-only, ...) ``create_cgroup`` returns a
``Cgroup`` with no controllers; the caller falls back to rlimits and says so.
"""

from __future__ import annotations

import errno
import os
import signal
import time
import uuid
from pathlib import Path

CGROUP_ROOT = Path("/sys/fs/cgroup")
SELF_CGROUP = Path("/proc/self/cgroup")
PREFIX = "autoresearch-"
CONTROLLERS = ("memory", "pids")

# A cgroup this old with no process in it was left by a run that was killed before it could clean
# up. The age keeps the sweep away from a cgroup that another run has just made and not yet joined.
STALE_CGROUP_SECONDS = 600.0
_SWEPT: set[Path] = set()


def cgroup_version(root: Path | None = None) -> int | None:
    """2 for a unified hierarchy, 1 where a v1 memory or pids hierarchy is mounted, else None."""
    root = CGROUP_ROOT if root is None else root
    if (root / "cgroup.controllers").is_file():
        return 2
    if any((root / c / "cgroup.procs").exists() for c in CONTROLLERS):
        return 1
    return None


class Cgroup:
    """No cgroup at all: nothing is capped or tracked here (the caller uses rlimits)."""

    version: int | None = None

    @property
    def controllers(self) -> frozenset[str]:
        return frozenset()

    @property
    def active(self) -> bool:
        return bool(self.controllers)

    @property
    def procs_files(self) -> list[str]:
        """Files a new process writes its pid to, to join the group (between fork and exec)."""
        return []

    def pids(self) -> list[int]:
        return []

    def kill_all(self) -> int:
        return 0

    def oom_killed(self) -> bool:
        return False

    def peak_memory(self) -> int | None:
        return None

    def remove(self) -> None:
        pass


def create_cgroup(memory_bytes: int, max_processes: int, root: Path | None = None) -> Cgroup:
    """A fresh cgroup with these limits where this process may make one, else a ``Cgroup()``."""
    root = CGROUP_ROOT if root is None else root
    if root not in _SWEPT:  # once per process and root: what killed runs left behind
        _SWEPT.add(root)
        sweep_stale_cgroups(root)
    name = f"{PREFIX}{uuid.uuid4().hex[:12]}"
    version = cgroup_version(root)
    if version == 2:
        return _create_v2(root, name, memory_bytes, max_processes)
    if version == 1:
        return CgroupV1(root, name, memory_bytes, max_processes)
    return Cgroup()


def sweep_stale_cgroups(root: Path | None = None, *, max_age: float = STALE_CGROUP_SECONDS) -> int:
    """Remove our own empty cgroups older than max_age (the kernel refuses to remove a non-empty one)."""
    root = CGROUP_ROOT if root is None else root
    parents = _v2_parents(root) if cgroup_version(root) == 2 else [root / c for c in CONTROLLERS]
    removed = 0
    for parent in parents:
        try:
            entries = list(parent.glob(f"{PREFIX}*"))
        except OSError:
            continue
        for path in entries:
            try:
                # (A kernel's rmdir refuses a cgroup that still has processes, whatever we read here.)
                if time.time() - path.stat().st_mtime < max_age or _words(path / "cgroup.procs"):
                    continue
                path.rmdir()
                removed += 1
            except OSError:
                continue
    return removed


# --------------------------------------------------------------------------- v1


class CgroupV1(Cgroup):
    """A cgroup v1 pair (memory + pids), each made where its hierarchy lets us."""

    version = 1

    def __init__(self, root: Path, name: str, memory_bytes: int, max_processes: int):
        self.dirs: dict[str, Path] = {}
        for controller in CONTROLLERS:
            base = root / controller
            if not (base / "cgroup.procs").exists():
                continue
            path = base / name
            try:
                path.mkdir()
                if controller == "memory":
                    (path / "memory.limit_in_bytes").write_text(str(memory_bytes))
                    swap = path / "memory.memsw.limit_in_bytes"
                    if swap.exists():
                        try:
                            swap.write_text(str(memory_bytes))
                        except OSError:
                            pass
                else:
                    (path / "pids.max").write_text(str(max_processes))
                self.dirs[controller] = path
            except OSError:
                if path.exists():
                    try:
                        path.rmdir()
                    except OSError:
                        pass

    @property
    def controllers(self) -> frozenset[str]:
        return frozenset(self.dirs)

    @property
    def procs_files(self) -> list[str]:
        return [str(d / "cgroup.procs") for d in self.dirs.values()]

    def pids(self) -> list[int]:
        found: set[int] = set()
        for d in self.dirs.values():
            try:
                found.update(int(x) for x in (d / "cgroup.procs").read_text().split())
            except OSError:
                pass
        return sorted(found)

    def kill_all(self) -> int:
        """SIGKILL every process in the group until none is left; returns how many were seen."""
        seen = 0
        for _ in range(50):
            pids = self.pids()
            if not pids:
                break
            seen = max(seen, len(pids))
            for pid in pids:
                try:
                    os.kill(pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass
            time.sleep(0.02)
        return seen

    def oom_killed(self) -> bool:
        d = self.dirs.get("memory")
        if d is None:
            return False
        try:
            fields = dict(line.split() for line in (d / "memory.oom_control").read_text().splitlines())
            if int(fields.get("oom_kill", "0")) > 0:
                return True
            return int((d / "memory.failcnt").read_text()) > 0 and int(fields.get("under_oom", "0")) > 0
        except (OSError, ValueError):
            return False

    def peak_memory(self) -> int | None:
        d = self.dirs.get("memory")
        if d is None:
            return None
        try:
            return int((d / "memory.max_usage_in_bytes").read_text())
        except (OSError, ValueError):
            return None

    def remove(self) -> None:
        self.kill_all()
        for d in self.dirs.values():
            for _ in range(50):
                try:
                    d.rmdir()
                    break
                except FileNotFoundError:
                    break
                except OSError:
                    time.sleep(0.02)


# --------------------------------------------------------------------------- v2


class CgroupV2(Cgroup):
    """One cgroup in the unified hierarchy, with whichever of memory and pids its parent delegates."""

    version = 2

    def __init__(self, path: Path, controllers: frozenset[str]):
        self.path = path
        self._controllers = controllers

    @property
    def controllers(self) -> frozenset[str]:
        return self._controllers

    @property
    def procs_files(self) -> list[str]:
        return [str(self.path / "cgroup.procs")]

    def pids(self) -> list[int]:
        try:
            return sorted({int(x) for x in (self.path / "cgroup.procs").read_text().split()})
        except (OSError, ValueError):
            return []

    def kill_all(self) -> int:
        """Kill every process in the group until none is left; returns how many were seen.

        ``cgroup.kill`` (Linux 5.14+) kills the whole group at once, forks in flight included;
        older kernels get a SIGKILL per listed process, repeated until the list is empty."""
        seen = 0
        kill_file = self.path / "cgroup.kill"
        for _ in range(50):
            pids = self.pids()
            if not pids:
                break
            seen = max(seen, len(pids))
            if kill_file.exists():
                try:
                    kill_file.write_text("1")
                except OSError:
                    pass
            else:
                for pid in pids:
                    try:
                        os.kill(pid, signal.SIGKILL)
                    except ProcessLookupError:
                        pass
            time.sleep(0.02)
        return seen

    def oom_killed(self) -> bool:
        if "memory" not in self._controllers:
            return False
        try:
            events = dict(line.split() for line in (self.path / "memory.events").read_text().splitlines())
            return int(events.get("oom_kill", "0")) > 0
        except (OSError, ValueError):
            return False

    def peak_memory(self) -> int | None:
        if "memory" not in self._controllers:
            return None
        try:  # memory.peak exists from Linux 5.19
            return int((self.path / "memory.peak").read_text())
        except (OSError, ValueError):
            return None

    def remove(self) -> None:
        self.kill_all()
        for _ in range(50):
            try:
                self.path.rmdir()
                return
            except OSError as exc:
                # EBUSY: the last processes are still exiting; anything else will not get better.
                if exc.errno != errno.EBUSY:
                    return
                time.sleep(0.02)


def _own_v2_cgroup(root: Path) -> Path | None:
    """This process's cgroup in the unified hierarchy (the ``0::/path`` line), under root."""
    try:
        lines = SELF_CGROUP.read_text().splitlines()
    except OSError:
        return None
    for line in lines:
        if line.startswith("0::"):
            rel = line[3:].strip().lstrip("/")
            if ".." in Path(rel).parts:  # outside our cgroup namespace: not ours to use
                return None
            return root / rel if rel else root
    return None


def _v2_parents(root: Path) -> list[Path]:
    """Where a child cgroup may go: our own cgroup (limits nest inside our own), then the root."""
    own = _own_v2_cgroup(root)
    return [own, root] if own is not None and own != root else [root]


def _words(path: Path) -> set[str]:
    try:
        return set(path.read_text().split())
    except OSError:
        return set()


def _delegated(parent: Path) -> frozenset[str]:
    """The controllers of CONTROLLERS that children of parent get, enabling them where allowed."""
    available = _words(parent / "cgroup.controllers") & set(CONTROLLERS)
    enabled = _words(parent / "cgroup.subtree_control") & available
    missing = available - enabled
    # No internal processes: a cgroup other than the true root (which has no cgroup.type file; a
    # cgroup namespace's root does) may not hold processes and enable controllers for children.
    # Enabling them there would need its processes moved, which is not ours to do.
    if missing and (parent / "cgroup.type").exists() and _words(parent / "cgroup.procs"):
        return frozenset(enabled)
    for controller in sorted(missing):
        try:
            (parent / "cgroup.subtree_control").write_text(f"+{controller}")
            enabled.add(controller)
        except OSError:
            pass
    return frozenset(enabled)


def _create_v2(root: Path, name: str, memory_bytes: int, max_processes: int) -> Cgroup:
    for parent in _v2_parents(root):
        controllers = _delegated(parent)
        if not controllers:
            continue
        path = parent / name
        try:
            path.mkdir()
        except OSError:
            continue
        try:
            if "memory" in controllers:
                (path / "memory.max").write_text(str(memory_bytes))
                # memory.max caps RAM only; no swap keeps the cap the whole footprint (as v1's
                # memory.memsw.limit_in_bytes does). The file is missing without swap accounting.
                try:
                    (path / "memory.swap.max").write_text("0")
                except OSError:
                    pass
            if "pids" in controllers:
                (path / "pids.max").write_text(str(max_processes))
        except OSError:
            try:
                path.rmdir()
            except OSError:
                pass
            continue
        return CgroupV2(path, controllers)
    return Cgroup()


def describe_cgroups(root: Path | None = None) -> str:
    """For `doctor`: the layout here and which controllers a trial's cgroup gets (a probe, made and removed)."""
    root = CGROUP_ROOT if root is None else root
    version = cgroup_version(root)
    if version is None:
        return f"cgroups: no v1 memory/pids or v2 hierarchy at {root}"
    probe = create_cgroup(2**30, 64, root)
    try:
        got = sorted(probe.controllers)
        where = f" (under {probe.path.parent})" if isinstance(probe, CgroupV2) else ""
    finally:
        probe.remove()
    text = f"cgroup v{version}: " + (f"{', '.join(got)} usable{where}" if got else "no controller usable")
    missing = [c for c in CONTROLLERS if c not in got]
    if missing:
        need = ("needs root" if os.geteuid() != 0 else
                "not enabled, read-only, or (v2) only in cgroups that hold processes")
        text += f"; {', '.join(missing)}: unavailable ({need})"
    return text
