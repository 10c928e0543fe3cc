"""Run one untrusted command with hard limits.

Two levels, chosen per run and named in every record:

* ``bubblewrap`` (the default): a fresh mount namespace that shows only what a trial needs (an
  allow-listed Python view, read-only: see sandbox/pyview.py; the named mounts; a size-capped
  ``/tmp``), no network namespace peers, a PID namespace (when the sandbox's init dies the kernel
  kills every process in it, so ``setsid`` cannot escape), a cleared environment, a seccomp filter
  (sandbox/seccomp.py) and, when autoresearch runs as root, an unprivileged uid where the host
  allows it. Where bubblewrap cannot run, a run refuses (``IsolationUnavailable``) rather than
  fall back.
* ``none``, only when the user asks for it (``--isolation none``): a new session, a cleared
  environment and rlimits only. Candidate code can then read anything the user can; every record
  says so.

On both levels a throwaway cgroup (v1 or v2, ``sandbox.cgroups``) is used where this process may
make one (root on Linux): an exact memory cap with OOM detection and a process-count cap that also
lets us find and kill every process the command started, detached or not. Each result's notes say
which mechanism really capped memory and processes.

(About 700 lines on purpose: building the bubblewrap command, running it and reading back what
the kernel did to it are one contract with the kernel, and a reviewer checking an escape needs the
mounts, the namespaces, the limits and the kill path side by side.)
"""

from __future__ import annotations

import json
import os
import resource
import select
import shutil
import signal
import stat
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

from autoresearch.sandbox import seccomp
from autoresearch.sandbox.cgroups import Cgroup, create_cgroup
from autoresearch.sandbox.pyview import DEFAULT_PACKAGES, python_view

LOG_HEAD_BYTES = 16 * 1024
LOG_TAIL_BYTES = 48 * 1024


# /proc entries that write to the host kernel's global state (sysctls, sysrq, irq affinity, ...).
PROC_READ_ONLY = ("sys", "sysrq-trigger", "irq", "bus", "fs", "acpi", "scsi", "driver", "sysvipc", "tty")


class IsolationUnavailable(RuntimeError):
    """Raised when a run wants the bubblewrap sandbox and it cannot run here."""


@dataclass(frozen=True, kw_only=True)
class Mount:
    """A host path shown inside the sandbox at ``inside``."""

    host: Path
    inside: str
    writable: bool = False


@dataclass(frozen=True, kw_only=True)
class Limits:
    wall_seconds: float = 60.0
    cpu_seconds: int = 600
    memory_bytes: int = 4 * 1024**3
    max_processes: int = 64
    tmp_bytes: int = 256 * 1024**2
    max_file_bytes: int = 512 * 1024**2
    # The writable mounts together may not grow past this; a watchdog kills the sandbox.
    max_output_bytes: int = 512 * 1024**2


@dataclass(kw_only=True)
class SandboxResult:
    exit_code: int | None
    signal: int | None
    timed_out: bool
    oom: bool
    output_exceeded: bool
    wall_seconds: float
    start_seconds: float
    log_head: str
    log_tail: str
    log_bytes: int
    isolation: str
    peak_memory_bytes: int | None = None
    leftover_processes: int = 0
    notes: list[str] = field(default_factory=list)
    # With orders handed over later (a callable stdin_data): seconds from the start until they were.
    waited_seconds: float = 0.0

    @property
    def log_excerpt(self) -> str:
        if self.log_bytes <= len(self.log_head.encode()) + len(self.log_tail.encode()):
            return self.log_head + self.log_tail
        return self.log_head + f"\n[... {self.log_bytes} bytes of output in all, middle dropped ...]\n" + self.log_tail


def bubblewrap_path() -> str | None:
    return shutil.which("bwrap")


_BWRAP_WORKS: dict[str, bool] = {}
_BWRAP_ERROR: dict[str, str] = {}


