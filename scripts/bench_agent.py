#!/usr/bin/env python
"""How well the agent does with the embedded model on this machine, per run of N proposals:
the share of proposals that reach the gate with working code, accepted changes (with what their
diff does), seconds per proposal (LLM, smoke runs, gate trials), tokens and repair rounds.

    .venv/bin/python scripts/bench_agent.py                  # the README's command: 8 proposals, embedded model
    .venv/bin/python scripts/bench_agent.py --proposals 4 --seeds 2 --no-verify
    .venv/bin/python scripts/bench_agent.py --server-python /other/venv/bin/python   # llama.cpp from another venv
    .venv/bin/python scripts/bench_agent.py --llm-base-url http://127.0.0.1:8080/v1  # any endpoint
    .venv/bin/python scripts/bench_agent.py runs/RUN [runs/RUN2 ...]                  # analyse finished runs

A fresh run is `autoresearch run --idea IDEA --proposals N` exactly as a user types it (the gate's
own design, verification on), unless --seeds / --no-verify say otherwise. With --server-python,
the llama.cpp server is started from that interpreter with the embedded model's settings
(autoresearch.agent.local_llm) and the run is pointed at it.
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
from collections import Counter
from pathlib import Path

from autoresearch.reasons import NOT_APPLIED

WORKING = "ok"


def _journal(run_dir: Path) -> dict[int, list[dict]]:
    from autoresearch.agent_port import read_journal

    out: dict[int, list[dict]] = {}
    for entry in read_journal(run_dir):
        if entry.get("attempt") == 1:
            out[entry["idx"]] = []
        out.setdefault(entry["idx"], []).append(entry)
    return out


def _describe(run_dir: Path, parent: str | None, commit: str | None) -> str:
    if not parent or not commit:
        return ""
    from autoresearch.describe import describe_change
    from autoresearch.records import RunRepo

    repo = RunRepo(run_dir / "repo")
    return "; ".join(describe_change(repo.files_at(parent), repo.files_at(commit)))


def analyse(run_dir: Path) -> list[dict]:
    db = sqlite3.connect(run_dir / "ledger.sqlite")
    db.row_factory = sqlite3.Row
    journal = _journal(run_dir)
    out = []
    for p in db.execute("SELECT * FROM proposals WHERE state = 'finished' ORDER BY idx"):
        calls = db.execute("SELECT COUNT(*) n, COALESCE(SUM(latency_seconds),0) s, COALESCE(SUM(prompt_tokens),0) pt, "
                           "COALESCE(SUM(completion_tokens),0) ct, SUM(error IS NOT NULL) errors FROM llm_calls "
                           "WHERE proposal_idx = ?", (p["idx"],)).fetchone()
        trial_s = 0.0
        trials = db.execute("SELECT status, summary_json FROM trials WHERE proposal_idx = ?", (p["idx"],)).fetchall()
        for t in trials:
            summary = json.loads(t["summary_json"])
            trial_s += sum(summary.get(phase, {}).get("run", 0.0) or 0.0 for phase in ("train", "predict"))
        rounds = journal.get(p["idx"], [])
        out.append({"run": run_dir.name, "idx": p["idx"], "title": p["title"], "reason": p["reason"],
                    "decision": p["decision"], "llm_s": calls["s"], "calls": calls["n"], "errors": calls["errors"] or 0,
                    "prompt_tokens": calls["pt"], "completion_tokens": calls["ct"], "trial_s": trial_s,
                    "smoke_s": sum(r.get("smoke_seconds") or 0.0 for r in rounds),
                    "evaluate_wall_s": p["wall_seconds"] or 0.0, "repairs": max(0, len(rounds) - 1),
                    "failed_checks": [r["check"] for r in rounds if r.get("check") != "ok"],
                    "edit_format": rounds[-1].get("edit_format", "") if rounds else "",
                    "applied": p["reason"] not in NOT_APPLIED, "trained": len(trials) > 0,
                    "working": len(trials) > 0 and all(t["status"] == WORKING for t in trials),
                    "does": _describe(run_dir, p["parent_commit"], p["commit_sha"]) if p["decision"] == "accepted"
                    else ""})
    return out


def start_server(python: str):
    """The embedded model's llama.cpp server, started from another interpreter (one with llama_cpp)."""
    from autoresearch.agent.local_llm import LocalLLMServer, resolve_gguf

    server = LocalLLMServer(resolve_gguf(os.environ.get("AUTORESEARCH_GGUF")))
    base_command = server.command
    server.command = lambda: [python] + base_command()[1:]  # type: ignore[method-assign]
    server.start()
    return server


