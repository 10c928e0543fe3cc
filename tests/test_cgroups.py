"""cgroups for sandboxed commands: v2 against a fake tree laid out like /sys/fs/cgroup (this host has
no usable cgroup v2), v1 for real where this process may write it, and the notes that say which
limits really held."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from autoresearch.sandbox import cgroups
from autoresearch.sandbox.cgroups import Cgroup, CgroupV1, CgroupV2, create_cgroup, sweep_stale_cgroups
from autoresearch.sandbox.isolation import Limits, limit_notes, run_sandboxed

GIB3 = 3 * 2**30


def fake_v2(tmp_path: Path, monkeypatch, *, own: str = "/", root_subtree: str = "", root_is_true_root: bool = True,
            own_subtree: str = "", own_procs: str = "") -> Path:
    """A unified hierarchy: the root offers memory and pids; `own` is this process's cgroup."""
    root = tmp_path / "cgroup"
    root.mkdir()
    (root / "cgroup.controllers").write_text("cpuset cpu io memory hugetlb pids rdma misc\n")
    (root / "cgroup.subtree_control").write_text(root_subtree)
    (root / "cgroup.procs").write_text("1\n")
    if not root_is_true_root:  # a cgroup namespace's root is an ordinary cgroup: it has cgroup.type
        (root / "cgroup.type").write_text("domain\n")
    if own != "/":
        d = root / own.lstrip("/")
        d.mkdir(parents=True)
        (d / "cgroup.type").write_text("domain\n")
        (d / "cgroup.controllers").write_text("memory pids\n")
        (d / "cgroup.subtree_control").write_text(own_subtree)
        (d / "cgroup.procs").write_text(own_procs)
    self_cgroup = tmp_path / "self-cgroup"
    self_cgroup.write_text(f"0::{own}\n")
    monkeypatch.setattr(cgroups, "CGROUP_ROOT", root)
    monkeypatch.setattr(cgroups, "SELF_CGROUP", self_cgroup)
    return root


def children(parent: Path) -> list[Path]:
    return sorted(parent.glob("autoresearch-*"))


# --------------------------------------------------------------------------- v2, fake tree


def test_v2_child_gets_limits_and_joining_file(tmp_path, monkeypatch):
    root = fake_v2(tmp_path, monkeypatch, root_subtree="memory pids")
    cg = create_cgroup(GIB3, 64)
    assert isinstance(cg, CgroupV2) and cg.version == 2 and cg.controllers == {"memory", "pids"}
    assert children(root) == [cg.path]
    assert (cg.path / "memory.max").read_text() == str(GIB3)
    assert (cg.path / "memory.swap.max").read_text() == "0"  # the cap is the whole footprint, as memsw on v1
    assert (cg.path / "pids.max").read_text() == "64"
    assert cg.procs_files == [str(cg.path / "cgroup.procs")]


def test_v2_enables_missing_controllers_at_the_true_root(tmp_path, monkeypatch):
    root = fake_v2(tmp_path, monkeypatch, root_subtree="memory")
    cg = create_cgroup(GIB3, 64)
    assert cg.controllers == {"memory", "pids"}
    assert (root / "cgroup.subtree_control").read_text() == "+pids"  # only what was missing was written


def test_v2_never_enables_controllers_in_a_cgroup_holding_processes(tmp_path, monkeypatch):
    """No internal processes: our own cgroup holds processes, so its children cannot get controllers
    enabled; the child goes under the root, and our own cgroup's subtree_control is left alone."""
    root = fake_v2(tmp_path, monkeypatch, own="/system.slice/job.service", own_procs=f"{os.getpid()}\n",
                   root_subtree="memory pids")
    own = root / "system.slice" / "job.service"
    cg = create_cgroup(GIB3, 64)
    assert cg.controllers == {"memory", "pids"} and cg.path.parent == root
    assert (own / "cgroup.subtree_control").read_text() == "" and children(own) == []


def test_v2_uses_own_cgroup_where_it_delegates_controllers(tmp_path, monkeypatch):
    root = fake_v2(tmp_path, monkeypatch, own="/autoresearch.slice", own_subtree="memory pids")
    cg = create_cgroup(GIB3, 64)
    assert cg.path.parent == root / "autoresearch.slice" and children(root) == []


def test_v2_namespace_root_with_processes_gives_no_cgroup(tmp_path, monkeypatch):
    """In a container's cgroup namespace the visible root is an ordinary cgroup holding our
    processes: nothing may be enabled there, so there is no cgroup (and rlimits take over)."""
    root = fake_v2(tmp_path, monkeypatch, root_is_true_root=False)
    cg = create_cgroup(GIB3, 64)
    assert type(cg) is Cgroup and not cg.active and cg.procs_files == []
    assert (root / "cgroup.subtree_control").read_text() == "" and children(root) == []


