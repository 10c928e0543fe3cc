"""The sandbox's seccomp filter: kernel state is off limits.

Namespaces do not cover everything a process can leave behind in the kernel: keyrings (the
root user's keyring is one per host uid, shared by every namespace), SysV IPC and POSIX message
queues (shared by every seed forked inside one sandbox), and the calls that reconfigure the
kernel or reach into other processes. bubblewrap installs no filter of its own; this module builds
one, a classic BPF program written out by hand (libseccomp is not on PyPI), that bubblewrap
loads with ``--seccomp FD`` just before it runs the command.

The floor is Docker's default profile: every call it denies to a container without extra
capabilities returns EPERM here too, and so do SysV IPC and POSIX message queues. ``clone`` is
allowed (threads, fork) unless its flags ask for a new namespace; ``clone3`` keeps its flags in
memory a filter cannot read, so it fails with ENOSYS and libc falls back to ``clone``. A call of
another ABI (i386 through ``int 0x80``, x32, a foreign architecture) kills the process: the
tables below name only the native ABI's numbers.
"""

from __future__ import annotations

import errno
import os
import platform
import struct

# Syscall numbers, from the kernel's tables: arch/x86/entry/syscalls/syscall_64.tbl (x86_64, the
# "common"/"64" ABI) and include/uapi/asm-generic/unistd.h (aarch64 uses the generic table).
# tests/test_seccomp.py checks them against the installed kernel headers where present.
SYSCALLS = {
    "x86_64": {
        "shmget": 29, "shmat": 30, "shmctl": 31, "clone": 56, "semget": 64, "semop": 65, "semctl": 66,
        "shmdt": 67, "msgget": 68, "msgsnd": 69, "msgrcv": 70, "msgctl": 71, "ptrace": 101, "syslog": 103,
        "uselib": 134, "vhangup": 153, "pivot_root": 155, "_sysctl": 156, "adjtimex": 159, "acct": 163,
        "settimeofday": 164, "mount": 165, "umount2": 166, "swapon": 167, "swapoff": 168, "reboot": 169,
        "sethostname": 170, "setdomainname": 171, "iopl": 172, "ioperm": 173, "create_module": 174,
        "init_module": 175, "delete_module": 176, "get_kernel_syms": 177, "query_module": 178, "quotactl": 179,
        "nfsservctl": 180, "lookup_dcookie": 212, "semtimedop": 220, "clock_settime": 227, "mq_open": 240,
        "mq_unlink": 241, "mq_timedsend": 242, "mq_timedreceive": 243, "mq_notify": 244, "mq_getsetattr": 245,
        "kexec_load": 246, "add_key": 248, "request_key": 249, "keyctl": 250, "unshare": 272,
        "perf_event_open": 298, "fanotify_init": 300, "name_to_handle_at": 303, "open_by_handle_at": 304,
        "clock_adjtime": 305, "setns": 308, "process_vm_readv": 310, "process_vm_writev": 311, "kcmp": 312,
        "finit_module": 313, "kexec_file_load": 320, "bpf": 321, "userfaultfd": 323, "io_uring_setup": 425,
        "io_uring_enter": 426, "io_uring_register": 427, "open_tree": 428, "move_mount": 429, "fsopen": 430,
        "fsconfig": 431, "fsmount": 432, "fspick": 433, "clone3": 435, "mount_setattr": 442, "quotactl_fd": 443,
    },
    "aarch64": {
        "lookup_dcookie": 18, "umount2": 39, "mount": 40, "pivot_root": 41, "nfsservctl": 42, "quotactl": 60,
        "acct": 89, "unshare": 97, "kexec_load": 104, "init_module": 105, "delete_module": 106,
        "clock_settime": 112, "syslog": 116, "ptrace": 117, "reboot": 142, "sethostname": 161,
        "setdomainname": 162, "settimeofday": 170, "adjtimex": 171, "mq_open": 180, "mq_unlink": 181,
        "mq_timedsend": 182, "mq_timedreceive": 183, "mq_notify": 184, "mq_getsetattr": 185, "msgget": 186,
        "msgctl": 187, "msgrcv": 188, "msgsnd": 189, "semget": 190, "semctl": 191, "semtimedop": 192,
        "semop": 193, "shmget": 194, "shmctl": 195, "shmat": 196, "shmdt": 197, "add_key": 217,
        "request_key": 218, "keyctl": 219, "clone": 220, "swapon": 224, "swapoff": 225, "perf_event_open": 241,
        "fanotify_init": 262, "name_to_handle_at": 264, "open_by_handle_at": 265, "clock_adjtime": 266,
        "setns": 268, "process_vm_readv": 270, "process_vm_writev": 271, "kcmp": 272, "finit_module": 273,
        "bpf": 280, "userfaultfd": 282, "kexec_file_load": 294, "io_uring_setup": 425, "io_uring_enter": 426,
        "io_uring_register": 427, "open_tree": 428, "move_mount": 429, "fsopen": 430, "fsconfig": 431,
        "fsmount": 432, "fspick": 433, "clone3": 435, "mount_setattr": 442, "quotactl_fd": 443,
    },
}

