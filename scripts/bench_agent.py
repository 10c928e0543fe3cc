#!/usr/bin/env python
"""How the agent spends its time with the embedded model on this machine.

For each proposal of the given runs (or of a fresh `autoresearch run --idea` with the embedded
local model): seconds split into LLM time and trial time, whether it applied and trained, tokens.

    .venv/bin/python scripts/bench_agent.py                      # fresh run: 2 proposals, 2 seeds
    .venv/bin/python scripts/bench_agent.py --proposals 4 --seeds 5
    .venv/bin/python scripts/bench_agent.py runs/RUN [runs/RUN2 ...]   # analyse finished runs
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sqlite3
import subprocess
import sys
import tempfile
import time
from pathlib import Path

NOT_APPLIED = ("invalid_proposal", "not_editable", "apply_failed")


def analyse(run_dir: Path) -> list[dict]:
    db = sqlite3.connect(run_dir / "ledger.sqlite")
    db.row_factory = sqlite3.Row
    out = []
    for p in db.execute("SELECT * FROM proposals WHERE state = 'finished' ORDER BY idx"):
        calls = db.execute("SELECT COUNT(*) n, COALESCE(SUM(latency_seconds),0) s, COALESCE(SUM(prompt_tokens),0) pt, "
                           "COALESCE(SUM(completion_tokens),0) ct, SUM(error IS NOT NULL) errors FROM llm_calls "
                           "WHERE proposal_idx = ?", (p["idx"],)).fetchone()
        trial_s = 0.0
        trials = db.execute("SELECT summary_json FROM trials WHERE proposal_idx = ?", (p["idx"],)).fetchall()
        for t in trials:
            summary = json.loads(t["summary_json"])
            trial_s += sum(summary.get(phase, {}).get("run", 0.0) or 0.0 for phase in ("train", "predict"))
        out.append({"run": run_dir.name, "idx": p["idx"], "title": p["title"], "reason": p["reason"],
                    "llm_s": calls["s"], "calls": calls["n"], "errors": calls["errors"] or 0,
                    "prompt_tokens": calls["pt"], "completion_tokens": calls["ct"],
                    "trial_s": trial_s, "evaluate_wall_s": p["wall_seconds"] or 0.0,
                    "applied": p["reason"] not in NOT_APPLIED, "trained": len(trials) > 0})
    return out


def fresh_run(proposals: int, seeds: int, idea: str) -> Path:
    runs = Path(tempfile.mkdtemp(prefix="bench-agent-"))
    cmd = [str(Path(sys.executable).parent / "autoresearch"), "run", "--idea", idea, "--proposals", str(proposals),
           "--seeds", str(seeds), "--no-verify", "--runs-dir", str(runs)]
    env = {k: v for k, v in os.environ.items() if k not in ("AUTORESEARCH_LLM_BASE_URL", "OPENAI_BASE_URL")}
    print("running:", " ".join(cmd), flush=True)
    started = time.monotonic()
    subprocess.run(cmd, check=True, env=env, stdout=subprocess.DEVNULL)
    print(f"run took {time.monotonic() - started:.0f}s", flush=True)
    return next(runs.iterdir())


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("runs", nargs="*", type=Path, help="finished run folders (default: start a fresh run)")
    ap.add_argument("--proposals", type=int, default=2)
    ap.add_argument("--seeds", type=int, default=2)
    ap.add_argument("--idea", default="adaptive LR optimizer")
    args = ap.parse_args()
    run_dirs = args.runs or [fresh_run(args.proposals, args.seeds, args.idea)]
    rows = [r for d in run_dirs for r in analyse(d)]
    print(f"machine: {platform.processor() or platform.machine()}, {os.cpu_count()} CPU(s); "
          f"runs: {', '.join(d.name for d in run_dirs)}")
    print(f"{'#':>3} {'llm s':>7} {'trial s':>8} {'eval wall s':>11} {'calls':>5} {'tokens (p+c)':>14} "
          f"{'applied':>7} {'trained':>7}  reason / title")
    for r in rows:
        print(f"{r['idx']:>3} {r['llm_s']:>7.1f} {r['trial_s']:>8.1f} {r['evaluate_wall_s']:>11.1f} {r['calls']:>5} "
              f"{r['prompt_tokens']:>7}+{r['completion_tokens']:<6} {str(r['applied']):>7} {str(r['trained']):>7}  "
              f"{r['reason']} / {r['title'][:50]}")
    n = len(rows) or 1
    llm = sum(r["llm_s"] for r in rows) / n
    wall = sum(r["evaluate_wall_s"] for r in rows) / n
    trial = sum(r["trial_s"] for r in rows) / n
    tokens = sum(r["prompt_tokens"] + r["completion_tokens"] for r in rows) / n
    completion = sum(r["completion_tokens"] for r in rows) / n
    print(f"\nper proposal (mean of {len(rows)}): {llm + wall:.1f}s = LLM {llm:.1f}s + evaluation {wall:.1f}s "
          f"(of which sandboxed train+predict {trial:.1f}s)")
    print(f"LLM calls per proposal: {sum(r['calls'] for r in rows) / n:.2f} "
          f"(failed calls: {sum(r['errors'] for r in rows)}); tokens per proposal: {tokens:.0f} "
          f"({completion:.0f} completion)")
    print(f"applied: {sum(r['applied'] for r in rows)}/{len(rows)} ({sum(r['applied'] for r in rows) / n:.0%}); "
          f"trained: {sum(r['trained'] for r in rows)}/{len(rows)} ({sum(r['trained'] for r in rows) / n:.0%})")
    llm_total = sum(r["llm_s"] for r in rows)
    tok_total = sum(r["completion_tokens"] for r in rows)
    if llm_total:
        print(f"completion throughput incl. prompt processing: {tok_total / llm_total:.2f} tokens/s")


if __name__ == "__main__":
    main()
