"""The embedded default LLM: llama.cpp's OpenAI-compatible server as a child process on 127.0.0.1.

Used when no endpoint is configured. The model file comes from ``--gguf`` / ``AUTORESEARCH_GGUF``,
else the cache (``~/.cache/autoresearch/models``), else a one-time download from the Hugging Face
hub, checked against a pinned sha256. The server is stopped when the run ends or fails, and dies
with its parent even on ``kill -9`` (Linux parent-death signal).
"""

from __future__ import annotations

import hashlib
import importlib.util
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from pathlib import Path

from autoresearch.agent.llm import LLMUnavailable

MODEL_FILE = "qwen2.5-coder-1.5b-instruct-q4_k_m.gguf"
MODEL_REPO = "Qwen/Qwen2.5-Coder-1.5B-Instruct-GGUF"
MODEL_SHA256 = "cc324af070c2ecbfd324a30884d2f951a7ff756aba85cb811a6ec436933bb046"
MODEL_URL = f"https://huggingface.co/{MODEL_REPO}/resolve/main/{MODEL_FILE}"
MODEL_ALIAS = "qwen2.5-coder-1.5b-instruct"
N_CTX = 8192
INSTALL_HINT = ("pip install 'autoresearch-gate[llm]' (llama-cpp-python[server]); or point --llm-base-url / "
                "AUTORESEARCH_LLM_BASE_URL at any OpenAI-compatible server")
# Modules `python -m llama_cpp.server` needs: the [server] extra, not just llama-cpp-python.
SERVER_MODULES = ("llama_cpp", "uvicorn", "fastapi", "sse_starlette", "starlette_context", "pydantic_settings")


def cache_dir() -> Path:
    return Path(os.environ.get("AUTORESEARCH_CACHE", Path.home() / ".cache" / "autoresearch")) / "models"


def missing_server_modules() -> list[str]:
    return [m for m in SERVER_MODULES if importlib.util.find_spec(m) is None]


def gpu_offload_supported() -> bool:
    try:
        import llama_cpp

        return bool(llama_cpp.llama_supports_gpu_offload())
    except Exception:  # noqa: BLE001 - an odd build only means "no GPU offload", which is what we report
        return False


def cpu_advertises_amx() -> bool:
    try:
        return " amx_tile" in Path("/proc/cpuinfo").read_text()
    except OSError:
        return False


def avoid_extra_buffers() -> bool:
    """ggml's AMX kernels die with SIGILL where the CPU reports AMX but the VM/kernel does not enable it
    (seen on Firecracker guests); its extra (repacked/AMX) weight buffers are then switched off.
    AUTORESEARCH_LLAMA_EXTRA_BUFTS=1 / 0 forces them on / off."""
    forced = os.environ.get("AUTORESEARCH_LLAMA_EXTRA_BUFTS")
    if forced in ("0", "1"):
        return forced == "0"
    return cpu_advertises_amx()


def patch_llama_params() -> None:
    """In the server process: turn off ggml's extra weight buffers before any model is loaded."""
    import llama_cpp.llama_cpp as C

    default = C.llama_model_default_params

    def params():
        p = default()
        p.use_extra_bufts = False
        return p

    C.llama_model_default_params = params


# `python -c` entry of the server child: llama_cpp.server's own __main__, optionally patched first.
_LAUNCH = ("import runpy, sys\n"
           "if sys.argv[1] == 'no-extra-bufts':\n"
           "    from autoresearch.agent.local_llm import patch_llama_params; patch_llama_params()\n"
           "sys.argv = ['llama_cpp.server'] + sys.argv[2:]\n"
           "runpy.run_module('llama_cpp.server', run_name='__main__', alter_sys=True)\n")