def test_v2_only_pids_delegated(tmp_path, monkeypatch):
    root = fake_v2(tmp_path, monkeypatch, own="/delegated", own_subtree="pids", root_is_true_root=False)
    (root / "cgroup.controllers").write_text("pids\n")
    (root / "delegated" / "cgroup.controllers").write_text("pids\n")
    cg = create_cgroup(GIB3, 64)
    assert cg.controllers == {"pids"} and not (cg.path / "memory.max").exists()
    assert limit_notes(cg, Limits(memory_bytes=GIB3), use_rlimit_as=True) == [
        "memory: RLIMIT_AS 3072 MiB (per process, not per tree)", "processes: cgroup v2 pids.max 64"]


def test_v2_oom_and_peak_memory(tmp_path):
    path = tmp_path / "cg"
    path.mkdir()
    cg = CgroupV2(path, frozenset({"memory", "pids"}))
    assert not cg.oom_killed() and cg.peak_memory() is None  # no memory.events yet; memory.peak is 5.19+
    (path / "memory.events").write_text("low 0\nhigh 0\nmax 12\noom 1\noom_kill 0\noom_group_kill 0\n")
    assert not cg.oom_killed()  # hitting the limit is not an OOM kill
    (path / "memory.events").write_text("low 0\nhigh 0\nmax 40\noom 2\noom_kill 1\noom_group_kill 0\n")
    (path / "memory.peak").write_text("123456789\n")
    assert cg.oom_killed() and cg.peak_memory() == 123456789
    assert not CgroupV2(path, frozenset({"pids"})).oom_killed()


@pytest.fixture
def sleeper():
    proc = subprocess.Popen(["sleep", "30"])
    yield proc
    proc.kill()
    proc.wait()


def test_v2_kill_uses_cgroup_kill_where_present(tmp_path, sleeper):
    path = tmp_path / "cg"
    path.mkdir()
    (path / "cgroup.procs").write_text(f"{sleeper.pid}\n")
    (path / "cgroup.kill").write_text("0")
    assert CgroupV2(path, frozenset({"pids"})).kill_all() == 1
    # One write to cgroup.kill, no signal of our own (this fake kernel does nothing with it).
    assert (path / "cgroup.kill").read_text() == "1" and sleeper.poll() is None


def test_v2_kill_signals_each_process_without_cgroup_kill(tmp_path, sleeper):
    path = tmp_path / "cg"
    path.mkdir()
    (path / "cgroup.procs").write_text(f"{sleeper.pid}\n")
    assert CgroupV2(path, frozenset({"pids"})).kill_all() == 1
    assert sleeper.wait(timeout=5) == -9


def test_v2_sweep_removes_only_old_empty_cgroups(tmp_path, monkeypatch):
    root = fake_v2(tmp_path, monkeypatch, own="/job.slice", own_subtree="memory pids")
    old = time.time() - 3600
    stale_root, stale_own, busy, fresh = (root / "autoresearch-aaaa", root / "job.slice" / "autoresearch-bbbb",
                                          root / "autoresearch-cccc", root / "autoresearch-dddd")
    for d in (stale_root, stale_own, busy, fresh):
        d.mkdir()
    (busy / "cgroup.procs").write_text("4242\n")
    for d in (stale_root, stale_own, busy):
        os.utime(d, (old, old))
    assert sweep_stale_cgroups(root) == 2
    assert not stale_root.exists() and not stale_own.exists() and busy.exists() and fresh.exists()


def test_run_sandboxed_joins_a_v2_cgroup_and_says_so(tmp_path, monkeypatch):
    """The child writes its own pid into the cgroup before exec; the notes name the v2 knobs."""
    root = fake_v2(tmp_path, monkeypatch, root_subtree="memory pids")
    # This fake kernel never empties cgroup.procs: killing "what is left" would signal a reaped pid.
    monkeypatch.setattr(CgroupV2, "kill_all", lambda self: 0)
    res = run_sandboxed([sys.executable, "-c", "import os; print('PID', os.getpid())"], mounts=[],
                        limits=Limits(wall_seconds=20, memory_bytes=GIB3, max_processes=64), isolation="none",
                        cwd=str(tmp_path))
    assert res.exit_code == 0, res.log_excerpt
    (cg,) = children(root)
    assert (cg / "cgroup.procs").read_text().strip() in res.log_excerpt
    assert res.notes[:2] == ["memory: cgroup v2 memory.max 3072 MiB", "processes: cgroup v2 pids.max 64"]


# --------------------------------------------------------------------------- notes, each branch


def fake_v1(tmp_path: Path) -> CgroupV1:
    root = tmp_path / "v1"
    for c in ("memory", "pids"):
        (root / c).mkdir(parents=True)
        (root / c / "cgroup.procs").write_text("")
    return CgroupV1(root, "autoresearch-test", GIB3, 64)


