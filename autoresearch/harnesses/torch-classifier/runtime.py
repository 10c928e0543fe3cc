# Evaluation harness: FROZEN (DO NOT CHANGE).
# The runtime both phases share (protocol 2). One sandbox per phase per code version runs every
# seed it is asked for: this process (the runner) reads its orders from stdin, imports torch once,
# then runs each seed in a fresh child forked BEFORE any candidate code is imported. Between two
# children the runner wipes /tmp and /dev/shm and kills every process left, so nothing of one seed
# reaches the next. Checkpoints and outputs never pass through the runner's memory (the kernel
# copies them with sendfile), so a later child, a fork of the runner, cannot find an earlier
# seed's results in the memory it inherits. Results leave the sandbox through a file descriptor
# the trusted side opened (no path inside the sandbox names it), closed in every child.
#
# Inside a child, the runtime owns randomness and counts compute: every seeding entry point a
# candidate can reach mixes in the trial's secret key (a private constant seed still varies per
# trial); the seed itself is never handed over (the generator given to `fit` is seeded with a
# derived value); compute is counted for the trusted side to hold against the budget
# (compute_meter.py beside this file). A seed is one process: the child may start threads, never
# processes (a seccomp filter it cannot lift), so no work of a seed happens where its counts and
# the runner's CPU accounting cannot see it. These in-process measures are tripwires for code in
# the same process; SECURITY.md says what stays open.
import hashlib
import json
import os
import signal
import stat
import sys
import time

PROTOCOL = 2
RECORD_MAGIC = b"ARREC2 "
EXIT_NONFINITE = 3
EXIT_TAMPERED = 4
LOG_KEEP = 12 * 1024  # bytes of a child's log shipped back (head and tail)
WIPE_PLACES = ("/tmp", "/dev/shm")


def read_orders() -> dict:
    """The trusted side's instructions, from stdin (never argv or the environment: candidate
    code could read those). Read whole, then stdin is closed."""
    data = sys.stdin.buffer.read()
    null = os.open(os.devnull, os.O_RDONLY)  # the pipe goes: nothing more comes through it
    os.dup2(null, 0)
    os.close(null)
    orders = json.loads(data)
    if orders.get("protocol") != PROTOCOL:
        raise SystemExit(f"harness: protocol {orders.get('protocol')!r} is not {PROTOCOL}")
    # Whatever else the layers above left open (the sandbox's own set-up pipes) is no one's business here.
    keep = {0, 1, 2, int(orders["results_fd"]), *(int(fd) for fd in orders.get("private_fds", []))}
    for fd in [int(n) for n in os.listdir("/proc/self/fd") if n.isdigit()]:
        if fd not in keep:
            try:
                os.close(fd)
            except OSError:  # the listing's own descriptor, already gone
                pass
    return orders


def exit_now(code: int) -> None:
    """End the runner without the interpreter's teardown: with torch loaded, finalising every
    module costs ~0.7 s of each phase, and nothing is left to finalise (results went out through
    the results descriptor as they were written; only the log needs flushing)."""
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)


def derive(key: str, label: str) -> int:
    """A 63-bit seed from the trial's secret key and a purpose label."""
    return int.from_bytes(hashlib.sha256(f"{key}|{label}".encode()).digest()[:8], "little") & (2**63 - 1)


# --------------------------------------------------------------------------- the runner


def _no_dump() -> None:
    """Make this process non-dumpable: a child (same uid) can then neither read its memory through
    /proc/<pid>/mem nor its file descriptors through /proc/<pid>/fd."""
    try:
        import ctypes

        ctypes.CDLL(None, use_errno=True).prctl(4, 0, 0, 0, 0)  # PR_SET_DUMPABLE = 4
    except (OSError, AttributeError):
        pass


def _wipe(path: str) -> None:
    """Remove everything under path (not path itself); what cannot be removed is reported."""
    if not os.path.isdir(path):
        return
    for name in os.listdir(path):
        full = os.path.join(path, name)
        try:
            if os.path.isdir(full) and not os.path.islink(full):
                _rmtree(full)
            else:
                os.unlink(full)
        except OSError as exc:
            print(f"harness: could not remove {full}: {exc}", file=sys.stderr)


def _rmtree(path: str) -> None:
    for root, dirs, files in os.walk(path, topdown=False):
        for name in files:
            os.unlink(os.path.join(root, name))
        for name in dirs:
            full = os.path.join(root, name)
            os.unlink(full) if os.path.islink(full) else os.rmdir(full)
    os.rmdir(path)