def bubblewrap_works() -> bool:
    """bwrap may be installed but unusable (no user namespaces); try it once."""
    path = bubblewrap_path()
    if path is None:
        return False
    if path not in _BWRAP_WORKS:
        try:
            proc = subprocess.run(
                [path, "--unshare-all", "--die-with-parent", "--ro-bind", "/", "/", "--proc", "/proc",
                 "--dev", "/dev", "true"],
                capture_output=True, timeout=20,
            )
            _BWRAP_WORKS[path] = proc.returncode == 0
            _BWRAP_ERROR[path] = proc.stderr.decode("utf-8", "replace").strip()[-300:]
        except (OSError, subprocess.TimeoutExpired) as exc:
            _BWRAP_WORKS[path] = False
            _BWRAP_ERROR[path] = str(exc)
    return _BWRAP_WORKS[path]


# What candidate code runs as when autoresearch runs as root: nobody (uid and gid).
SANDBOX_UID = 65534
_UNPRIVILEGED: dict[str, int | None] = {}


class SandboxUnreadable(RuntimeError):
    """Something the sandbox must read is not readable by the uid it runs candidate code as."""


def unprivileged_uid() -> int | None:
    """SANDBOX_UID when autoresearch runs as root and this host lets root map it into the
    sandbox's user namespace (tried once), else None. (An ordinary user's sandbox already runs as
    that user; where the mapping fails a root sandbox stays uid 0 without capabilities.)"""
    if os.geteuid() != 0 or not bubblewrap_works():
        return None
    path = bubblewrap_path()
    if path not in _UNPRIVILEGED:
        # The real mechanism on the standard library's view: a mapping that works for `true` but not
        # for what the sandbox runs would only move the failure into every trial.
        probe, _, _ = build_command([sys.executable, "-I", "-S", "-c", "import os; print(os.getuid(), os.getgid(), "
                                     "os.getgroups())"], [], isolation="bubblewrap", limits=Limits(), env={}, cwd="/",
                                    packages=(), uid=SANDBOX_UID)
        ok = False
        try:
            proc = _popen_mapped(probe, SANDBOX_UID, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
            try:
                out, _ = proc.communicate(timeout=20)
                ok = proc.returncode == 0 and out.split() == [str(SANDBOX_UID).encode()] * 2 + [b"[]"]
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        except OSError:
            pass
        _UNPRIVILEGED[path] = SANDBOX_UID if ok else None
    return _UNPRIVILEGED[path]


def _popen_mapped(cmd: list[str], uid: int, **popen_kwargs) -> subprocess.Popen:
    """Start bubblewrap (``cmd``) with a user namespace that maps root to root, for the setup
    (binding paths under a 0700 /root needs the host's root), and ``uid`` to itself, for the
    command (_DROP_TO_UID switches to it). bubblewrap reports its child's pid on --info-fd and waits
    on --userns-block-fd while we, as root outside, write the maps."""
    info_r, info_w = os.pipe()
    block_r, block_w = os.pipe()
    try:
        cmd = [cmd[0], "--unshare-user", "--info-fd", str(info_w), "--userns-block-fd", str(block_r), *cmd[1:]]
        popen_kwargs["pass_fds"] = tuple(popen_kwargs.get("pass_fds", ())) + (info_w, block_r)
        proc = subprocess.Popen(cmd, **popen_kwargs)
    except BaseException:
        os.close(info_r)
        os.close(block_w)
        raise
    finally:
        os.close(info_w)
        os.close(block_r)
    try:
        info = b""
        deadline = time.monotonic() + 30
        while (left := deadline - time.monotonic()) > 0 and select.select([info_r], [], [], left)[0]:
            chunk = os.read(info_r, 4096)
            if not chunk:
                break
            info += chunk
        pid = int(json.loads(info)["child-pid"])
        for name in ("uid_map", "gid_map"):
            with open(f"/proc/{pid}/{name}", "w") as f:
                f.write(f"0 0 1\n{uid} {uid} 1\n")
    except (OSError, ValueError, KeyError, TypeError):
        # bubblewrap failed before reporting (its message is in the command's log) or the map was
        # refused: the command then cannot switch to uid and fails; it never runs as anything else.
        pass
    finally:
        os.close(info_r)
        try:
            os.write(block_w, b"1")
        except OSError:
            pass
        os.close(block_w)
    return proc


def _unreadable(root: str, uid: int) -> str | None:
    """The first path under root (root included) that uid, with gid uid and no other groups,
    cannot read (folders: read and search), or None. What uid owns is left out: a sandbox wrote it
    (a train phase's checkpoint folder, say), so an unreadable one is the candidate's doing, which
    its trial answers for, not a setup error that should stop the run."""
    def allowed(st: os.stat_result, want: int) -> bool:
        if st.st_uid == uid:
            return True
        bits = st.st_mode >> 3 if st.st_gid == uid else st.st_mode
        return bits & want == want

    try:
        st = os.stat(root)
    except OSError:
        return root
    if not stat.S_ISDIR(st.st_mode):
        return None if allowed(st, 4) else root
    if not allowed(st, 5):
        return root
    suspects = _not_world_readable(root)
    if suspects is not None:  # find's list is a superset (it ignores ownership): judge each here
        for path in suspects:
            try:
                st = os.lstat(path)
            except OSError:
                continue
            if stat.S_ISDIR(st.st_mode) and not allowed(st, 5) or stat.S_ISREG(st.st_mode) and not allowed(st, 4):
                return path
        return None
    for dirpath, dirnames, filenames in os.walk(root):
        for name in dirnames + filenames:
            path = os.path.join(dirpath, name)
            try:
                st = os.lstat(path)
            except OSError:
                continue
            if stat.S_ISDIR(st.st_mode) and not allowed(st, 5) or stat.S_ISREG(st.st_mode) and not allowed(st, 4):
                return path
    return None


def _not_world_readable(root: str) -> list[str] | None:
    """Folders under root that others cannot read and search, and files others cannot read, as
    find(1) lists them (torch alone is ~15k files: a Python walk costs ~2 s of every run's start,
    find a tenth of it); None where find is missing or fails, and the caller walks instead."""
    try:
        out = subprocess.run(["find", root, "(", "(", "-type", "d", "!", "-perm", "-o=rx", ")", "-o",
                              "(", "-type", "f", "!", "-perm", "-o=r", ")", ")", "-print0"],
                             capture_output=True, timeout=120)
    except (OSError, subprocess.TimeoutExpired):
        return None
    if out.returncode != 0:
        return None
    return [p.decode(errors="surrogateescape") for p in out.stdout.split(b"\0") if p]


_READABLE_VIEW: set[str] = set()  # view paths found readable once (installed files do not change under us)


def check_readable(uid: int, view_paths: list[str], mounts: list[Mount]) -> None:
    """Raise SandboxUnreadable, naming the path, when uid cannot read what the sandbox shows."""
    todo = [(p, True) for p in view_paths if p not in _READABLE_VIEW] + [(str(m.host), False) for m in mounts
                                                                         if not m.writable]
    for path, cached in todo:
        bad = _unreadable(path, uid)
        if bad is not None:
            try:
                st = os.stat(bad)
                what = f"mode {stat.filemode(st.st_mode)}, owner {st.st_uid}:{st.st_gid}"
            except OSError:
                what = "missing"
            raise SandboxUnreadable(
                f"the sandbox runs candidate code as uid {uid} (autoresearch runs as root), and uid {uid} cannot "
                f"read {bad} ({what}), which the sandbox shows. Make it world-readable (e.g. chmod -R o+rX on the "
                "folder, and a umask of 022 when creating files there) or run autoresearch as an ordinary user")
        if cached:
            _READABLE_VIEW.add(path)


def hand_over_writable(uid: int, mounts: list[Mount]) -> None:
    """Give the writable mounts (and what is in them) to uid: the sandbox writes there as uid."""
    for m in mounts:
        if not m.writable:
            continue
        os.chown(m.host, uid, uid)
        for dirpath, dirnames, filenames in os.walk(m.host):
            for name in dirnames + filenames:
                os.lchown(os.path.join(dirpath, name), uid, uid)


def install_hint() -> str:
    """The one command that installs bubblewrap on this machine (what scripts/setup.sh runs as root)."""
    sudo = "" if os.geteuid() == 0 else "sudo "
    for tool in ("apt-get", "dnf"):
        if shutil.which(tool):
            return f"{sudo}{tool} install bubblewrap"
    return "install the bubblewrap package with your package manager"


PROC_SYS = Path("/proc/sys")


def user_namespace_problem(proc_sys: Path | None = None) -> str | None:
    """Why this machine forbids the user namespaces bubblewrap needs, with the fix; None if nothing says so.

    Root may always create them unless ``user.max_user_namespaces`` is 0; the other two switches
    (Debian's and Ubuntu's) stop only unprivileged users."""
    proc_sys = PROC_SYS if proc_sys is None else proc_sys
    checks = [("user/max_user_namespaces", "0", "sudo sysctl -w user.max_user_namespaces=15000")]
    if os.geteuid() != 0:
        checks += [("kernel/unprivileged_userns_clone", "0", "sudo sysctl -w kernel.unprivileged_userns_clone=1"),
                   ("kernel/apparmor_restrict_unprivileged_userns", "1",
                    "sudo sysctl -w kernel.apparmor_restrict_unprivileged_userns=0, or an AppArmor profile for bwrap")]
    for name, off, fix in checks:
        try:
            value = (proc_sys / name).read_text().strip()
        except OSError:
            continue
        if value == off:
            return f"user namespaces are off ({name.replace('/', '.')} = {value}); enable them: {fix}"
    return None


def isolation_problem() -> str | None:
    """What stops bubblewrap from sandboxing here and how to fix it, or None when it works."""
    path = bubblewrap_path()
    if path is None:
        return f"bubblewrap is not installed; install it: {install_hint()} (or run `bash scripts/setup.sh` as root)"
    if bubblewrap_works():
        return None
    why = user_namespace_problem() or "it failed: " + (_BWRAP_ERROR.get(path) or "no error text")
    return f"bubblewrap ({path}) is installed but cannot make a sandbox here: {why}"


def isolation_level(wanted: str = "bubblewrap") -> str:
    """The level a run uses: ``bubblewrap`` when it works, else an error; ``none`` only when asked for."""
    if wanted == "none":
        return "none"
    if wanted != "bubblewrap":
        raise ValueError(f"unknown isolation level {wanted!r}")
    problem = isolation_problem()
    if problem is not None:
        raise IsolationUnavailable(
            f"refusing to run proposals without a sandbox: {problem}. Or pass `--isolation none` to run "
            "LLM-written code unsandboxed with your user's rights, knowingly (every record says so)."
        )
    return "bubblewrap"


def _mib(n: int) -> str:
    return f"{n / 2**20:g} MiB"


def limit_notes(cgroup: Cgroup, limits: Limits, *, use_rlimit_as: bool, euid: int | None = None) -> list[str]:
    """One line for memory and one for processes: the mechanism that really caps each."""
    euid = os.geteuid() if euid is None else euid
    if "memory" in cgroup.controllers:
        knob = "memory.limit_in_bytes" if cgroup.version == 1 else "memory.max"
        memory = f"memory: cgroup v{cgroup.version} {knob} {_mib(limits.memory_bytes)}"
    elif use_rlimit_as:
        memory = f"memory: RLIMIT_AS {_mib(limits.memory_bytes)} (per process, not per tree)"
    else:
        memory = "memory: NOT capped (GPU trial, no memory cgroup: RLIMIT_AS would stop CUDA from starting)"
    if "pids" in cgroup.controllers:
        processes = f"processes: cgroup v{cgroup.version} pids.max {limits.max_processes}"
    elif euid == 0:
        processes = "processes: NOT capped (running as root: the kernel ignores RLIMIT_NPROC for root)"
    else:
        processes = (f"processes: RLIMIT_NPROC {limits.max_processes} (counts every process of this user, "
                     "not only the trial's)")
    return [memory, processes]


def expected_limit_notes(limits: Limits, *, gpu: bool = False) -> list[str]:
    """What limit_notes will say for a trial started now (for `doctor`): a probe cgroup, made and removed."""
    cgroup = create_cgroup(limits.memory_bytes, limits.max_processes)
    try:
        return limit_notes(cgroup, limits, use_rlimit_as="memory" not in cgroup.controllers and not gpu)
    finally:
        cgroup.remove()


# --------------------------------------------------------------------------- command line


def _parent_dirs(dests: list[str]) -> list[str]:
    """``--dir`` arguments, mode 0755, for every folder above ``dests`` (parents first). bubblewrap
    makes the parents it needs with mode 0700, which only root could then pass through."""
    parents: set[str] = set()
    for dest in dests:
        parent = os.path.dirname(os.path.normpath(dest))
        while parent not in ("/", "/tmp", ""):  # / and /tmp exist already, with their own modes
            parents.add(parent)
            parent = os.path.dirname(parent)
    args: list[str] = []
    for parent in sorted(parents, key=lambda p: (p.count("/"), p)):
        args += ["--perms", "0755", "--dir", parent]
    return args


def _runtime_mounts(packages: tuple[str, ...], dests: list[str]) -> list[str]:
    """Read-only binds for the Python view (sandbox/pyview.py: the interpreter, its standard
    library, the system's shared libraries and only the allowed distributions), nothing else.
    What they create inside is added to ``dests``."""
    view = python_view(tuple(packages))
    dests += view.dests
    args = list(view.args)
    if os.path.isdir("/sys/devices/system/cpu"):  # CPU topology for thread pools (OpenMP, MKL read it)
        dests.append("/sys/devices/system/cpu")
        args += ["--ro-bind", "/sys/devices/system/cpu", "/sys/devices/system/cpu"]
    # Defence in depth: should a benchmark allow a package that bundles a labelled dataset, its
    # data folder is still shown empty.
    for path in masked_data_dirs():
        if any(path == s or path.startswith(s + os.sep) for s in view.sources):
            args.extend(["--size", "4096", "--tmpfs", path, "--remount-ro", path])
    return args


# Package data folders that ship labelled datasets, relative to the package folder.
MASKED_PACKAGE_DATA = {"sklearn": ("datasets/data", "datasets/descr", "datasets/images"), "mlxtend": ("data/data",)}


def masked_data_dirs() -> list[str]:
    """Existing folders of MASKED_PACKAGE_DATA for this interpreter (found without importing)."""
    import importlib.util

    found = []
    for package, subdirs in MASKED_PACKAGE_DATA.items():
        try:
            spec = importlib.util.find_spec(package)
        except (ImportError, ValueError):
            continue
        for loc in (spec.submodule_search_locations or []) if spec else []:
            for sub in subdirs:
                path = os.path.join(loc, sub)
                if os.path.isdir(path):
                    found.append(path)
    return sorted(set(found))


def _python_sandbox_env(extra: dict[str, str]) -> dict[str, str]:
    env = {
        "PATH": "/usr/local/bin:/usr/bin:/bin",
        "HOME": "/tmp",
        "TMPDIR": "/tmp",
        "LANG": "C.UTF-8",
        "PYTHONDONTWRITEBYTECODE": "1",
        "PYTHONNOUSERSITE": "1",
        "PYTHONHASHSEED": "0",
        "PYTHONUNBUFFERED": "1",
    }
    # Kept from the host because older OpenBLAS builds compute wrong results without them.
    for key in ("OPENBLAS_CORETYPE", "OPENBLAS_L2_SIZE"):
        if key in os.environ:
            env[key] = os.environ[key]
    env.update(extra)
    return env


# Run inside the sandbox before the command when it is to run as an unprivileged uid: bubblewrap
# sets up the view as root (it must reach paths under e.g. a 0700 /root), then this drops to the
# uid (and with it every capability) and runs the command. It runs after the seccomp filter is in
# place and before any candidate code exists.
_DROP_TO_UID = ("import os, sys; uid, gid = int(sys.argv[1]), int(sys.argv[2]); os.setgroups([]); "
                "os.setresgid(gid, gid, gid); os.setresuid(uid, uid, uid); os.execvp(sys.argv[3], sys.argv[3:])")


def build_command(argv: list[str], mounts: list[Mount], *, isolation: str, limits: Limits,
                  env: dict[str, str], cwd: str, devices: list[str] = (),
                  packages: tuple[str, ...] = DEFAULT_PACKAGES, uid: int | None = None,
                  fds: list[int] | None = None) -> tuple[list[str], dict[str, str], str | None]:
    """Returns (argv to exec, environment, host cwd).

    ``packages``: the distributions the sandbox shows (plus their requirements; sandbox/pyview.py).
    ``uid``: run the command as this uid and gid (run_sandboxed maps it into the sandbox's user
    namespace; see ``unprivileged_uid``). ``fds``: the seccomp filter is opened here and its
    descriptor appended, for the caller to pass to bubblewrap and close; without it the command
    has no filter (a command to look at, not to run)."""
    full_env = _python_sandbox_env(env)
    if isolation == "bubblewrap":
        cmd = [bubblewrap_path() or "bwrap", "--unshare-all", "--die-with-parent", "--new-session",
               "--clearenv", "--hostname", "sandbox", "--cap-drop", "ALL"]
        if uid is not None:
            cmd += ["--cap-add", "CAP_SETUID", "--cap-add", "CAP_SETGID"]  # for _DROP_TO_UID only
        # /tmp first: the Python runtime may itself live under /tmp (a CI clone's venv), and a later
        # tmpfs would hide it. Mode 1777: writable whatever uid the command runs as.
        cmd += ["--perms", "1777", "--size", str(limits.tmp_bytes), "--tmpfs", "/tmp"]
        dests = [m.inside for m in mounts] + list(devices)
        runtime = _runtime_mounts(tuple(packages), dests)
        cmd += _parent_dirs(dests) + runtime
        # /dev/shm: bubblewrap's own is root's; a fresh one any uid can write (memory: charged to
        # the memory cgroup like any page the sandbox uses).
        cmd += ["--proc", "/proc", "--dev", "/dev", "--perms", "1777", "--tmpfs", "/dev/shm"]
        # The sandbox's root is the host's root with capabilities dropped, and sysctls check only the
        # file mode: bwrap does not always cover /proc/sys, so cover it (and its kin) read-only here.
        for sub in PROC_READ_ONLY:
            cmd += ["--ro-bind-try", f"/proc/{sub}", f"/proc/{sub}"]
        for dev in devices:
            cmd += ["--dev-bind", dev, dev]
        if devices:
            # The CUDA driver reads PCI topology and module state from /sys; shown read-only, as
            # container runtimes do. (CPU trials see only /sys/devices/system/cpu.)
            cmd += ["--ro-bind", "/sys", "/sys"]
        for m in mounts:
            cmd += ["--bind" if m.writable else "--ro-bind", str(m.host), m.inside]
        for key, value in full_env.items():
            cmd += ["--setenv", key, value]
        if fds is not None:
            filter_fd = seccomp.filter_fd()
            if filter_fd is not None:
                fds.append(filter_fd)
                cmd += ["--seccomp", str(filter_fd)]
        if uid is not None:
            argv = [sys.executable, "-I", "-S", "-c", _DROP_TO_UID, str(uid), str(uid), *argv]
        # The sandbox's own root is a tmpfs; make it read-only so that only the size-capped /tmp
        # and the named writable mounts take writes.
        cmd += ["--remount-ro", "/", "--chdir", cwd, "--"]
        return cmd + argv, {}, None
    # No isolation: translate the inside paths back to host paths.
    mapping = sorted(((m.inside, str(m.host)) for m in mounts), key=lambda kv: -len(kv[0]))

    def host_path(arg: str) -> str:
        for inside, host in mapping:
            if arg == inside or arg.startswith(inside + "/"):
                return host + arg[len(inside):]
        return arg

    full_env["TMPDIR"] = full_env["HOME"] = env.get("TMPDIR", "/tmp")
    return [host_path(a) for a in argv], {k: host_path(v) for k, v in full_env.items()}, host_path(cwd)


def _kernel_notes(isolation: str, uid: int | None, *, filtered: bool) -> list[str]:
    """What the record must say where the sandbox is weaker than SECURITY.md's default."""
    if isolation != "bubblewrap":
        return []
    notes = []
    if uid is None and os.geteuid() == 0:
        notes.append("candidate code ran as root (uid 0, no capabilities): this host does not let root map an "
                     f"unprivileged uid ({SANDBOX_UID}) into the sandbox's user namespace")
    if not filtered:
        notes.append(f"no seccomp filter: none is written for this architecture ({os.uname().machine})")
    return notes


def _dir_size(paths: list[Path]) -> int:
    total = 0
    for root in paths:
        for dirpath, _dirs, files in os.walk(root):
            for name in files:
                try:
                    total += os.lstat(os.path.join(dirpath, name)).st_size
                except OSError:
                    pass
    return total


def run_sandboxed(argv: list[str], *, mounts: list[Mount], limits: Limits, isolation: str,
                  env: dict[str, str] | None = None, cwd: str = "/tmp",
                  devices: list[str] = (), stdin_data: bytes | Callable[[], bytes] | None = None,
                  pass_fds: tuple[int, ...] = (), packages: tuple[str, ...] = DEFAULT_PACKAGES,
                  wall_after_orders: Callable[[], float] | None = None) -> SandboxResult:
    """Run argv (inside paths) under isolation with limits; never raises for the command's own failure.

    ``stdin_data`` is written to the command's stdin (then closed): how the trusted side hands a
    harness its instructions without putting them in argv or the environment. A callable is called
    (in a feeding thread) once the command runs and may block: the command starts, and warms up,
    before its instructions exist (the predict phase starts while its checkpoints are trained). ``pass_fds`` are
    host file descriptors kept open, with the same numbers, inside the sandbox (e.g. a results
    file the harness writes to and no path inside the sandbox names). ``packages``: the Python
    distributions the sandbox shows, with their requirements (sandbox/pyview.py).
    ``wall_after_orders`` (with a callable ``stdin_data``): the wall limit then counts from the
    moment the orders were handed over, and is what this returns at that moment; the wait before
    is the caller's (a sandbox started ahead of its work waits, using no CPU, until it has some).

    Raises SandboxUnreadable (before starting anything) when the sandbox runs as an unprivileged
    uid that cannot read what it must show, and pyview.PackageNotInstalled for a missing package."""
    t_start = time.monotonic()
    uid = unprivileged_uid() if isolation == "bubblewrap" else None
    if uid is not None:
        check_readable(uid, list(python_view(tuple(packages)).sources), mounts)
        hand_over_writable(uid, mounts)
    filter_fds: list[int] = []
    cmd, proc_env, host_cwd = build_command(argv, mounts, isolation=isolation, limits=limits,
                                            env=env or {}, cwd=cwd, devices=list(devices), packages=tuple(packages),
                                            uid=uid, fds=filter_fds)
    cgroup = create_cgroup(limits.memory_bytes, limits.max_processes)
    # Without a memory cgroup, RLIMIT_AS caps memory, except on a GPU: CUDA reserves far more
    # virtual address space than it uses, and fails to initialise under any realistic RLIMIT_AS.
    use_rlimit_as = "memory" not in cgroup.controllers and not devices

    def preexec() -> None:  # runs in the child between fork and exec
        os.setsid()
        for procs in cgroup.procs_files:
            with open(procs, "w") as f:
                f.write(str(os.getpid()))
        resource.setrlimit(resource.RLIMIT_CPU, (limits.cpu_seconds, limits.cpu_seconds + 5))
        resource.setrlimit(resource.RLIMIT_FSIZE, (limits.max_file_bytes, limits.max_file_bytes))
        resource.setrlimit(resource.RLIMIT_CORE, (0, 0))
        if use_rlimit_as:
            resource.setrlimit(resource.RLIMIT_AS, (limits.memory_bytes, limits.memory_bytes))
        if "pids" not in cgroup.controllers:  # holds for an ordinary user only (see limit_notes)
            resource.setrlimit(resource.RLIMIT_NPROC, (limits.max_processes, limits.max_processes))

    # Under an unprivileged uid RLIMIT_NPROC holds (the kernel ignores it only for root).
    notes = limit_notes(cgroup, limits, use_rlimit_as=use_rlimit_as, euid=uid)
    popen_kwargs = dict(stdin=subprocess.DEVNULL if stdin_data is None else subprocess.PIPE,
                        stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                        env=proc_env if isolation != "bubblewrap" else {"PATH": os.environ.get("PATH", "/usr/bin:/bin")},
                        cwd=host_cwd, preexec_fn=preexec, close_fds=True, pass_fds=tuple(pass_fds) + tuple(filter_fds))
    try:
        proc = _popen_mapped(cmd, uid, **popen_kwargs) if uid is not None else subprocess.Popen(cmd, **popen_kwargs)
    finally:
        for fd in filter_fds:
            os.close(fd)
    start_seconds = time.monotonic() - t_start
    notes.extend(_kernel_notes(isolation, uid, filtered=bool(filter_fds)))
    fed_at: list[float] = []  # when the orders were handed over
    if stdin_data is not None:
        threading.Thread(target=_feed_stdin, args=(proc, stdin_data, fed_at), daemon=True).start()

    head = bytearray()
    tail = bytearray()
    total = [0]

    def reader() -> None:
        assert proc.stdout is not None
        while True:
            chunk = proc.stdout.read1(65536) if hasattr(proc.stdout, "read1") else proc.stdout.read(65536)
            if not chunk:
                break
            total[0] += len(chunk)
            if len(head) < LOG_HEAD_BYTES:
                take = LOG_HEAD_BYTES - len(head)
                head.extend(chunk[:take])
                chunk = chunk[take:]
            if chunk:
                tail.extend(chunk)
                if len(tail) > 2 * LOG_TAIL_BYTES:
                    del tail[: len(tail) - LOG_TAIL_BYTES]

    thread = threading.Thread(target=reader, daemon=True)
    thread.start()

    writable = [m.host for m in mounts if m.writable]
    timed_out = output_exceeded = False
    deadline = t_start + limits.wall_seconds if wall_after_orders is None else float("inf")
    next_size_check = 0.0
    while True:
        try:
            proc.wait(timeout=0.05)
            break
        except subprocess.TimeoutExpired:
            pass
        now = time.monotonic()
        if deadline == float("inf") and fed_at:
            deadline = fed_at[0] + wall_after_orders()
        if now > deadline:
            timed_out = True
            break
        if writable and now >= next_size_check:
            next_size_check = now + 0.25
            if _dir_size(writable) > limits.max_output_bytes:
                output_exceeded = True
                break
    if timed_out or output_exceeded:
        _kill_tree(proc)
    wall = time.monotonic() - t_start
    # Whatever the command left behind (detached daemons included) dies with it.
    leftovers = cgroup.kill_all() if cgroup.active else 0
    try:
        os.killpg(proc.pid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        pass
    proc.wait()
    thread.join(timeout=5)
    if proc.stdout:
        proc.stdout.close()
    oom = cgroup.oom_killed()
    peak = cgroup.peak_memory()
    cgroup.remove()
    if leftovers:
        notes.append(f"{leftovers} process(es) still running after the command ended were killed")

    code = proc.returncode
    return SandboxResult(
        exit_code=code if code is not None and code >= 0 else None,
        signal=-code if code is not None and code < 0 else None,
        timed_out=timed_out, oom=oom, output_exceeded=output_exceeded,
        wall_seconds=wall, start_seconds=start_seconds,
        log_head=head.decode("utf-8", "replace"), log_tail=tail[-LOG_TAIL_BYTES:].decode("utf-8", "replace"),
        log_bytes=total[0], isolation=isolation, peak_memory_bytes=peak, leftover_processes=leftovers,
        notes=notes, waited_seconds=(fed_at[0] - t_start) if fed_at and callable(stdin_data) else 0.0,
    )


def _feed_stdin(proc: subprocess.Popen, data: bytes | Callable[[], bytes], fed_at: list[float]) -> None:
    """Write the command's instructions and close its stdin; a command that never reads them (or
    dies first) only ends the write, never the caller. ``fed_at`` gets the moment they exist."""
    assert proc.stdin is not None
    try:
        payload = data() if callable(data) else data
        fed_at.append(time.monotonic())
        proc.stdin.write(payload)
    except (BrokenPipeError, OSError, ValueError):
        pass
    finally:
        try:
            proc.stdin.close()
        except (BrokenPipeError, OSError):
            pass


def _kill_tree(proc: subprocess.Popen) -> None:
    try:
        os.killpg(proc.pid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        pass
    try:
        proc.kill()
    except ProcessLookupError:
        pass
