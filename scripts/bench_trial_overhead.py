"""Where the time of one gated proposal goes on the default benchmark, and what the sandbox costs.

Prints, for one gated proposal (k candidate seeds; incumbent trials pre-cached as in a real run):
sandbox start, train, predict, trusted scoring and bookkeeping (ledger, git, report), and the
overhead ratio against running the same harness + training code bare (plain subprocesses, no
sandbox, no gate), all measured in this one run.

    .venv/bin/python scripts/bench_trial_overhead.py [--seeds 5] [--benchmark digits-mlp]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from autoresearch import engine as engine_module
from autoresearch.agent.proposal import parse_proposal_json
from autoresearch.config import RunConfig
from autoresearch.engine import RunEngine
from autoresearch.sandbox import trial as trial_module
from autoresearch.sandbox.isolation import Limits, run_sandboxed

ADAM = json.dumps({"title": "Adam", "hypothesis": "bench", "edits": [
    {"path": "optim.py", "search": "optimizer = torch.optim.SGD(params, lr=0.01)",
     "replace": "optimizer = torch.optim.Adam(params, lr=1e-3)"}]})


def sandbox_start_cost(isolation: str, repeats: int = 5) -> float:
    """Extra seconds a sandboxed process start costs over a bare one (python -c pass)."""
    bare, boxed = [], []
    for _ in range(repeats):
        t = time.perf_counter()
        subprocess.run([sys.executable, "-I", "-c", "pass"], check=True)
        bare.append(time.perf_counter() - t)
        res = run_sandboxed([sys.executable, "-I", "-c", "pass"], mounts=[], limits=Limits(wall_seconds=30),
                            isolation=isolation)
        boxed.append(res.wall_seconds)
    return max(0.0, statistics.median(boxed) - statistics.median(bare))


def bare_run(bench, data, files_dir: Path, seeds: list[int], config: dict) -> float:
    """The same harness and training code as plain subprocesses: no sandbox, no scoring, no records."""
    total = 0.0
    for seed in seeds:
        with tempfile.TemporaryDirectory() as out:
            t = time.perf_counter()
            subprocess.run([sys.executable, "-I", "-B", str(bench.harness_dir / "run_train.py"), "--repo", str(files_dir),
                            "--data", str(data.public_dir / "train"), "--out", out, "--seed", str(seed),
                            "--config", json.dumps(config)], check=True, capture_output=True)
            subprocess.run([sys.executable, "-I", "-B", str(bench.harness_dir / "run_predict.py"), "--repo",
                            str(files_dir), "--data", str(data.public_dir / "predict"), "--checkpoint", out, "--out", out,
                            "--config", json.dumps(config)], check=True, capture_output=True)
            total += time.perf_counter() - t
    return total


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--benchmark", default="digits-mlp")
    parser.add_argument("--seeds", type=int, default=5)
    args = parser.parse_args()

    with tempfile.TemporaryDirectory() as tmp:
        config = RunConfig(benchmark=args.benchmark, runs_dir=Path(tmp) / "runs", proposals=1, seeds=args.seeds,
                           screen=False, verify=False)
        engine = RunEngine.create(config)
        engine.ensure_baseline()  # incumbent trials cached, as in any run after the first proposal

        timings = {"train": 0.0, "predict": 0.0, "scoring": 0.0, "trial_starts": 0}
        real_run_trial, real_score = trial_module.run_trial, engine_module.score

        def timed_run_trial(req):
            out = real_run_trial(req)
            timings["train"] += out.train.run
            timings["predict"] += out.predict.run
            timings["trial_starts"] += 2
            return out

        def timed_score(*a, **kw):
            t = time.perf_counter()
            try:
                return real_score(*a, **kw)
            finally:
                timings["scoring"] += time.perf_counter() - t

        # Bare runs before and after the gated proposal, averaged: other load on the machine then
        # weighs on both sides of the ratio alike.
        adam_files = engine.repo.files_at(engine.repo.baseline)
        adam_files["optim.py"] = adam_files["optim.py"].replace("torch.optim.SGD(params, lr=0.01)",
                                                                "torch.optim.Adam(params, lr=1e-3)")
        files_dir = engine.workspace(adam_files, "bench-bare")
        bare_before = bare_run(engine.bench, engine.data, files_dir, engine.gate_seeds, engine._trial_config())
        engine_module.run_trial = timed_run_trial
        engine_module.score = timed_score
        t0 = time.perf_counter()
        record = engine.evaluate(1, ADAM, parse_proposal_json(ADAM), source="bench")
        total = time.perf_counter() - t0
        engine_module.run_trial, engine_module.score = real_run_trial, real_score

        start_each = sandbox_start_cost(engine.isolation)
        sandbox_start = start_each * timings["trial_starts"]
        train = timings["train"] - start_each * timings["trial_starts"] / 2
        predict = timings["predict"] - start_each * timings["trial_starts"] / 2
        bookkeeping = total - timings["train"] - timings["predict"] - timings["scoring"]

        bare_after = bare_run(engine.bench, engine.data, files_dir, engine.gate_seeds, engine._trial_config())
        bare = (bare_before + bare_after) / 2

    print(f"benchmark: {args.benchmark}; seeds per gated proposal: {args.seeds}; isolation: {engine.isolation}; "
          f"decision: {record.decision} ({record.reason})")
    print(f"time per gated proposal: {total:.2f}s")
    rows = [("sandbox start", sandbox_start), ("train (incl. interpreter + torch import)", train),
            ("predict (incl. interpreter + torch import)", predict), ("trusted scoring", timings["scoring"]),
            ("bookkeeping (ledger, git, report, workspace, hashing)", bookkeeping)]
    for name, seconds in rows:
        print(f"  {name:<55} {seconds:7.2f}s  {seconds / total:6.1%}")
    print(f"bare run of the same harness + training code (no sandbox, no gate): {bare:.2f}s "
          f"(before {bare_before:.2f}s, after {bare_after:.2f}s)")
    print(f"overhead ratio (gated proposal / bare): {total / bare:.2f}x")
    print(f"sandbox start per process: {start_each * 1000:.0f} ms; load average: {os.getloadavg()[0]:.2f}")


if __name__ == "__main__":
    main()