def _kill_others() -> None:
    """SIGKILL every process in the sandbox but this one and its ancestors (daemons a child left)."""
    keep = {os.getpid(), 1}
    pid = os.getppid()
    while pid > 1 and pid not in keep:
        keep.add(pid)
        try:
            with open(f"/proc/{pid}/stat") as f:
                pid = int(f.read().rsplit(")", 1)[1].split()[1])
        except (OSError, ValueError, IndexError):
            break
    for _ in range(20):
        others = [int(p) for p in os.listdir("/proc") if p.isdigit() and int(p) not in keep]
        if not others:
            return
        for p in others:
            try:
                os.kill(p, signal.SIGKILL)
            except (ProcessLookupError, PermissionError):
                pass
        time.sleep(0.01)
        while True:  # reap our own children
            try:
                if os.waitpid(-1, os.WNOHANG) == (0, 0):
                    break
            except ChildProcessError:
                break


# One seed, one process: in a child, clone without CLONE_THREAD (fork, vfork, posix_spawn) fails
# with EPERM and clone3 with ENOSYS (its flags are out of a filter's reach; libc falls back to
# clone). Numbers: arch/x86/entry/syscalls/syscall_64.tbl, include/uapi/asm-generic/unistd.h.
_PROCESS_CALLS = {  # arch: (AUDIT_ARCH, clone, clone3, calls that only make processes)
    "x86_64": (0xC000003E, 56, 435, (57, 58)),  # fork, vfork
    "aarch64": (0xC00000B7, 220, 435, ()),
}
_CLONE_THREAD = 0x00010000
ONE_PROCESS_MESSAGE = ("harness: a seed runs in one process: fork and subprocesses are off (threads are fine), "
                       "so that all of its work is counted")


def one_process_filter(arch: str) -> bytes:
    """The classic BPF program (struct sock_filter array) of the one-process rule for ``arch``.
    A call of another ABI (x32, i386) fails with EPERM."""
    import errno
    import struct

    audit, clone, clone3, forks = _PROCESS_CALLS[arch]
    ld, jeq, jge, jset, ret = 0x20, 0x15, 0x35, 0x45, 0x06
    allow, eperm, enosys = 0x7FFF0000, 0x00050000 | errno.EPERM, 0x00050000 | errno.ENOSYS
    prog = [(ld, 0, 0, 4), (jeq, 1, 0, audit), (ret, 0, 0, eperm),  # seccomp_data.arch
            (ld, 0, 0, 0), (jge, 0, 1, 0x40000000), (ret, 0, 0, eperm)]  # seccomp_data.nr; x32 bit
    for nr in forks:
        prog += [(jeq, 0, 1, nr), (ret, 0, 0, eperm)]
    prog += [(jeq, 0, 1, clone3), (ret, 0, 0, enosys),
             (jeq, 1, 0, clone), (ret, 0, 0, allow),
             (ld, 0, 0, 16), (jset, 0, 1, _CLONE_THREAD), (ret, 0, 0, allow), (ret, 0, 0, eperm)]  # args[0] low
    return b"".join(struct.pack("=HBBI", *insn) for insn in prog)


