"""What one gated code version costs against running the same seeds bare, measured in one run.

Prints, for one gated proposal (k candidate seeds, one train and one predict sandbox; the
incumbent's trials cached, as in any run after the first proposal): the wall time of the whole
proposal split into the train phase, the predict phase and the rest (scoring, integrity checks,
ledger, git, report), the seconds spent inside the seeds' own children, and the cost of the same
seeds run bare: one plain Python process that imports torch once and trains and predicts every
seed with the same code (no sandbox, no fork, no checks, no records). Bare runs go before and
after the gated one and are averaged, so other load on the machine weighs on both sides.

With ``--against REF`` it also runs this script on a copy of the package as it was at git REF (e.g.
the landed code before a change), in the same run, and prints both figures and their ratio.

    .venv/bin/python scripts/bench_trial_overhead.py [--seeds 5] [--benchmark digits-mlp] [--against REF]
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

from autoresearch.agent.proposal import parse_proposal_json
from autoresearch.config import RunConfig
from autoresearch.engine import RunEngine

ADAM = json.dumps({"title": "Adam", "hypothesis": "bench", "edits": [
    {"path": "optim.py", "search": "optimizer = torch.optim.SGD(params, lr=0.01)",
     "replace": "optimizer = torch.optim.Adam(params, lr=1e-3)"}]})

BARE = r"""
import json, sys, time
import numpy as np, torch
repo, train_dir, predict_dir, config, seeds = sys.argv[1], sys.argv[2], sys.argv[3], json.loads(sys.argv[4]), json.loads(sys.argv[5])
torch.set_num_threads(int(config["threads"]))
sys.path.insert(0, repo)
import model, train
x = torch.from_numpy(np.load(train_dir + "/train_x.npy")); y = torch.from_numpy(np.load(train_dir + "/train_y.npy"))
inputs = torch.from_numpy(np.load(predict_dir + "/inputs.npy"))
for seed in seeds:
    torch.manual_seed(seed)
    net = model.build_model(tuple(x.shape[1:]), int(config["num_classes"]))
    train.fit(net, x, y, epochs=int(config["epochs"]), batch_size=int(config["batch_size"]),
              generator=torch.Generator().manual_seed(seed), device=torch.device("cpu"))
    net.eval()
    with torch.inference_mode():
        logits = torch.cat([net(inputs[i:i + 500]) for i in range(0, inputs.shape[0], 500)])
