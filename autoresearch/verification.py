"""The headline: the run's final incumbent against the original baseline on fresh seeds, judged
by one fixed look of the gate (m = 1: one claim is checked). Selection-time figures are
optimistic by construction; this one is not.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np

from autoresearch.gate import GateConfig, decide_stage
from autoresearch.outcomes import files_hash

if TYPE_CHECKING:
    from autoresearch.engine import RunEngine


def verify_chain(engine: "RunEngine", final_files: dict[str, str] | None = None,
                 baseline_files: dict[str, str] | None = None) -> dict:
    """Final against baseline on ``engine.verify_seeds`` (default files: the run's incumbent and baseline)."""
    baseline_files = baseline_files if baseline_files is not None else engine.repo.files_at(engine.repo.baseline)
    final_files = final_files if final_files is not None else engine.incumbent[1]
    chain = engine.repo.accepted_chain()
    if files_hash(final_files) == files_hash(baseline_files):
        return {"accepted": len(chain), "verified": False, "detail": "no accepted change: nothing to verify"}
    seeds = engine.verify_seeds
    engine.events.stage(f"verifying the accepted chain on fresh seeds {seeds}")
    base = engine.run_trials(baseline_files, seeds, role="verify-baseline")
    final = engine.run_trials(final_files, seeds, role="verify-chain")
    bad = next((t for t in base + final if not t.ok), None)
    if bad is not None:
        return {"accepted": len(chain), "verified": False,
                "detail": f"verification trial failed on seed {bad.seed}: {bad.status}: {bad.detail}"}
    # One look at all the fresh seeds, the run's alpha and min_delta, m = 1: one claim is checked.
    cfg = GateConfig.fixed(len(seeds), alpha=engine.gate.alpha, proposals=1, min_delta=engine.gate.min_delta)
    result = decide_stage(cfg, 0, [t.correct("test") for t in final], [t.correct("test") for t in base],
                          engine.metric, seeds=seeds)
    return {"accepted": len(chain), "verified": True, "holds": result.accepted, "seeds": seeds,
            "baseline_mean": float(np.mean([t.test_metric for t in base])),
            "final_mean": float(np.mean([t.test_metric for t in final])), "gate": result.to_dict(),
            "detail": result.detail}
