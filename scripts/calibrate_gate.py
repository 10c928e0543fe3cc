"""Calibration of the gate on the real product: N no-effect proposals through the real pipeline.

Each proposal only shifts the random stream its training draws from (it takes k extra numbers from
the generator ``fit`` is handed, k = 1..N): no method changes, so every "improvement" is noise.
All of them run through the real engine (sandbox, harness, trusted scoring, the benchmark's
sequential gate) at m = N, and every proposal is then trained on the run's first ``--seeds`` gate
seeds (cached trials are reused), so that the same trials also show what two common loops would
have kept: keep-if-better on one seed (the first gate seed), and keep-if-better on the mean over
those seeds. Prints one table from this one run.

    .venv/bin/python scripts/calibrate_gate.py [--proposals 20] [--seeds 5] [--benchmark digits-mlp]
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

import numpy as np

from autoresearch.agent.proposal import parse_proposal_json
from autoresearch.config import RunConfig
from autoresearch.engine import RunEngine

ANCHOR = "    n = x.shape[0]\n"


def no_effect(k: int) -> str:
    return json.dumps({"title": f"shift the random stream by {k}", "hypothesis": "no effect: calibration",
                       "edits": [{"path": "train.py", "search": ANCHOR,
                                  "replace": f"    torch.rand({k}, generator=generator)  # calibration: no effect\n"
                                             + ANCHOR}]})


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--benchmark", default="digits-mlp")
    parser.add_argument("--proposals", type=int, default=20)
    parser.add_argument("--seeds", type=int, default=5)
    parser.add_argument("--slots", type=int, default=1)
    args = parser.parse_args()

    started = time.perf_counter()
    with tempfile.TemporaryDirectory() as tmp:
        config = RunConfig(benchmark=args.benchmark, runs_dir=Path(tmp) / "runs", proposals=args.proposals,
                           verify=False, slots=args.slots)
        engine = RunEngine.create(config)
        seeds = engine.gate_seeds[:args.seeds]
        incumbent = {t.seed: t.test_metric for t in engine.ensure_baseline(args.seeds)}
        inc = np.array([incumbent[s] for s in seeds])
        rows = []
        for k in range(1, args.proposals + 1):
            line = no_effect(k)
            record = engine.evaluate(k, line, parse_proposal_json(line), source="calibration")
            files = engine.repo.files_at(record.commit)
            cand = {t.seed: t.test_metric for t in engine.run_trials(files, seeds, role="candidate", proposal_idx=k)}
            c = np.array([cand[s] for s in seeds], dtype=float)
            rows.append((k, record.decision, record.reason, c[0] - inc[0], float(np.mean(c - inc)),
                         len(record.candidate_trials)))
            print(f"  proposal {k:3d}: gate {record.decision:8s} ({record.reason}); seed-1 diff {c[0] - inc[0]:+.4f}; "
                  f"mean diff {np.mean(c - inc):+.4f}; gate used {len(record.candidate_trials)} seeds", flush=True)
    seconds = time.perf_counter() - started

    def kept(values: list[float]) -> str:
        wins = [v for v in values if v > 0]
        return f"{len(wins):3d} of {len(values)}" + (f", claimed gain {np.mean(wins):+.4f}" if wins else "")

    n = len(rows)
    print(f"\n{n} no-effect proposals on {args.benchmark}, {len(seeds)} seeds each (gate at m = {n}), "
          f"{seconds / 60:.1f} min")
    print(f"{'rule':<44} kept")
    print(f"{'the gate (this tool, sequential)':<44} {sum(r[1] == 'accepted' for r in rows):3d} of {n}"
          f"  (mean {np.mean([r[5] for r in rows]):.1f} seeds per decision)")
    print(f"{'keep-if-better on one seed (the first)':<44} {kept([r[3] for r in rows])}")
    print(f"{'keep-if-better on the mean of all seeds':<44} {kept([r[4] for r in rows])}")
    reasons: dict[str, int] = {}
    for r in rows:
        reasons[r[2]] = reasons.get(r[2], 0) + 1
    print("gate reasons: " + ", ".join(f"{k} {v}" for k, v in sorted(reasons.items())))


if __name__ == "__main__":
    main()