@pytest.mark.parametrize("case, expected", [
    ("v2", ["memory: cgroup v2 memory.max 3072 MiB", "processes: cgroup v2 pids.max 64"]),
    ("v1", ["memory: cgroup v1 memory.limit_in_bytes 3072 MiB", "processes: cgroup v1 pids.max 64"]),
    ("none-root", ["memory: RLIMIT_AS 3072 MiB (per process, not per tree)",
                   "processes: NOT capped (running as root: the kernel ignores RLIMIT_NPROC for root)"]),
    ("none-user", ["memory: RLIMIT_AS 3072 MiB (per process, not per tree)",
                   "processes: RLIMIT_NPROC 64 (counts every process of this user, not only the trial's)"]),
    ("none-gpu", ["memory: NOT capped (GPU trial, no memory cgroup: RLIMIT_AS would stop CUDA from starting)",
                  "processes: NOT capped (running as root: the kernel ignores RLIMIT_NPROC for root)"]),
])
def test_limit_notes_name_the_mechanism_that_holds(tmp_path, case, expected):
    limits = Limits(memory_bytes=GIB3, max_processes=64)
    cg = {"v2": CgroupV2(tmp_path, frozenset({"memory", "pids"})), "v1": fake_v1(tmp_path)}.get(case, Cgroup())
    assert cg.active == (case in ("v1", "v2"))
    notes = limit_notes(cg, limits, use_rlimit_as=case in ("none-root", "none-user"),
                        euid=1000 if case == "none-user" else 0)
    assert notes == expected


def test_without_cgroups_as_root_the_process_cap_is_not_claimed(tmp_path, monkeypatch):
    """The case that used to claim RLIMIT_NPROC: no cgroups, running as root (as here)."""
    if os.geteuid() != 0:
        pytest.skip("needs root: an ordinary user's RLIMIT_NPROC does hold")
    monkeypatch.setattr(cgroups, "CGROUP_ROOT", tmp_path / "no-cgroups")
    res = run_sandboxed([sys.executable, "-c", "pass"], mounts=[], isolation="none", cwd=str(tmp_path),
                        limits=Limits(wall_seconds=20, memory_bytes=2**31, max_processes=64))
    assert res.notes[:2] == ["memory: RLIMIT_AS 2048 MiB (per process, not per tree)",
                             "processes: NOT capped (running as root: the kernel ignores RLIMIT_NPROC for root)"]


# --------------------------------------------------------------------------- v1, for real


def _real_v1() -> None:
    probe = create_cgroup(2**30, 8)
    try:
        if probe.version != 1 or probe.controllers != {"memory", "pids"}:
            pytest.skip("needs writable cgroup v1 memory and pids controllers (root on a v1 host)")
    finally:
        probe.remove()


def test_v1_for_real_caps_processes_and_memory(tmp_path):
    _real_v1()
    forks = ("import subprocess, sys\nok = 0\nprocs = []\nfor _ in range(20):\n    try:\n"
             "        procs.append(subprocess.Popen(['sleep', '5'])); ok += 1\n    except OSError:\n        pass\n"
             "print('STARTED', ok)\n")
    res = run_sandboxed([sys.executable, "-c", forks], mounts=[], isolation="none", cwd=str(tmp_path),
                        limits=Limits(wall_seconds=30, memory_bytes=2**30, max_processes=8))
    assert res.notes[:2] == ["memory: cgroup v1 memory.limit_in_bytes 1024 MiB", "processes: cgroup v1 pids.max 8"]
    started = int(res.log_excerpt.split("STARTED")[1].split()[0])
    assert started < 8, res.log_excerpt  # python itself is one of the 8
    assert res.leftover_processes >= started  # the sleeps outlived python and were killed

    hog = "x = bytearray(600 * 2**20)\nx[::4096] = b'1' * len(x[::4096])\nprint('ALLOCATED')\n"
    res = run_sandboxed([sys.executable, "-c", hog], mounts=[], isolation="none", cwd=str(tmp_path),
                        limits=Limits(wall_seconds=30, memory_bytes=200 * 2**20, max_processes=8))
    assert res.oom and "ALLOCATED" not in res.log_excerpt, res.log_excerpt
    assert res.peak_memory_bytes is not None and res.peak_memory_bytes > 100 * 2**20


def test_v1_cgroups_are_removed_after_the_command(tmp_path):
    _real_v1()
    script = "print(open('/proc/self/cgroup').read())"
    res = run_sandboxed([sys.executable, "-c", script], mounts=[], isolation="none", cwd=str(tmp_path),
                        limits=Limits(wall_seconds=20, memory_bytes=2**30, max_processes=8))
    names = {line.split(":")[2].strip("/") for line in res.log_excerpt.splitlines()
             if line.split(":")[1:2] in (["memory"], ["pids"])}
    assert len(names) == 1 and next(iter(names)).startswith("autoresearch-"), res.log_excerpt
    (name,) = names
    assert not (cgroups.CGROUP_ROOT / "memory" / name).exists() and not (cgroups.CGROUP_ROOT / "pids" / name).exists()
