"""Gated decisions per hour with 1 and 2 local trial slots, for the sequential gate and a fixed-k
design, on each benchmark asked for, measured in one run.

Runs the same small proposals file (a real improvement, a no-op, a second real improvement) as a
fresh run (no cache shared) per benchmark x design x slots, and prints decisions per hour and the
ratios: 2 slots / 1 slot, and sequential / fixed k. The decisions of the 1- and 2-slot runs of one
design must agree (slots change wall time, nothing else); the run's secret is fixed so that both
runs of a design draw the same seeds.

    .venv/bin/python scripts/bench_slots.py [--benchmarks digits-mlp,mnist5k-cnn] [--fixed-k 5] [--proposals 3]
"""

from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
AUTORESEARCH = str(Path(sys.executable).parent / "autoresearch")



def proposals_for(benchmark: str) -> list[dict]:
    """A real improvement (Adam in place of the baseline's SGD line), a no-op, and a second change on
    top of the first. Each changes the code, so each is trained on its own seeds."""
    from autoresearch.benchmark import load_benchmark

    optim = load_benchmark(benchmark).template_files()["optim.py"]
    optim = optim.decode() if isinstance(optim, bytes) else optim
    sgd = re.search(r"optimizer = torch\.optim\.SGD\(params, lr=[0-9.e-]+\)", optim).group(0)
    return [
        {"title": "Adam optimizer", "hypothesis": "adaptive steps", "edits": [{"path": "optim.py",
         "search": sgd, "replace": "optimizer = torch.optim.Adam(params, lr=1e-3)"}]},
        {"title": "Comment only", "hypothesis": "no effect", "edits": [{"path": "train.py",
         "search": "    loss_fn = nn.CrossEntropyLoss()", "replace": "    # cross-entropy\n    loss_fn = nn.CrossEntropyLoss()"}]},
        {"title": "Adam at lr 3e-3", "hypothesis": "a larger step", "edits": [{"path": "optim.py",
         "search": "optimizer = torch.optim.Adam(params, lr=1e-3)",
         "replace": "optimizer = torch.optim.Adam(params, lr=3e-3)"}]},
    ]


SECRET = "5e" * 32  # one secret for every run: the same seeds for each pair of runs compared


def one_run(benchmark: str, design: list[str], slots: int, proposals: int, workdir: Path) -> tuple[float, list]:
    lines = workdir / "proposals.jsonl"
    lines.write_text("\n".join(json.dumps(p) for p in proposals_for(benchmark)[:proposals]) + "\n")
    runs = workdir / f"runs-{benchmark}-{'-'.join(design)}-{slots}"
    started = time.perf_counter()
    out = subprocess.run([AUTORESEARCH, "run", "--benchmark", benchmark, "--proposals-file", str(lines),
                          "--runs-dir", str(runs), *design, "--slots", str(slots), "--no-verify", "--device", "cpu"],
                         capture_output=True, text=True, env=dict(os.environ, AUTORESEARCH_RUN_SECRET=SECRET))
    seconds = time.perf_counter() - started
    if out.returncode != 0:
        sys.exit(f"{benchmark} {design} with {slots} slot(s) failed:\n{out.stdout[-2000:]}\n{out.stderr[-2000:]}")
    (run_dir,) = list(runs.iterdir())
    shown = json.loads(subprocess.run([AUTORESEARCH, "show", str(run_dir), "--json"], capture_output=True,
                                      text=True, check=True).stdout)
    decisions = [(p["index"], p["decision"], p["reason"], sum(t["role"] == "candidate" for t in p["per_seed"]))
                 for p in shown["proposals"]]
    return seconds, decisions


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--benchmarks", default="digits-mlp,mnist5k-cnn")
    parser.add_argument("--fixed-k", type=int, default=5)
    parser.add_argument("--proposals", type=int, default=3, choices=(1, 2, 3))
    args = parser.parse_args()
    designs = {"sequential": [], f"fixed k={args.fixed_k}": ["--seeds", str(args.fixed_k)]}
    print(f"machine: {os.cpu_count()} cores; {args.proposals} proposals per run; no verification; load at start "
          f"{os.getloadavg()[0]:.2f}")
    print(f"{'benchmark':<14} {'design':<12} {'slots':>5} {'wall s':>8} {'decisions/h':>12} {'cand. seeds/decision':>21}  decisions")
    failed = False
    with tempfile.TemporaryDirectory() as tmp:
        for benchmark in args.benchmarks.split(","):
            per_hour = {}
            for name, design in designs.items():
                results = {}
                for slots in (1, 2):
                    seconds, decisions = one_run(benchmark, design, slots, args.proposals, Path(tmp))
                    results[slots] = decisions
                    per_hour[name, slots] = len(decisions) * 3600 / seconds
                    seeds = sum(d[3] for d in decisions) / max(len(decisions), 1)
                    print(f"{benchmark:<14} {name:<12} {slots:>5} {seconds:8.1f} {per_hour[name, slots]:12.1f} "
                          f"{seeds:21.1f}  {[d[1][:3] + ':' + d[2] for d in decisions]}", flush=True)
                same = results[1] == results[2]
                failed |= not same
                print(f"{'':<14} {name:<12} 2 slots / 1 slot: {per_hour[name, 2] / per_hour[name, 1]:.2f}x; "
                      f"decisions identical: {same}")
            fixed = f"fixed k={args.fixed_k}"
            print(f"{'':<14} sequential / {fixed}, decisions per hour: 1 slot "
                  f"{per_hour['sequential', 1] / per_hour[fixed, 1]:.2f}x, 2 slots "
                  f"{per_hour['sequential', 2] / per_hour[fixed, 2]:.2f}x")
    if failed:
        sys.exit(1)


if __name__ == "__main__":
    main()