def deny_new_processes() -> bool:
    """Install the one-process rule in this process (irrevocable, inherited by its threads).
    False on an architecture without a table here (as the sandbox's own filter); raises when the
    kernel refuses it, so that a seed never runs without it where it should have it."""
    import ctypes
    import platform

    arch = {"amd64": "x86_64", "arm64": "aarch64"}.get(platform.machine().lower(), platform.machine().lower())
    if arch not in _PROCESS_CALLS:
        return False
    code = one_process_filter(arch)

    class SockFprog(ctypes.Structure):
        _fields_ = [("len", ctypes.c_ushort), ("filter", ctypes.c_void_p)]

    buf = ctypes.create_string_buffer(code, len(code))
    prog = SockFprog(len(code) // 8, ctypes.cast(buf, ctypes.c_void_p))
    libc = ctypes.CDLL(None, use_errno=True)
    pr_set_no_new_privs, pr_set_seccomp, seccomp_mode_filter = 38, 22, 2
    if libc.prctl(pr_set_no_new_privs, 1, 0, 0, 0) != 0 or \
            libc.prctl(pr_set_seccomp, seccomp_mode_filter, ctypes.byref(prog), 0, 0) != 0:
        err = ctypes.get_errno()
        raise OSError(err, f"harness: cannot install the one-process rule: {os.strerror(err)}")

    def fork(*_args, **_kwargs):
        raise PermissionError(1, ONE_PROCESS_MESSAGE)

    os.fork = fork  # the kernel refuses anyway; this says why
    if hasattr(os, "forkpty"):
        os.forkpty = fork
    return True


class Runner:
    """Forks one child per trial, enforces its wall-clock limit, ships what it wrote, cleans up."""

    def __init__(self, orders: dict):
        self.results_fd = int(orders["results_fd"])
        # The trusted side's size cap for each output file: a bigger file is reported, not shipped.
        self.file_caps = {str(k): int(v) for k, v in orders.get("file_caps", {}).items()}
        # Descriptors only the runner may use: closed in every child before candidate code runs.
        self.private_fds = [self.results_fd] + [int(fd) for fd in orders.get("private_fds", [])]
        self.child_seconds = float(orders["child_seconds"])
        self.isolated = bool(orders.get("isolated", True))
        self.scratch = orders.get("scratch") or "/tmp"
        _no_dump()

    def trial_dir(self, slot: int) -> str:
        path = os.path.join(self.scratch, f"trial-{slot}")
        os.makedirs(os.path.join(path, "out"))
        return path

    def prepare(self, slot: int, source_fd: int, offset: int, size: int, name: str) -> str:
        """A trial's scratch folder holding ``size`` bytes of ``source_fd`` from ``offset`` as
        ``name`` (copied by the kernel: the bytes never enter this process's memory)."""
        work = self.trial_dir(slot)
        fd = os.open(os.path.join(work, name), os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        try:
            _send_all(fd, source_fd, offset, size)
        finally:
            os.close(fd)
        return work

    def run(self, slot: int, body, *args, work: str | None = None) -> tuple[dict, str]:
        """Run body(work_dir, *args) in a forked child (it writes its results to work_dir/out);
        returns what the runner saw of it, and work_dir."""
        work = work or self.trial_dir(slot)
        log_path = os.path.join(work, "log.txt")
        started = time.monotonic()
        sys.stdout.flush()
        sys.stderr.flush()
        pid = os.fork()
        if pid == 0:  # the child: from here on, candidate code may run
            code = 70
            try:
                os.setsid()
                log = os.open(log_path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
                os.dup2(log, 1)
                os.dup2(log, 2)
                if log > 2:
                    os.close(log)
                for fd in self.private_fds:
                    os.close(fd)
                sys.stdout = open(1, "w", buffering=1, closefd=False)
                sys.stderr = open(2, "w", buffering=1, closefd=False)
                os.environ["TMPDIR"] = os.path.join(work, "tmp")
                os.makedirs(os.environ["TMPDIR"])
                deny_new_processes()
                code = int(body(work, *args) or 0)
            except SystemExit as exc:
                code = exc.code if isinstance(exc.code, int) else 1
                if not isinstance(exc.code, int) and exc.code is not None:
                    print(exc.code, file=sys.stderr)
            except BaseException:
                import traceback

                traceback.print_exc()
                code = 1
            finally:
                try:
                    sys.stdout.flush()
                    sys.stderr.flush()
                except BaseException:
                    pass
                os._exit(code)
        timed_out = False
        status = None
        deadline = started + self.child_seconds
        while status is None:
            try:
                done, status_raw, usage = os.wait4(pid, os.WNOHANG)
            except ChildProcessError:
                status_raw, usage, done = 0, None, pid
            if done == pid:
                status = status_raw
                break
            if time.monotonic() > deadline:
                timed_out = True
                try:
                    os.killpg(pid, signal.SIGKILL)
                except (ProcessLookupError, PermissionError):
                    pass
                try:
                    os.kill(pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass
                _, status, usage = os.wait4(pid, 0)
                break
            time.sleep(0.005)
        seconds = time.monotonic() - started
        if self.isolated:  # a PID namespace of our own: everything else in it is the child's
            _kill_others()
        else:  # the host's process table: only the child's own session
            try:
                os.killpg(pid, signal.SIGKILL)
            except (ProcessLookupError, PermissionError):
                pass
        seen = {
            "slot": slot,
            "exit": os.WEXITSTATUS(status) if os.WIFEXITED(status) else None,
            "signal": os.WTERMSIG(status) if os.WIFSIGNALED(status) else None,
            "timed_out": timed_out,
            "seconds": round(seconds, 4),
            "cpu_seconds": round(usage.ru_utime + usage.ru_stime, 4) if usage is not None else None,
            "max_rss_kb": usage.ru_maxrss if usage is not None else None,
        }
        return seen, work

    def ship(self, seen: dict, work: str, names: list[str]) -> None:
        """Append one record to the results fd: a JSON header line, then each file's bytes, copied
        by the kernel (never through this process's memory). Then wipe the trial's traces."""
        out = os.path.join(work, "out")
        files = []
        oversized = []
        for name in names:
            path = os.path.join(out, name)
            try:
                fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK)
            except OSError:
                continue
            st = os.fstat(fd)
            if not stat.S_ISREG(st.st_mode):
                os.close(fd)
                continue
            if st.st_size > self.file_caps.get(name, st.st_size):
                oversized.append([name, st.st_size])
                os.close(fd)
                continue
            files.append((name, fd, st.st_size))
        log_fd = None
        try:
            log_fd = os.open(os.path.join(work, "log.txt"), os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK)
            log_size = os.fstat(log_fd).st_size
        except OSError:
            log_size = 0
        # The log: its head and tail (a flood is cut in the middle), read through the kernel too.
        spans = [(0, min(log_size, LOG_KEEP // 3))]
        if log_size > LOG_KEEP // 3:
            spans.append((max(spans[0][1], log_size - 2 * LOG_KEEP // 3), log_size))
        log_len = sum(b - a for a, b in spans)
        # Files as an ordered list: their bytes follow the header in exactly this order.
        header = dict(seen, files=[[name, size] for name, _fd, size in files], oversized=oversized,
                      log_bytes=log_size, log_shipped=log_len)
        os.write(self.results_fd, RECORD_MAGIC + json.dumps(header, sort_keys=True).encode() + b"\n")
        for _name, fd, size in files:
            _send_all(self.results_fd, fd, 0, size)
            os.close(fd)
        if log_fd is not None:
            for a, b in spans:
                _send_all(self.results_fd, log_fd, a, b - a)
            os.close(log_fd)
        self.clean(work)

    def clean(self, work: str) -> None:
        try:
            _rmtree(work)
        except OSError:
            pass
        for place in WIPE_PLACES:
            if self.isolated:  # without the sandbox /tmp is the host's: only our own scratch is ours
                _wipe(place)
        _wipe(self.scratch)


def _send_all(out_fd: int, in_fd: int, offset: int, count: int) -> None:
    while count > 0:
        sent = os.sendfile(out_fd, in_fd, offset, count)
        if sent == 0:  # the file shrank under us: pad, so that the record's framing stays exact
            os.write(out_fd, b"\0" * count)
            return
        offset += sent
        count -= sent


def warm_up(*, optimizers: bool = True) -> None:
    """Run one tiny training step, save and load in the runner, on the CPU only (CUDA must not
    start before a fork): torch imports much of itself lazily on first use (optimizers, autograd,
    serialisation), and done here it is done once for every seed instead of once per child.
    The first optimizer built imports torch._dynamo (about 2 s of CPU): the predict phase, which
    never trains, leaves it out (``optimizers=False``) and does not spend that beside training."""
    import io

    import torch

    # One thread here: an OpenMP pool started in the runner does not survive fork (libgomp), and a
    # child that then asks for threads > 1 hangs in its first parallel op. Children set their own.
    torch.set_num_threads(1)
    net = torch.nn.Sequential(torch.nn.Linear(4, 4), torch.nn.ReLU(), torch.nn.Linear(4, 2))
    loss = torch.nn.functional.cross_entropy(net(torch.zeros(3, 4)), torch.zeros(3, dtype=torch.long))
    loss.backward()
    makers = (lambda p: torch.optim.SGD(p, lr=0.1, momentum=0.9), torch.optim.Adam, torch.optim.AdamW)
    for make in makers if optimizers else ():
        opt = make(net.parameters())
        loss = torch.nn.functional.cross_entropy(net(torch.zeros(3, 4)), torch.zeros(3, dtype=torch.long))
        opt.zero_grad()
        loss.backward()
        opt.step()
    buffer = io.BytesIO()
    torch.save(net.state_dict(), buffer)
    buffer.seek(0)
    torch.load(buffer, weights_only=True)
    with torch.inference_mode():
        net(torch.zeros(1, 4))


# --------------------------------------------------------------------------- inside a child


def seed_everything(key: str) -> None:
    import random

    import numpy as np
    import torch

    random.seed(derive(key, "python"))
    np.random.seed(derive(key, "numpy") % (2**32))
    torch.manual_seed(derive(key, "torch"))


def install_seed_mixing(key: str) -> None:
    """Every seeding entry point a candidate can reach mixes in the trial's key: a constant seed
    of its own (torch.Generator().manual_seed(C), np.random.default_rng(C), random.Random(C), ...)
    still draws a different stream on every trial, so a lucky constant cannot be replayed on every
    gate seed. Reseeding the *global* torch generator stays a tamper the runner detects."""
    import random

    import numpy as np
    import torch

    def mix(value, bits=63):
        if value is None:
            return None
        if isinstance(value, (bytes, bytearray)):
            raw = bytes(value)
        else:
            try:
                raw = repr(int(value)).encode()
            except (TypeError, ValueError):
                try:
                    raw = repr(np.asarray(value).tolist()).encode()
                except Exception:
                    raw = repr(value).encode()
        return int.from_bytes(hashlib.sha256(key.encode() + b"|seed|" + raw).digest()[:8], "little") % (2**bits)

    base_gen = torch._C.Generator

    class _GeneratorMeta(type(base_gen)):
        def __instancecheck__(cls, obj):  # torch.Generator stays a type every generator is an instance of
            return isinstance(obj, base_gen)

    class Generator(base_gen, metaclass=_GeneratorMeta):
        def manual_seed(self, seed):
            return super().manual_seed(mix(seed))

    Generator.__name__ = Generator.__qualname__ = "Generator"
    Generator.__module__ = "torch"
    torch.Generator = Generator
    orig_manual_seed = torch.manual_seed
    torch.manual_seed = torch.random.manual_seed = lambda seed: orig_manual_seed(mix(seed))
    for name in ("manual_seed", "manual_seed_all"):
        orig = getattr(torch.cuda, name)
        setattr(torch.cuda, name, (lambda f: lambda seed: f(mix(seed)))(orig))

    orig_np_seed = np.random.seed
    np.random.seed = lambda seed=None: orig_np_seed(None if seed is None else mix(seed, 32))
    orig_default_rng = np.random.default_rng

    def default_rng(seed=None):
        if seed is None or isinstance(seed, (np.random.BitGenerator, np.random.Generator)):
            return orig_default_rng(seed)
        return orig_default_rng(mix(seed))

    np.random.default_rng = default_rng

    class RandomState(np.random.RandomState):
        def __init__(self, seed=None):
            super().__init__(None if seed is None or isinstance(seed, np.random.BitGenerator) else mix(seed, 32))

        def seed(self, seed=None):
            return super().seed(None if seed is None else mix(seed, 32))

    np.random.RandomState = RandomState

    class SeedSequence(np.random.SeedSequence):
        def __init__(self, entropy=None, *args, **kwargs):
            super().__init__(None if entropy is None else mix(entropy, 128), *args, **kwargs)

    np.random.SeedSequence = SeedSequence
    for name in ("PCG64", "PCG64DXSM", "MT19937", "Philox", "SFC64"):
        base = getattr(np.random, name)

        def make(base):
            class Mixed(base):
                def __init__(self, seed=None, *args, **kwargs):
                    if seed is not None and not isinstance(seed, np.random.SeedSequence):
                        seed = mix(seed, 128)
                    super().__init__(seed, *args, **kwargs)

            Mixed.__name__ = Mixed.__qualname__ = base.__name__
            return Mixed

        setattr(np.random, name, make(base))

    orig_random_seed = random.seed
    random.seed = lambda a=None, version=2: orig_random_seed(None if a is None else mix(a), version)

    class Random(random.Random):
        def seed(self, a=None, version=2):
            return super().seed(None if a is None else mix(a), version)

    random.Random = Random


def sketch_positions(key: str, name: str, size: int, coords: int) -> list[int]:
    """Positions drawn with hashlib only: numpy's and torch's generators are mixed with the trial's
    key by now, and the positions must be the same for every seed of a run."""
    if size <= coords:
        return list(range(size))
    picked: set[int] = set()
    i = 0
    while len(picked) < coords:
        picked.add(int.from_bytes(hashlib.sha256(f"{key}|{name}|{i}".encode()).digest()[:8], "little") % size)
        i += 1
    return sorted(picked)


def weight_sketch(module, key: str, tensors: int = 32, coords: int = 64) -> dict:
    """A few coordinates of each floating-point tensor of the model's state (at most ``tensors``
    tensors), at positions drawn from ``key`` (the same for every seed of a run), so the trusted side
    can tell weights that vary with the seed from one fixed draw."""
    out = {}
    for name, tensor in list(module.state_dict().items()):
        if len(out) >= tensors:
            break
        if not tensor.is_floating_point() or tensor.numel() == 0:
            continue
        flat = tensor.detach().reshape(-1).float().cpu()
        out[name] = [float(flat[i]) for i in sketch_positions(key, name, flat.numel(), coords)]
    return out


def load_candidate(repo: str):
    """Import the editable modules (only now: the child is forked and seeded)."""
    sys.path.insert(0, repo)
    import model as model_module  # editable

    return model_module
