"""One real run holds the whole adversarial suite: every case is one line of a proposals file,
run once through the CLI (2 paired seeds, short budgets); the tests then assert on the results."""

from __future__ import annotations

import hashlib
import json
import os
import secrets
import socket
import subprocess
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pytest

from autoresearch.benchmark import load_benchmark, materialise_splits
from autoresearch.sandbox.isolation import bubblewrap_works
from autoresearch.sandbox.trial import tree_hash
from adversarial.cases import CASES
from conftest import AUTORESEARCH, REPO_ROOT, copy_benchmark

CANARY_KEY = "sk-canary-" + secrets.token_hex(8)
PARTS = 2


@dataclass
class HostListeners:
    """A TCP listener on the host's 127.0.0.1 and a host abstract unix socket: nothing from a
    sandbox may reach either."""

    port: int = 0
    abstract: str = ""
    received: list[str] = field(default_factory=list)
    _socks: list[socket.socket] = field(default_factory=list)

    def start(self) -> "HostListeners":
        tcp = socket.socket()
        tcp.bind(("127.0.0.1", 0))
        tcp.listen(8)
        self.port = tcp.getsockname()[1]
        self.abstract = f"autoresearch-test-{secrets.token_hex(6)}"
        unix = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        unix.bind("\0" + self.abstract)
        unix.listen(8)
        self._socks = [tcp, unix]
        for s, kind in ((tcp, "tcp"), (unix, "unix")):
            threading.Thread(target=self._accept, args=(s, kind), daemon=True).start()
        return self

    def _accept(self, sock: socket.socket, kind: str) -> None:
        while True:
            try:
                conn, _ = sock.accept()
            except OSError:
                return
            self.received.append(kind)
            conn.close()

    def close(self) -> None:
        for s in self._socks:
            s.close()


@dataclass
class SuiteRun:
    run_dirs: list[Path]  # the cases split over PARTS runs that ran at the same time
    parts: list[list]  # the cases of each run, in proposal order
    runs_dir: Path
    bench: Path
    bench_hash_before: str  # the benchmark copy and the harness it runs
    bench_hash_after: str
    summaries: list[dict]
    by_name: dict[str, dict]
    listeners: HostListeners
    wall_seconds: float
    returncodes: list[int]
    output: str
    host_shm_before: set[str]


def _fill(line: str, values: dict[str, str]) -> str:
    for key, value in values.items():
        line = line.replace(f"@{key}@", value)
    return line


def answer_keys(bench: Path) -> dict[str, str]:
    """What a proposal can carry about a public dataset's test split: its labels keyed by a hash of
    each input (@ANSWER_KEY@) or in split order (@POSITION_KEY@), escaped to sit inside a JSON string."""
    test = materialise_splits(load_benchmark(bench).spec)["test"]
    by_content = {hashlib.sha1(np.ascontiguousarray(x).tobytes()).hexdigest()[:10]: int(y) for x, y in zip(test.x, test.y)}
    by_position = [int(y) for y in test.y]
    return {"ANSWER_KEY": json.dumps(json.dumps(by_content))[1:-1],
            "POSITION_KEY": json.dumps(json.dumps(by_position))[1:-1]}


@pytest.fixture(scope="session")
def suite(tmp_path_factory) -> SuiteRun:
    if not bubblewrap_works():
        pytest.skip("the adversarial suite needs bubblewrap (apt-get install bubblewrap); without it "
                    "candidate code runs with isolation: none, which SECURITY.md says does not hold")
    root = tmp_path_factory.mktemp("adversarial")
    bench = copy_benchmark(root / "digits-adv", train_seconds=12, predict_seconds=8, grace_seconds=8,
                           memory_mb=1024)
    runs_dir = root / "runs"
    listeners = HostListeners().start()
    harness = load_benchmark(bench).harness_dir  # outside the copy: the shared built-in harness
    values = {"RUNS_DIR": str(runs_dir), "REPO_ROOT": str(REPO_ROOT), "BENCH": str(bench), "HARNESS": str(harness),
              "PORT": str(listeners.port), "ABSTRACT": listeners.abstract, "CANARY_KEY": CANARY_KEY,
              **answer_keys(bench)}
    # Two runs side by side (one per core on a 2-core CI machine), each with half of the cases.
    parts = [CASES[i::PARTS] for i in range(PARTS)]
    bench_hash = tree_hash(bench) + tree_hash(harness)
    shm_before = set(os.listdir("/dev/shm")) if os.path.isdir("/dev/shm") else set()
    env = dict(os.environ, OPENAI_API_KEY=CANARY_KEY, AUTORESEARCH_TEST_API_KEY=CANARY_KEY, COLUMNS="200")
    started = time.monotonic()
    procs = []
    for i, part in enumerate(parts):
        proposals = root / f"adversarial-{i}.jsonl"
        proposals.write_text("\n".join(_fill(c.line, values) for c in part) + "\n")
        procs.append(subprocess.Popen([AUTORESEARCH, "run", "--benchmark", str(bench), "--proposals-file",
                                       str(proposals), "--seeds", "2", "--runs-dir", str(runs_dir / f"part{i}")],
                                      stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env))
    outputs = [p.communicate(timeout=1500) for p in procs]
    wall = time.monotonic() - started
    run_dirs, summaries, by_name = [], [], {}
    for i, part in enumerate(parts):
        runs = [d for d in (runs_dir / f"part{i}").iterdir() if (d / "ledger.sqlite").is_file()]
        assert len(runs) == 1, (procs[i].returncode, outputs[i][0][-3000:], outputs[i][1][-3000:])
        shown = subprocess.run([AUTORESEARCH, "show", str(runs[0]), "--json"], capture_output=True, text=True)
        assert shown.returncode == 0, shown.stderr
        summary = json.loads(shown.stdout)
        by_index = {p["index"]: p for p in summary["proposals"]}
        by_name.update({c.name: by_index.get(j) for j, c in enumerate(part, start=1)})
        run_dirs.append(runs[0])
        summaries.append(summary)
    listeners.close()
    return SuiteRun(run_dirs=run_dirs, parts=parts, runs_dir=runs_dir, bench=bench, bench_hash_before=bench_hash,
                    bench_hash_after=tree_hash(bench) + tree_hash(harness), summaries=summaries, by_name=by_name,
                    listeners=listeners, wall_seconds=wall, returncodes=[p.returncode for p in procs],
                    output="\n".join(o[0][-3000:] + o[1][-3000:] for o in outputs), host_shm_before=shm_before)