def fresh_run(args) -> tuple[Path, float]:
    runs = Path(tempfile.mkdtemp(prefix="bench-agent-"))
    cmd = [str(Path(sys.executable).parent / "autoresearch"), "run", "--idea", args.idea, "--proposals",
           str(args.proposals), "--runs-dir", str(runs)]
    cmd += ["--seeds", str(args.seeds)] if args.seeds else []
    cmd += ["--no-verify"] if args.no_verify else []
    cmd += ["--edit-format", args.edit_format] if args.edit_format else []
    env = {k: v for k, v in os.environ.items() if k not in ("AUTORESEARCH_LLM_BASE_URL", "OPENAI_BASE_URL")}
    started = time.monotonic()
    server = start_server(args.server_python) if args.server_python else None
    if server is not None:  # the embedded model's start-up, which `autoresearch run` does itself
        print(f"llama.cpp server started in {time.monotonic() - started:.0f}s (not in the command's time below)",
              flush=True)
    try:
        url = args.llm_base_url or (server.base_url if server else None)
        if url:
            cmd += ["--llm-base-url", url]
        print("running:", " ".join(cmd), flush=True)
        started = time.monotonic()
        subprocess.run(cmd, check=True, env=env, stdout=subprocess.DEVNULL)
        took = time.monotonic() - started
    finally:
        if server is not None:
            server.stop()
    return next(runs.iterdir()), took


def report(run_dir: Path, rows: list[dict], took: float | None) -> None:
    n = len(rows) or 1
    print(f"\n== run {run_dir.name}: {len(rows)} proposal(s)"
          + (f", command took {took:.0f}s ({took / 60:.1f} min)" if took is not None else ""))
    print(f"{'#':>3} {'llm s':>6} {'smoke s':>7} {'trial s':>7} {'calls':>5} {'tokens (p+c)':>13} {'repairs':>7} "
          f"{'working':>7}  reason / title")
    for r in rows:
        print(f"{r['idx']:>3} {r['llm_s']:>6.1f} {r['smoke_s']:>7.1f} {r['trial_s']:>7.1f} {r['calls']:>5} "
              f"{r['prompt_tokens']:>6}+{r['completion_tokens']:<6} {r['repairs']:>7} {str(r['working']):>7}  "
              f"{r['reason']} / {r['title'][:60]}")
    working = sum(r["working"] for r in rows)
    accepted = [r for r in rows if r["decision"] == "accepted"]
    llm = sum(r["llm_s"] for r in rows) / n
    smoke = sum(r["smoke_s"] for r in rows) / n
    trial = sum(r["trial_s"] for r in rows) / n
    wall = sum(r["evaluate_wall_s"] for r in rows) / n
    tokens = sum(r["prompt_tokens"] + r["completion_tokens"] for r in rows)
    completion = sum(r["completion_tokens"] for r in rows)
    checks = Counter(c for r in rows for c in r["failed_checks"])
    formats = sorted({r["edit_format"] for r in rows if r["edit_format"]})
    print(f"reached the gate with working code: {working}/{len(rows)} ({working / n:.0%}); "
          f"accepted: {len(accepted)}")
    for r in accepted:
        print(f"  accepted #{r['idx']}: {r['does'] or '-'}  (model's title: {r['title'][:60]!r})")
    print(f"seconds per proposal (mean): LLM {llm:.1f}, smoke runs {smoke:.1f}, gate evaluation {wall:.1f} "
          f"(of which sandboxed train+predict {trial:.1f})")
    print(f"tokens: {tokens} in all, {tokens / n:.0f} per proposal ({completion / n:.0f} completion); LLM calls "
          f"{sum(r['calls'] for r in rows)} (failed: {sum(r['errors'] for r in rows)})")
    print(f"repair rounds: {sum(r['repairs'] for r in rows)} in all ("
          + (", ".join(f"{k} {v}" for k, v in sorted(checks.items())) or "none") + " failed checks); "
          f"edit format: {', '.join(formats) or '-'}")
    print("rejection reasons: " + ", ".join(f"{k} {v}" for k, v in sorted(Counter(r["reason"] for r in rows).items())))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("runs", nargs="*", type=Path, help="finished run folders (default: start a fresh run)")
    ap.add_argument("--proposals", type=int, default=8)
    ap.add_argument("--seeds", type=int, default=None, help="a fixed gate design (default: the spec's stages)")
    ap.add_argument("--no-verify", action="store_true")
    ap.add_argument("--idea", default="adaptive LR optimizer")
    ap.add_argument("--edit-format", default=None, choices=["auto", "search-replace", "whole-file"])
    ap.add_argument("--llm-base-url", default=None, help="an endpoint to use instead of the embedded model")
    ap.add_argument("--server-python", default=None,
                    help="start the embedded model's llama.cpp server with this interpreter (one that has llama_cpp)")
    args = ap.parse_args()
    print(f"machine: {platform.processor() or platform.machine()}, {os.cpu_count()} CPU(s)")
    if args.runs:
        for d in args.runs:
            report(d, analyse(d), None)
        return
    run_dir, took = fresh_run(args)
    report(run_dir, analyse(run_dir), took)


if __name__ == "__main__":
    main()