def download_model(url: str, dest: Path, sha256: str, *, show_progress: bool = True, timeout: float = 60.0) -> Path:
    """Stream ``url`` to ``dest`` with a progress bar; keep the file only if its sha256 matches."""
    from rich.progress import BarColumn, DownloadColumn, Progress, TransferSpeedColumn

    dest.parent.mkdir(parents=True, exist_ok=True)
    part = dest.with_name(dest.name + ".part")
    h = hashlib.sha256()
    try:
        with urllib.request.urlopen(url, timeout=timeout) as resp, open(part, "wb") as out, \
                Progress("[progress.description]{task.description}", BarColumn(), DownloadColumn(),
                         TransferSpeedColumn(), disable=not show_progress, transient=True) as progress:
            total = int(resp.headers.get("Content-Length") or 0) or None
            task = progress.add_task(f"downloading {dest.name}", total=total)
            for chunk in iter(lambda: resp.read(1 << 20), b""):
                out.write(chunk)
                h.update(chunk)
                progress.advance(task, len(chunk))
    except (urllib.error.URLError, OSError) as exc:
        part.unlink(missing_ok=True)
        raise LLMUnavailable(f"could not download the local model from {url}: {exc}. Download it yourself and pass "
                             f"--gguf PATH (or set AUTORESEARCH_GGUF)") from None
    got = h.hexdigest()
    if got != sha256:
        part.unlink(missing_ok=True)
        raise LLMUnavailable(f"the model downloaded from {url} has sha256 {got}, expected {sha256}; not used")
    part.replace(dest)
    return dest


def resolve_gguf(gguf: Path | str | None = None, *, url: str | None = None, sha256: str = MODEL_SHA256,
                 show_progress: bool = True) -> Path:
    """The GGUF to serve: explicit path, else the cache, else a one-time download (checksum-checked)."""
    explicit = gguf or os.environ.get("AUTORESEARCH_GGUF")
    if explicit:
        path = Path(explicit).expanduser()
        if not path.is_file():
            raise LLMUnavailable(f"GGUF model file {path} does not exist (from --gguf / AUTORESEARCH_GGUF)")
        return path
    cached = cache_dir() / MODEL_FILE
    if cached.is_file():
        return cached
    url = url or os.environ.get("AUTORESEARCH_GGUF_URL") or MODEL_URL
    if url == MODEL_URL and os.environ.get("HF_HUB_OFFLINE", "") not in ("", "0"):
        raise LLMUnavailable(f"no local model: {cached} is missing and HF_HUB_OFFLINE is set, so it is not downloaded. "
                             f"Pass --gguf PATH or set AUTORESEARCH_GGUF to a GGUF file (default model: {MODEL_REPO} "
                             f"{MODEL_FILE}), or use --llm-base-url")
    return download_model(url, cached, sha256, show_progress=show_progress)


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _die_with_parent() -> None:
    """In the child: get SIGKILL when the parent dies (even by SIGKILL), so no server is orphaned."""
    try:
        import ctypes

        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG
    except Exception:  # noqa: BLE001 - not Linux: stop() and atexit still stop the server
        pass
    os.setsid()


