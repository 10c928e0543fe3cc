"""Kernel state is off limits inside the sandbox: the seccomp filter (sandbox/seccomp.py)."""

import errno
import json
import os
import re
import sys
import textwrap
import uuid
from pathlib import Path

import pytest

from autoresearch.sandbox import seccomp
from autoresearch.sandbox.isolation import Limits, Mount, bubblewrap_works, run_sandboxed

ARCH = seccomp.native_arch()
needs_bwrap = pytest.mark.skipif(not bubblewrap_works(), reason="bubblewrap is not usable on this machine")
needs_filter = pytest.mark.skipif(ARCH is None, reason="no seccomp table for this architecture")


def sandboxed(code: str, tmp: Path, *, wall: float = 60.0):
    out = tmp / "out"
    out.mkdir(exist_ok=True)
    script = tmp / "snippet"
    script.mkdir(exist_ok=True)
    (script / "main.py").write_text(textwrap.dedent(code))
    return run_sandboxed([sys.executable, "-I", "/sandbox/code/main.py"],
                         mounts=[Mount(host=script, inside="/sandbox/code"), Mount(host=out, inside="/sandbox/out", writable=True)],
                         limits=Limits(wall_seconds=wall), isolation="bubblewrap", cwd="/sandbox/code")


def results(res) -> dict:
    line = next((x for x in res.log_excerpt.splitlines() if x.startswith("RESULT ")), None)
    assert line is not None, res.log_excerpt
    return json.loads(line[len("RESULT "):])


# Each probe returns 0/positive on success, or -errno. The numbers come from the filter's own table,
# which test_tables_match_kernel_headers checks.
PROBES = """
import ctypes, json, os
libc = ctypes.CDLL(None, use_errno=True)
libc.syscall.restype = ctypes.c_long
NR = {table}

def call(name, *args):
    r = libc.syscall(ctypes.c_long(NR[name]), *[ctypes.c_long(a) if isinstance(a, int) else a for a in args])
    return r if r >= 0 else -ctypes.get_errno()
"""


@needs_bwrap
@needs_filter
def test_keyring_is_out_of_reach_and_the_host_keyring_unchanged(tmp_path):
    desc = f"autoresearch-probe-{uuid.uuid4().hex[:12]}"
    res = sandboxed(PROBES.format(table=seccomp.SYSCALLS[ARCH]) + f"""
KEY_SPEC_USER_KEYRING = -4
out = {{}}
out["add_key"] = call("add_key", b"user", {desc.encode()!r}, b"labels", 6, KEY_SPEC_USER_KEYRING)
out["keyctl"] = call("keyctl", 0, KEY_SPEC_USER_KEYRING, 0)  # KEYCTL_GET_KEYRING_ID
out["request_key"] = call("request_key", b"user", {desc.encode()!r}, None, 0)
print("RESULT", json.dumps(out))
""", tmp_path)
    got = results(res)
    try:
        assert got == {k: -errno.EPERM for k in got}, f"keyring calls must fail with EPERM, got {got}"
        keys = Path("/proc/keys").read_text() if Path("/proc/keys").exists() else ""
        assert desc not in keys, "the sandbox left a key in the host's keyring"
    finally:
        if got.get("add_key", -1) > 0:  # today's code: take the key out of the host's keyring again
            import ctypes
            libc = ctypes.CDLL(None, use_errno=True)
            libc.syscall(ctypes.c_long(seccomp.SYSCALLS[ARCH]["keyctl"]), ctypes.c_long(3), ctypes.c_long(got["add_key"]))


@needs_bwrap
@needs_filter
def test_kernel_state_calls_fail_with_eperm(tmp_path):
    res = sandboxed(PROBES.format(table=seccomp.SYSCALLS[ARCH]) + """
out = {}
out["ptrace"] = call("ptrace", 0, 0, 0, 0)                      # PTRACE_TRACEME
out["unshare"] = call("unshare", 0x10000000)                    # CLONE_NEWUSER
out["mount"] = call("mount", b"none", b"/tmp", b"tmpfs", 0, None)
attr = ctypes.create_string_buffer(128)
out["bpf"] = call("bpf", 0, attr, 128)                           # BPF_MAP_CREATE
out["perf_event_open"] = call("perf_event_open", attr, 0, -1, -1, 0)
out["userfaultfd"] = call("userfaultfd", 1)                      # UFFD_USER_MODE_ONLY
out["shmget"] = call("shmget", 0, 4096, 0o1600)                  # IPC_PRIVATE, IPC_CREAT | 0600
out["msgget"] = call("msgget", 0, 0o1600)
out["semget"] = call("semget", 0, 1, 0o1600)
out["setns"] = call("setns", 0, 0)
out["kcmp"] = call("kcmp", os.getpid(), os.getpid(), 0, 0, 0)
out["io_uring_setup"] = call("io_uring_setup", 4, attr)
out["mq_open"] = call("mq_open", b"probe", 0o100 | 2, 0o600, None)
out["fsopen"] = call("fsopen", b"tmpfs", 0)
# clone with a namespace flag: denied; the child (if any) leaves at once
r = call("clone", 0x10000000 | 17, 0, 0, 0, 0)                   # CLONE_NEWUSER | SIGCHLD
if r == 0:
    os._exit(0)
out["clone_newuser"] = r
out["clone3"] = call("clone3", attr, 88)
print("RESULT", json.dumps(out))
""", tmp_path)
    got = results(res)
    expected = {k: -errno.EPERM for k in got}
    expected["clone3"] = -errno.ENOSYS
    assert got == expected, got