"""


def trial_config(engine: RunEngine) -> dict:
    """The trial config (epochs, batch, threads, device): on the engine's trial cache since the
    engine split, on the engine itself before (``--against`` an older ref)."""
    cache = getattr(engine, "trials", None)
    return cache.trial_config() if cache is not None else engine._trial_config()


def bare_run(repo: Path, engine: RunEngine) -> float:
    """One plain process: import torch once, then every gate seed trained and predicted in it."""
    t = time.perf_counter()
    subprocess.run([sys.executable, "-c", BARE, str(repo), str(engine.data.train_dir), str(engine.data.predict_dir),
                    json.dumps(trial_config(engine)), json.dumps(engine.gate_seeds)], check=True)
    return time.perf_counter() - t


def measure(benchmark: str, seeds: int) -> dict:
    with tempfile.TemporaryDirectory() as tmp:
        config = RunConfig(benchmark=benchmark, runs_dir=Path(tmp) / "runs", proposals=1, seeds=seeds, verify=False)
        try:  # the executor a CLI run uses: its slot keeps a pair of sandboxes started ahead
            from autoresearch.sandbox.executors import make_executor

            executor = make_executor(config)
        except ImportError:  # an older ref
            executor = None
        engine = RunEngine.create(config, executor=executor)
        # Incumbent trials cached, as in any run after the first proposal; the pair started ahead
        # beside them warms up while the first bare run goes (in a run: while the agent drafts).
        engine.ensure_baseline()
        adam = engine.repo.files_at(engine.repo.baseline)
        adam["optim.py"] = adam["optim.py"].replace("torch.optim.SGD(params, lr=0.01)", "torch.optim.Adam(params, lr=1e-3)")
        repo = engine.workspace(adam, "bench-bare")
        before = bare_run(repo, engine)
        t0 = time.perf_counter()
        record = engine.evaluate(1, ADAM, parse_proposal_json(ADAM), source="bench")
        total = time.perf_counter() - t0
        cold = None
        if executor is not None:
            # The same measure with no sandbox started ahead (a run's first request, or one that
            # follows its predecessor too closely): a second change, its pair started on demand.
            executor.close()
            executor.warm = False
            second = json.dumps({"title": "Adam 2e-3", "hypothesis": "bench", "edits": [  # on the accepted Adam
                {"path": "optim.py", "search": "torch.optim.Adam(params, lr=1e-3)",
                 "replace": "torch.optim.Adam(params, lr=2e-3)"}]})
            t1 = time.perf_counter()
            engine.evaluate(2, second, parse_proposal_json(second), source="bench")
            cold = time.perf_counter() - t1
        after = bare_run(repo, engine)
        trials = record.candidate_trials
        train_phase = max(t.summary["train"]["sandbox"] for t in trials)
        predict_phase = max(t.summary["predict"]["sandbox"] for t in trials)
        in_children = sum(t.summary["train"]["run"] + t.summary["predict"]["run"] for t in trials)
        return {"benchmark": benchmark, "seeds": seeds, "isolation": engine.isolation,
                "ahead": max(t.summary["train"].get("ahead", 0.0) for t in trials), "cold": cold,
                "decision": f"{record.decision} ({record.reason})", "total": total, "train_phase": train_phase,
                "predict_phase": predict_phase, "rest": total - train_phase - predict_phase,
                "in_children": in_children, "bare": (before + after) / 2, "bare_before": before, "bare_after": after}


def landed_figure(ref: str, benchmark: str, seeds: int) -> float:
    """This script's 'time per gated proposal' for the code at ``ref``: a copy of that tree's package
    put first on the path (the editable install's finder comes after every path entry)."""
    from bench_slots import package_at  # this script's folder is first on sys.path

    with tempfile.TemporaryDirectory() as tmp:
        pkg = package_at(ref, Path(tmp))
        # This script (not the one at ref) on ref's package: the same measure of the older code.
        out = subprocess.run([sys.executable, str(Path(__file__).resolve()), "--seeds", str(seeds),
                              "--benchmark", benchmark], check=True, capture_output=True, text=True,
                             env=dict(os.environ, PYTHONPATH=str(pkg)), cwd=tmp)
    found = re.search(r"time per gated proposal: ([0-9.]+)s", out.stdout)
    if not found:
        raise SystemExit(f"no figure from {ref}:\n{out.stdout[-2000:]}\n{out.stderr[-2000:]}")
    return float(found.group(1))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--benchmark", default="digits-mlp")
    parser.add_argument("--seeds", type=int, default=5)
    parser.add_argument("--against", metavar="REF", help="also measure the code at this git ref, in this run")
    args = parser.parse_args()

    landed = landed_figure(args.against, args.benchmark, args.seeds) if args.against else None
    m = measure(args.benchmark, args.seeds)
    total = m["total"]
    print(f"benchmark: {m['benchmark']}; seeds per gated proposal: {m['seeds']}; isolation: {m['isolation']}; "
          f"decision: {m['decision']}")
    print(f"time per gated proposal: {total:.2f}s (its sandboxes were up {m['ahead']:.1f}s before their orders)")
    rows = [("train phase from its orders (the sandbox may have started ahead)", m["train_phase"]),
            ("predict phase from its orders (it started with train, or ahead)", m["predict_phase"]),
            ("scoring, integrity checks, ledger, git, report, workspace", m["rest"])]
    for name, seconds in rows:
        print(f"  {name:<62} {seconds:7.2f}s  {seconds / total:6.1%}")
    print(f"  (inside the seeds' own children: {m['in_children']:.2f}s)")
    print(f"bare in-process run of the same seeds (one process, one torch import, no sandbox, no checks): "
          f"{m['bare']:.2f}s (before {m['bare_before']:.2f}s, after {m['bare_after']:.2f}s)")
    print(f"gated cost per code version / bare in-process cost: {total / m['bare']:.2f}x")
    if m["cold"] is not None:
        print(f"  the same with no sandbox started ahead (a second change, its pair started on demand): "
              f"{m['cold']:.2f}s, {m['cold'] / m['bare']:.2f}x")
    if landed is not None:
        print(f"the same measure at {args.against}: time per gated proposal {landed:.2f}s; now / then: "
              f"{total / landed:.2f}x")
    print(f"load average: {os.getloadavg()[0]:.2f}")


if __name__ == "__main__":
    main()