# Everything in the tables except the two clone calls, which get their own rules.
DENIED = tuple(sorted({name for table in SYSCALLS.values() for name in table} - {"clone", "clone3"}))

AUDIT_ARCH = {"x86_64": 0xC000003E, "aarch64": 0xC00000B7}  # include/uapi/linux/audit.h
X32_SYSCALL_BIT = 0x40000000
# CLONE_NEWNS | CLONE_NEWCGROUP | CLONE_NEWUTS | CLONE_NEWIPC | CLONE_NEWUSER | CLONE_NEWPID | CLONE_NEWNET
CLONE_NAMESPACE_FLAGS = 0x00020000 | 0x02000000 | 0x04000000 | 0x08000000 | 0x10000000 | 0x20000000 | 0x40000000

# Classic BPF (include/uapi/linux/filter.h, bpf_common.h) and seccomp (include/uapi/linux/seccomp.h).
BPF_LD_W_ABS = 0x00 | 0x00 | 0x20
BPF_JEQ_K = 0x05 | 0x10
BPF_JGE_K = 0x05 | 0x30
BPF_JSET_K = 0x05 | 0x40
BPF_RET_K = 0x06
RET_KILL_PROCESS = 0x80000000
RET_ERRNO = 0x00050000
RET_ALLOW = 0x7FFF0000
# struct seccomp_data: int nr; __u32 arch; __u64 instruction_pointer; __u64 args[6] (little-endian
# on both architectures, so the low half of args[0] is at offset 16).
OFFSET_NR, OFFSET_ARCH, OFFSET_ARG0_LOW = 0, 4, 16


def native_arch() -> str | None:
    machine = platform.machine().lower()
    machine = {"amd64": "x86_64", "arm64": "aarch64"}.get(machine, machine)
    return machine if machine in SYSCALLS else None


def build_filter(arch: str) -> bytes:
    """The filter program for ``arch``, as the bytes of a struct sock_filter array."""
    table = SYSCALLS[arch]
    # Instructions as (code, jump-if-true label, jump-if-false label, k); a label names a later
    # instruction, None means the next one. Resolved to relative offsets below.
    prog: list[tuple[int, str | None, str | None, int]] = [
        (BPF_LD_W_ABS, None, None, OFFSET_ARCH),
        (BPF_JEQ_K, None, "kill", AUDIT_ARCH[arch]),
        (BPF_LD_W_ABS, None, None, OFFSET_NR),
    ]
    if arch == "x86_64":
        prog.append((BPF_JGE_K, "kill", None, X32_SYSCALL_BIT))
    prog.append((BPF_JEQ_K, "clone", None, table["clone"]))
    prog.append((BPF_JEQ_K, "enosys", None, table["clone3"]))
    for name in DENIED:
        if name in table:
            prog.append((BPF_JEQ_K, "eperm", None, table[name]))
    labels = {}
    tail = [(None, (BPF_RET_K, None, None, RET_ALLOW)),  # any other call
            ("clone", (BPF_LD_W_ABS, None, None, OFFSET_ARG0_LOW)),
            (None, (BPF_JSET_K, "eperm", "allow", CLONE_NAMESPACE_FLAGS)),
            ("allow", (BPF_RET_K, None, None, RET_ALLOW)),
            ("eperm", (BPF_RET_K, None, None, RET_ERRNO | errno.EPERM)),
            ("enosys", (BPF_RET_K, None, None, RET_ERRNO | errno.ENOSYS)),
            ("kill", (BPF_RET_K, None, None, RET_KILL_PROCESS))]
    for label, insn in tail:
        if label:
            labels[label] = len(prog)
        prog.append(insn)
    out = bytearray()
    for i, (code, jt, jf, k) in enumerate(prog):
        offsets = [0 if lab is None else labels[lab] - (i + 1) for lab in (jt, jf)]
        if not all(0 <= o <= 255 for o in offsets):  # classic BPF jumps only forward, 8 bits
            raise ValueError(f"seccomp filter jump out of range at instruction {i}")
        out += struct.pack("=HBBI", code, offsets[0], offsets[1], k)
    return bytes(out)


def filter_fd() -> int | None:
    """A memfd holding the native filter, positioned at its start (bubblewrap reads it to the
    end), or None on an architecture without a table here."""
    arch = native_arch()
    if arch is None:
        return None
    fd = os.memfd_create("autoresearch-seccomp", os.MFD_CLOEXEC)
    os.write(fd, build_filter(arch))
    os.lseek(fd, 0, os.SEEK_SET)
    return fd
