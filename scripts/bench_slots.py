"""Throughput of the gate with 1 and 2 local trial slots on this machine, measured in one run.

Runs the same small proposals file on the same benchmark twice (slots 1, then slots 2), each as a
fresh run (no cache shared), and prints gated proposals per hour for each and their ratio. The
decisions of the two runs must agree (parallel slots change wall time, nothing else).

    .venv/bin/python scripts/bench_slots.py [--benchmark digits-mlp] [--seeds 2] [--proposals 2]
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
AUTORESEARCH = str(Path(sys.executable).parent / "autoresearch")

# Each proposal changes the code, so each is trained on every gate seed (no screen shortcut).
PROPOSALS = [
    {"title": "Adam optimizer", "hypothesis": "adaptive steps", "edits": [{"path": "optim.py",
     "search": "optimizer = torch.optim.SGD(params, lr=0.01)", "replace": "optimizer = torch.optim.Adam(params, lr=1e-3)"}]},
    {"title": "Comment only", "hypothesis": "no effect", "edits": [{"path": "train.py",
     "search": "    loss_fn = nn.CrossEntropyLoss()", "replace": "    # cross-entropy\n    loss_fn = nn.CrossEntropyLoss()"}]},
    {"title": "Momentum", "hypothesis": "heavy ball", "edits": [{"path": "optim.py",
     "search": "optimizer = torch.optim.SGD(params, lr=0.01)",
     "replace": "optimizer = torch.optim.SGD(params, lr=0.01, momentum=0.9)"}]},
]


def one_run(slots: int, args, workdir: Path) -> tuple[float, list]:
    proposals = workdir / "proposals.jsonl"
    proposals.write_text("\n".join(json.dumps(p) for p in PROPOSALS[:args.proposals]) + "\n")
    runs = workdir / f"runs-{slots}"
    started = time.perf_counter()
    out = subprocess.run([AUTORESEARCH, "run", "--benchmark", args.benchmark, "--proposals-file", str(proposals),
                          "--runs-dir", str(runs), "--seeds", str(args.seeds), "--slots", str(slots), "--no-screen",
                          "--no-verify", "--device", "cpu"], capture_output=True, text=True)
    seconds = time.perf_counter() - started
    if out.returncode != 0:
        sys.exit(f"run with {slots} slot(s) failed:\n{out.stdout[-2000:]}\n{out.stderr[-2000:]}")
    (run_dir,) = list(runs.iterdir())
    shown = json.loads(subprocess.run([AUTORESEARCH, "show", str(run_dir), "--json"], capture_output=True,
                                      text=True, check=True).stdout)
    return seconds, [(p["index"], p["decision"], p["reason"]) for p in shown["proposals"]]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--benchmark", default="digits-mlp")
    parser.add_argument("--seeds", type=int, default=2)
    parser.add_argument("--proposals", type=int, default=2, choices=(1, 2, 3))
    args = parser.parse_args()
    import os

    with tempfile.TemporaryDirectory() as tmp:
        results = {slots: one_run(slots, args, Path(tmp)) for slots in (1, 2)}
    per_hour = {slots: args.proposals * 3600 / seconds for slots, (seconds, _) in results.items()}
    print(f"machine: {os.cpu_count()} cores; benchmark {args.benchmark}; {args.proposals} proposals x "
          f"{args.seeds} seeds (+ {args.seeds} incumbent trials) per run, no screen, no verify")
    for slots, (seconds, _) in results.items():
        print(f"slots {slots}: {seconds:7.1f} s wall, {per_hour[slots]:7.1f} gated proposals/hour")
    print(f"ratio (2 slots / 1 slot): {per_hour[2] / per_hour[1]:.2f}x")
    same = results[1][1] == results[2][1]
    print(f"decisions identical: {same} {results[1][1]}")
    if not same:
        sys.exit(1)


if __name__ == "__main__":
    main()
