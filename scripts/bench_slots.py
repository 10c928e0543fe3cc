"""Gated decisions per hour with 1 and 2 local trial slots, for the sequential gate and a fixed-k
design, on each benchmark asked for, measured in one run.

Runs the same small proposals file (a real improvement, a no-op, a second real improvement) as a
fresh run (no cache shared) per benchmark x design x slots, and prints decisions per hour and the
ratios: 2 slots / 1 slot, and sequential / fixed k. The decisions of the 1- and 2-slot runs of one
design must agree (slots change wall time, nothing else); the run's secret is fixed so that both
runs of a design draw the same seeds.

With ``--against REF`` the same proposals also run, in this run, through the CLI of the package as
it was at git REF (its default gate, one slot), and each design's decisions per hour is printed as a
ratio to it: how many times the decisions per hour of that code this machine now makes.

    .venv/bin/python scripts/bench_slots.py [--benchmarks digits-mlp,mnist5k-cnn] [--fixed-k 5] [--proposals 3]
                                            [--against REF]
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import sqlite3
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


def package_at(ref: str, into: Path) -> Path:
    """A copy of the package as it was at git ``ref``, laid out as pyproject's package-dir mapping
    installs it (agent/, sandbox/, baselines/ and prompts/ inside autoresearch/); put first on
    PYTHONPATH, it is imported instead of the editable install."""
    src, pkg = into / "src", into / "pkg"
    src.mkdir(parents=True)
    archive = subprocess.run(["git", "-C", str(REPO), "archive", ref], check=True, capture_output=True).stdout
    subprocess.run(["tar", "-x", "-C", str(src)], input=archive, check=True)
    shutil.copytree(src / "autoresearch", pkg / "autoresearch")
    for folder in ("agent", "sandbox", "baselines", "prompts"):
        if (src / folder).is_dir():
            shutil.copytree(src / folder, pkg / "autoresearch" / folder)
    return pkg


def one_run(benchmark: str, design: list[str], slots: int, proposals: int, workdir: Path,
            package: Path | None = None) -> tuple[float, list]:
    """Wall seconds of one fresh run (setup, baseline and every proposal) and its decisions. With
    ``package``, the CLI of that copy of the package runs (an older ref), else the installed one."""
    lines = workdir / "proposals.jsonl"
    lines.write_text("\n".join(json.dumps(p) for p in proposals_for(benchmark)[:proposals]) + "\n")
    runs = workdir / f"runs-{benchmark}-{'-'.join(design)}-{slots}-{'ref' if package else 'now'}"
    cli = [sys.executable, "-c", "import sys; from autoresearch.cli import main; sys.argv[0] = 'autoresearch'; main()"] \
        if package else [AUTORESEARCH]
    env = dict(os.environ, AUTORESEARCH_RUN_SECRET=SECRET, **({"PYTHONPATH": str(package)} if package else {}))
    started = time.perf_counter()
    out = subprocess.run([*cli, "run", "--benchmark", benchmark, "--proposals-file", str(lines),
                          "--runs-dir", str(runs), *design, "--slots", str(slots), "--no-verify", "--device", "cpu"],
                         capture_output=True, text=True, env=env, cwd=workdir)
    seconds = time.perf_counter() - started
    if out.returncode != 0:
        sys.exit(f"{benchmark} {design} with {slots} slot(s) failed:\n{out.stdout[-2000:]}\n{out.stderr[-2000:]}")
    (run_dir,) = list(runs.iterdir())
    shown = json.loads(subprocess.run([*cli, "show", str(run_dir), "--json"], capture_output=True,
                                      text=True, check=True, env=env, cwd=workdir).stdout)
    decisions = [(p["index"], p["decision"], p["reason"],
                  sum(t["role"] == "candidate" for t in p.get("per_seed", p.get("trials", []))))
                 for p in shown["proposals"]]
    # Every trial the run trained, the incumbents' and those trained ahead of a look that never came.
    trained = sqlite3.connect(run_dir / "ledger.sqlite").execute("SELECT count(*) FROM trials").fetchone()[0]
    return seconds, decisions, trained


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--benchmarks", default="digits-mlp,mnist5k-cnn")
    parser.add_argument("--fixed-k", type=int, default=5)
    parser.add_argument("--proposals", type=int, default=3, choices=(1, 2, 3))
    parser.add_argument("--against", metavar="REF", help="also run the package at this git ref (its default gate, "
                                                         "1 slot) and print each design's ratio to it")
    parser.add_argument("--slots", default="1,2", help="slot counts to measure, e.g. 1 or 1,2")
    args = parser.parse_args()
    slot_counts = [int(n) for n in args.slots.split(",")]
    designs = {"sequential": [], f"fixed k={args.fixed_k}": ["--seeds", str(args.fixed_k)]}
    print(f"machine: {os.cpu_count()} cores; {args.proposals} proposals per run; no verification; load at start "
          f"{os.getloadavg()[0]:.2f}")
    print(f"{'benchmark':<14} {'design':<12} {'slots':>5} {'wall s':>8} {'decisions/h':>12} {'cand. seeds/decision':>21} "
          f"{'trials trained':>15}  decisions")
    failed = False
    with tempfile.TemporaryDirectory() as tmp:
        for benchmark in args.benchmarks.split(","):
            per_hour = {}
            if args.against:
                with tempfile.TemporaryDirectory() as old:
                    seconds, decisions, trained = one_run(benchmark, [], 1, args.proposals, Path(tmp),
                                                          package=package_at(args.against, Path(old)))
                per_hour["ref"] = len(decisions) * 3600 / seconds
                seeds = sum(d[3] for d in decisions) / max(len(decisions), 1)
                print(f"{benchmark:<14} {'at ' + args.against[:9]:<12} {1:>5} {seconds:8.1f} {per_hour['ref']:12.1f} "
                      f"{seeds:21.1f} {trained:15d}  {[d[1][:3] + ':' + d[2] for d in decisions]}", flush=True)
            for name, design in designs.items():
                results = {}
                for slots in slot_counts:
                    seconds, decisions, trained = one_run(benchmark, design, slots, args.proposals, Path(tmp))
                    results[slots] = decisions
                    per_hour[name, slots] = len(decisions) * 3600 / seconds
                    seeds = sum(d[3] for d in decisions) / max(len(decisions), 1)
                    print(f"{benchmark:<14} {name:<12} {slots:>5} {seconds:8.1f} {per_hour[name, slots]:12.1f} "
                          f"{seeds:21.1f} {trained:15d}  {[d[1][:3] + ':' + d[2] for d in decisions]}", flush=True)
                if "ref" in per_hour:
                    print(f"{'':<14} {name:<12} 1 slot / the code at {args.against}: "
                          f"{per_hour[name, 1] / per_hour['ref']:.2f}x decisions per hour")
                if 2 in results:
                    same = results[1] == results[2]
                    failed |= not same
                    print(f"{'':<14} {name:<12} 2 slots / 1 slot: {per_hour[name, 2] / per_hour[name, 1]:.2f}x; "
                          f"decisions identical: {same}")
            if 2 not in slot_counts:
                continue
            fixed = f"fixed k={args.fixed_k}"
            print(f"{'':<14} sequential / {fixed}, decisions per hour: 1 slot "
                  f"{per_hour['sequential', 1] / per_hour[fixed, 1]:.2f}x, 2 slots "
                  f"{per_hour['sequential', 2] / per_hour[fixed, 2]:.2f}x")
    if failed:
        sys.exit(1)


if __name__ == "__main__":
    main()
