"""Gated decisions per hour with pipelining off and on (autoresearch.pipeline), measured in one run.

Two workloads on digits-mlp, each run twice as fresh runs with the same secret (the same seeds),
pipelining off then on; real trials:

  file   3 proposals from a file (Adam, a comment, Adam at lr 3e-3) with --slots 2: with pipelining
         the next proposal trains speculatively on the slot the current one's look leaves free.
  agent  the agent, 3 proposals, --slots 1, its LLM a stand-in on 127.0.0.1 that answers the same
         three proposals after a fixed delay (--llm-seconds, as a local model on a CPU takes; the
         embedded 1.5B model took 35-240 s per call here): with pipelining the next proposal is
         drafted while one is judged.

Prints wall time, decisions per hour, the ratio on / off and whether the decisions agree (they
must for the file; for the agent they agree here because each reply applies to either incumbent).

    .venv/bin/python scripts/bench_pipeline.py [--llm-seconds 20] [--isolation bubblewrap|none]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

AUTORESEARCH = str(Path(sys.executable).parent / "autoresearch")
SECRET = "5e" * 32  # one secret for every run: the same seeds for the runs compared

SGD = "optimizer = torch.optim.SGD(params, lr=0.01)"
PROPOSALS = [
    {"title": "Adam optimizer", "hypothesis": "adaptive steps",
     "edits": [{"path": "optim.py", "search": SGD, "replace": "optimizer = torch.optim.Adam(params, lr=1e-3)"}]},
    {"title": "Comment only", "hypothesis": "no effect",
     "edits": [{"path": "train.py", "search": "    loss_fn = nn.CrossEntropyLoss()",
                "replace": "    # cross-entropy\n    loss_fn = nn.CrossEntropyLoss()"}]},
    {"title": "Adam at lr 3e-3", "hypothesis": "a larger step",
     "edits": [{"path": "optim.py", "search": "torch.optim.Adam(params, lr=1e-3)",
                "replace": "torch.optim.Adam(params, lr=3e-3)"}]},
]


class StandInLLM:
    """An OpenAI-compatible endpoint on 127.0.0.1 that answers chat calls in order from a list,
    each after ``delay`` seconds (one at a time, as one local model would)."""

    def __init__(self, replies: list[str], delay: float):
        self.replies, self.delay, self.lock = list(replies), delay, threading.Lock()
        outer = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args):
                pass

            def _send(self, obj: dict) -> None:
                body = json.dumps(obj).encode()
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def do_GET(self):
                self._send({"object": "list", "data": [{"id": "stand-in", "object": "model"}]})

            def do_POST(self):
                self.rfile.read(int(self.headers.get("Content-Length") or 0))
                with outer.lock:  # one model: calls queue
                    time.sleep(outer.delay)
                    text = outer.replies.pop(0) if outer.replies else json.dumps(
                        {"title": "Nothing", "hypothesis": "-", "edits": []})
                self._send({"id": "x", "object": "chat.completion", "created": int(time.time()), "model": "stand-in",
                            "choices": [{"index": 0, "finish_reason": "stop",
                                         "message": {"role": "assistant", "content": text}}],
                            "usage": {"prompt_tokens": 1000, "completion_tokens": 100, "total_tokens": 1100}})

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        threading.Thread(target=self.httpd.serve_forever, daemon=True).start()

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.httpd.server_address[1]}/v1"

    def close(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()


def one_run(workload: str, pipeline: bool, args, workdir: Path) -> tuple[float, list]:
    runs = workdir / f"runs-{workload}-{'on' if pipeline else 'off'}"
    common = ["--benchmark", "digits-mlp", "--runs-dir", str(runs), "--no-verify", "--device", "cpu",
              "--isolation", args.isolation, "--pipeline" if pipeline else "--no-pipeline"]
    server = None
    if workload == "file":
        lines = workdir / "proposals.jsonl"
        lines.write_text("\n".join(json.dumps(p) for p in PROPOSALS) + "\n")
        cmd = [AUTORESEARCH, "run", "--proposals-file", str(lines), "--slots", "2", *common]
    else:
        server = StandInLLM([json.dumps(p) for p in PROPOSALS], args.llm_seconds)
        cmd = [AUTORESEARCH, "run", "--idea", "adaptive LR optimizer", "--proposals", str(len(PROPOSALS)),
               "--slots", "1", "--llm-base-url", server.base_url, "--model", "stand-in",
               "--edit-format", "search-replace", *common]
    started = time.perf_counter()
    try:
        out = subprocess.run(cmd, capture_output=True, text=True, env=dict(os.environ, AUTORESEARCH_RUN_SECRET=SECRET))
    finally:
        if server is not None:
            server.close()
    seconds = time.perf_counter() - started
    if out.returncode != 0:
        sys.exit(f"{workload} pipeline={pipeline} failed:\n{out.stdout[-2000:]}\n{out.stderr[-2000:]}")
    (run_dir,) = list(runs.iterdir())
    shown = json.loads(subprocess.run([AUTORESEARCH, "show", str(run_dir), "--json"], capture_output=True,
                                      text=True, check=True).stdout)
    decisions = [(p["index"], p["decision"], p["reason"]) for p in shown["proposals"]]
    return seconds, decisions


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--llm-seconds", type=float, default=20.0)
    parser.add_argument("--isolation", choices=("bubblewrap", "none"), default="bubblewrap")
    parser.add_argument("--workloads", default="file,agent")
    args = parser.parse_args()
    print(f"machine: {os.cpu_count()} cores; load at start {os.getloadavg()[0]:.2f}; isolation {args.isolation}; "
          f"{len(PROPOSALS)} proposals per run; stand-in LLM {args.llm_seconds:g}s per call; no verification")
    print(f"{'workload':<8} {'pipeline':>8} {'wall s':>8} {'decisions/h':>12}  decisions")
    failed = False
    with tempfile.TemporaryDirectory() as tmp:
        for workload in args.workloads.split(","):
            per_hour, decided = {}, {}
            for pipeline in (False, True):
                seconds, decisions = one_run(workload, pipeline, args, Path(tmp))
                per_hour[pipeline], decided[pipeline] = len(decisions) * 3600 / seconds, decisions
                print(f"{workload:<8} {'on' if pipeline else 'off':>8} {seconds:8.1f} {per_hour[pipeline]:12.1f}  "
                      f"{[d[2] for d in decisions]}", flush=True)
            same = decided[False] == decided[True]
            failed |= workload == "file" and not same
            print(f"{workload:<8} on / off: {per_hour[True] / per_hour[False]:.2f}x; decisions identical: {same}")
    print(f"load at end {os.getloadavg()[0]:.2f}")
    if failed:
        sys.exit(1)


if __name__ == "__main__":
    main()