class LocalLLMServer:
    """``python -m llama_cpp.server`` on 127.0.0.1:<free port>; ``stop()`` ends its process group."""

    def __init__(self, gguf: Path, *, n_ctx: int = N_CTX, threads: int | None = None, startup_timeout: float = 180.0):
        self.gguf = Path(gguf)
        self.n_ctx = n_ctx
        self.threads = threads or llm_threads(shares_machine=True)
        self.startup_timeout = startup_timeout
        self.gpu = gpu_offload_supported()
        self.port: int | None = None
        self.proc: subprocess.Popen | None = None
        self.log_path: Path | None = None

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}/v1"

    def command(self) -> list[str]:
        mode = "no-extra-bufts" if avoid_extra_buffers() else "default"
        return [sys.executable, "-c", _LAUNCH, mode, "--model", str(self.gguf), "--model_alias", MODEL_ALIAS,
                "--host", "127.0.0.1", "--port", str(self.port), "--n_ctx", str(self.n_ctx),
                "--n_threads", str(self.threads), "--n_threads_batch", str(self.threads),
                "--n_gpu_layers", "-1" if self.gpu else "0"]

    def start(self) -> str:
        import atexit

        self.port = free_port()
        fd, log = tempfile.mkstemp(prefix="autoresearch-llama-server-", suffix=".log")
        self.log_path = Path(log)
        with os.fdopen(fd, "wb") as log_file:
            self.proc = subprocess.Popen(self.command(), stdin=subprocess.DEVNULL, stdout=log_file,
                                         stderr=subprocess.STDOUT, preexec_fn=_die_with_parent)
        atexit.register(self.stop)
        try:
            self._wait_ready()
        except BaseException:
            self.stop()
            raise
        return self.base_url

    def _wait_ready(self) -> None:
        deadline = time.monotonic() + self.startup_timeout
        url = f"{self.base_url}/models"
        while time.monotonic() < deadline:
            if self.proc is not None and self.proc.poll() is not None:
                raise LLMUnavailable(f"the local llama.cpp server exited with code {self.proc.returncode} while "
                                     f"loading {self.gguf}:\n{self.log_tail()}")
            try:
                with urllib.request.urlopen(url, timeout=2) as resp:
                    if resp.status == 200:
                        return
            except (urllib.error.URLError, OSError):
                pass
            time.sleep(0.5)
        raise LLMUnavailable(f"the local llama.cpp server did not answer within {self.startup_timeout:.0f}s:\n"
                             f"{self.log_tail()}")

    def log_tail(self, chars: int = 2000) -> str:
        try:
            return self.log_path.read_text(errors="replace")[-chars:] if self.log_path else ""
        except OSError:
            return ""

    def stop(self) -> None:
        proc, self.proc = self.proc, None
        if proc is not None and proc.poll() is None:
            try:
                os.killpg(proc.pid, signal.SIGTERM)
                proc.wait(timeout=5)  # uvicorn would wait for a running generation; we do not
            except (ProcessLookupError, PermissionError):
                pass
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait(timeout=10)
        if self.log_path is not None:
            self.log_path.unlink(missing_ok=True)


def llm_threads(*, shares_machine: bool) -> int:
    """Threads for the embedded server. llama.cpp's threads meet at a barrier every layer, so they
    must not compete with training: while trials run beside the LLM (pipelining), half the cores
    (llama.cpp's own default; on a busy 2-core machine two threads ran ~3x slower than one). When
    the LLM has the machine to itself (a run without pipelining waits for each reply), every core:
    on the idle 2-core machine one proposal's reply took 42 s with 2 threads and 76 s with 1.
    AUTORESEARCH_LLM_THREADS overrides both."""
    forced = int(os.environ.get("AUTORESEARCH_LLM_THREADS") or 0)
    cores = os.cpu_count() or 2
    return forced if forced > 0 else (max(1, cores // 2) if shares_machine else cores)


def start_local_server(gguf: Path | str | None = None, *, threads: int | None = None) -> LocalLLMServer:
    """Resolve the model and start the server, or raise LLMUnavailable saying what to install or set."""
    missing = missing_server_modules()
    if missing:
        raise LLMUnavailable(f"no LLM endpoint is configured and the embedded local model needs the llama.cpp "
                             f"server, which is not installed (missing: {', '.join(missing)}). Install it with: "
                             f"{INSTALL_HINT}")
    server = LocalLLMServer(resolve_gguf(gguf), threads=threads)
    server.start()
    return server


def describe_local_llm() -> str:
    """One line for `autoresearch doctor`."""
    missing = missing_server_modules()
    explicit = os.environ.get("AUTORESEARCH_GGUF")
    path = Path(explicit) if explicit else cache_dir() / MODEL_FILE
    model = f"model {path} ({'present' if path.is_file() else 'missing: downloaded on first use, or set --gguf'})"
    if missing:
        return f"local LLM: llama.cpp server not installed (missing {', '.join(missing)}; {INSTALL_HINT}); {model}"
    return f"local LLM: llama.cpp server installed (GPU offload: {'yes' if gpu_offload_supported() else 'no'}); {model}"