@needs_bwrap
@needs_filter
@pytest.mark.skipif(ARCH != "x86_64", reason="x32 is an x86_64 ABI")
def test_other_abis_kill_the_process(tmp_path):
    res = sandboxed("""
import ctypes, os
pid = os.fork()
if pid == 0:
    libc = ctypes.CDLL(None)
    libc.syscall(ctypes.c_long(0x40000000 | 39))   # x32 getpid
    os._exit(0)
_, status = os.waitpid(pid, 0)
print("RESULT", {"signal": os.WTERMSIG(status) if os.WIFSIGNALED(status) else None}.__repr__().replace("'", '"').replace("None", "null"))
""", tmp_path)
    assert results(res) == {"signal": 31}  # SIGSYS


@needs_bwrap
def test_threads_fork_and_torch_training_still_work(tmp_path):
    res = sandboxed("""
import json, os, threading, subprocess, sys
import torch
box = []
t = threading.Thread(target=lambda: box.append(sum(range(10))))
t.start(); t.join()
pid = os.fork()
if pid == 0:
    os._exit(7)
_, status = os.waitpid(pid, 0)
child = subprocess.run([sys.executable, "-I", "-c", "print(6 * 7)"], capture_output=True, text=True).stdout.strip()
torch.manual_seed(0)
torch.set_num_threads(2)
x, y = torch.randn(64, 8), torch.randint(0, 2, (64,))
model = torch.nn.Linear(8, 2)
opt = torch.optim.SGD(model.parameters(), lr=0.1)
losses = []
for _ in range(20):
    opt.zero_grad()
    loss = torch.nn.functional.cross_entropy(model(x), y)
    loss.backward(); opt.step(); losses.append(loss.item())
print("RESULT", json.dumps({"thread": box, "fork": os.WEXITSTATUS(status), "subprocess": child,
                            "trained": losses[-1] < losses[0]}))
""", tmp_path, wall=120)
    assert results(res) == {"thread": [45], "fork": 7, "subprocess": "42", "trained": True}


def _header_numbers(path: Path) -> dict[str, int]:
    return {m.group(1): int(m.group(2)) for m in re.finditer(r"#define __NR_(\w+)\s+(\d+)\b", path.read_text())}


@pytest.mark.parametrize("arch,header", [("x86_64", "/usr/include/x86_64-linux-gnu/asm/unistd_64.h"),
                                         ("x86_64", "/usr/include/asm/unistd_64.h"),
                                         ("aarch64", "/usr/include/asm-generic/unistd.h")])
def test_tables_match_kernel_headers(arch, header):
    if not Path(header).exists():
        pytest.skip(f"{header} is not installed")
    known = _header_numbers(Path(header))
    checked = {name: nr for name, nr in seccomp.SYSCALLS[arch].items() if name in known}
    assert len(checked) > 0.8 * len(seccomp.SYSCALLS[arch]), "the header names too few of the table's calls"
    assert checked == {name: known[name] for name in checked}


def test_filter_denies_the_docker_floor_on_both_architectures():
    docker_floor = {"keyctl", "add_key", "request_key", "mount", "umount2", "pivot_root", "ptrace", "bpf",
                    "perf_event_open", "userfaultfd", "unshare", "setns", "kexec_load", "kexec_file_load",
                    "init_module", "finit_module", "delete_module", "reboot", "swapon", "swapoff", "acct",
                    "settimeofday", "clock_settime", "clock_adjtime", "adjtimex", "sethostname", "setdomainname",
                    "lookup_dcookie", "name_to_handle_at", "open_by_handle_at", "quotactl", "process_vm_readv",
                    "process_vm_writev", "kcmp", "fsopen", "fsmount", "fsconfig", "fspick", "move_mount",
                    "open_tree", "mount_setattr", "io_uring_setup", "io_uring_enter", "io_uring_register",
                    "shmget", "shmat", "shmctl", "msgget", "msgsnd", "msgrcv", "msgctl", "semget", "semop",
                    "semtimedop", "semctl"}
    for arch, table in seccomp.SYSCALLS.items():
        assert docker_floor <= set(table), docker_floor - set(table)
        assert docker_floor <= set(seccomp.DENIED)
        prog = seccomp.build_filter(arch)
        assert len(prog) % 8 == 0
        ks = {int.from_bytes(prog[i + 4:i + 8], "little") for i in range(0, len(prog), 8)}
        assert {table[name] for name in docker_floor} <= ks
    for x86_only in ("iopl", "ioperm", "uselib"):
        assert x86_only in seccomp.SYSCALLS["x86_64"]


def test_filter_fd_holds_the_program():
    fd = seccomp.filter_fd()
    if fd is None:
        pytest.skip("no table for this architecture")
    try:
        assert os.read(fd, 1 << 16) == seccomp.build_filter(ARCH)
    finally:
        os.close(fd)


def test_the_harness_one_process_rule_uses_the_same_numbers():
    """The harness's child filter (runtime.one_process_filter) cannot import this module inside
    the sandbox, so it keeps its own copy of the clone numbers and architecture codes: they must
    be the ones checked against the kernel headers above."""
    import importlib.util

    from conftest import REPO_ROOT

    spec = importlib.util.spec_from_file_location(
        "harness_runtime", REPO_ROOT / "autoresearch" / "harnesses" / "torch-classifier" / "runtime.py")
    runtime = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(runtime)
    for arch, (audit, clone, clone3, forks) in runtime._PROCESS_CALLS.items():
        table = seccomp.SYSCALLS[arch]
        assert (audit, clone, clone3) == (seccomp.AUDIT_ARCH[arch], table["clone"], table["clone3"]), arch
        assert forks == ((57, 58) if arch == "x86_64" else ())  # fork, vfork: x86_64 only
        assert len(runtime.one_process_filter(arch)) % 8 == 0
