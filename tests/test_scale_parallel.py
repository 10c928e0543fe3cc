"""Parallel slots change nothing but wall time: 1 slot and 2 slots give the same decisions and the
same per-seed metrics on a deterministic benchmark."""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

import pytest

from conftest import ADAM, AUTORESEARCH, COMMENT_ONLY, copy_benchmark

pytestmark = pytest.mark.slow


def _run(bench: Path, proposals: Path, runs: Path, slots: int) -> dict:
    out = subprocess.run([AUTORESEARCH, "run", "--benchmark", str(bench), "--proposals-file", str(proposals),
                          "--runs-dir", str(runs), "--seeds", "3", "--slots", str(slots), "--no-verify",
                          # alpha 0.2: with only 3 seeds a clear gain passes, so both decisions occur
                          "--alpha", "0.2",
                          "--device", "cpu"], capture_output=True, text=True, timeout=600,
                         # One secret for both runs: the same seeds and predict set, so they can be compared.
                         env=dict(os.environ, AUTORESEARCH_RUN_SECRET="7a" * 32))
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
    (run_dir,) = [p for p in runs.iterdir() if (p / "ledger.sqlite").is_file()]
    shown = subprocess.run([AUTORESEARCH, "show", str(run_dir), "--json", "--runs-dir", str(runs)],
                           capture_output=True, text=True, timeout=120)
    assert shown.returncode == 0, shown.stderr
    return json.loads(shown.stdout)


def _decisions(summary: dict) -> list[tuple]:
    return [(p["index"], p["decision"], p["reason"], p["mean_difference"], p["p_value"],
             sorted((s["role"], s["seed"], s["status"], s["test"], s["val"]) for s in p["per_seed"]))
            for p in summary["proposals"]]


def test_one_slot_and_two_slots_decide_identically(tmp_path):
    bench = copy_benchmark(tmp_path / "bench", epochs=5)
    proposals = tmp_path / "proposals.jsonl"
    proposals.write_text("\n".join([ADAM, COMMENT_ONLY]) + "\n")
    one = _run(bench, proposals, tmp_path / "runs1", slots=1)
    two = _run(bench, proposals, tmp_path / "runs2", slots=2)
    assert one["fingerprints"] == two["fingerprints"]
    assert _decisions(one) == _decisions(two)
    assert [p["decision"] for p in one["proposals"]] == ["accepted", "rejected"]
    assert all(s["test"] is not None for p in one["proposals"] for s in p["per_seed"])
    assert {s["device"] for p in two["proposals"] for s in p["per_seed"]} == {"cpu"}
