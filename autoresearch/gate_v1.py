"""Gate v1 (LEGACY, what the engine uses until it is wired to gate v2 in autoresearch.gate; delete
this module and tests/test_gate_v1.py then).

The statistical gate: does a candidate truly beat the incumbent on paired seeds?

Paired one-sided t-test over per-seed metric differences (candidate and incumbent share each
seed), at the Bonferroni level alpha / m where m is the run's proposal budget, so the chance of
accepting any no-effect change over the whole run stays under alpha. A sign-flip test cannot go
below 1/2^k (1/32 for 5 seeds) and a bootstrap over 5 seeds is anti-conservative; the t-test is
calibrated for these differences (see tests/test_gate_v1.py, which decides).
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field

import numpy as np
from scipy import stats

from autoresearch.scoring import Metric


@dataclass(frozen=True, kw_only=True)
class GateConfig:
    seeds: int = 5
    alpha: float = 0.05
    proposals: int = 8  # m: the run's proposal budget
    min_delta: float = 0.0
    min_win_rate: float = 0.8
    screen: bool = True
    screen_margin: float = 0.05

    @property
    def threshold(self) -> float:
        return self.alpha / self.proposals


@dataclass(kw_only=True)
class GateResult:
    accepted: bool
    reason: str  # "accepted" or "not_better"
    detail: str
    seeds: list[int]
    candidate: list[float]
    incumbent: list[float]
    differences: list[float]  # improvement per seed (positive = candidate better)
    mean_difference: float
    ci_low: float  # one-sided lower confidence bound at level 1 - alpha/m (used by the gate)
    ci95: tuple[float, float]  # two-sided 95% interval, for readers
    p_value: float
    threshold: float
    win_rate: float
    checks: dict[str, bool] = field(default_factory=dict)

    def to_dict(self) -> dict:
        return asdict(self)


def paired_t(differences: np.ndarray, level: float) -> tuple[float, float, tuple[float, float]]:
    """One-sided p-value for mean > 0, the lower confidence bound at 1 - level, and a 95% interval."""
    k = differences.size
    mean = float(differences.mean())
    sd = float(differences.std(ddof=1)) if k > 1 else 0.0
    if sd == 0.0 or not math.isfinite(sd):
        # Identical differences on every seed: no spread to test against; the sign decides.
        p = 0.0 if mean > 0 else 1.0
        return p, mean, (mean, mean)
    se = sd / math.sqrt(k)
    t = mean / se
    p = float(stats.t.sf(t, df=k - 1))
    low = mean - float(stats.t.ppf(1 - level, df=k - 1)) * se
    half95 = float(stats.t.ppf(0.975, df=k - 1)) * se
    return p, low, (mean - half95, mean + half95)


def decide(seeds: list[int], candidate: list[float], incumbent: list[float], *, metric: Metric,
           config: GateConfig) -> GateResult:
    if len(seeds) != len(candidate) or len(seeds) != len(incumbent) or len(seeds) < 2:
        raise ValueError("the gate needs matching per-seed results on at least 2 seeds")
    diffs = np.array([metric.improvement(c, i) for c, i in zip(candidate, incumbent)], dtype=np.float64)
    threshold = config.threshold
    p, low, ci95 = paired_t(diffs, threshold)
    win_rate = float((diffs > 0).mean())
    checks = {
        "p_below_threshold": p < threshold,
        "ci_low_above_min_delta": low > config.min_delta,
        "win_rate": win_rate >= config.min_win_rate,
        "finite": bool(np.isfinite(diffs).all()),
    }
    accepted = all(checks.values())
    mean = float(diffs.mean())
    if accepted:
        detail = (f"mean improvement {mean:+.4f} on {len(seeds)} paired seeds, p={p:.2g} < {threshold:.3g}, "
                  f"lower bound {low:+.4f} > {config.min_delta}, wins {win_rate:.0%}")
    else:
        failed = []
        if not checks["p_below_threshold"]:
            failed.append(f"p={p:.3g} is not below alpha/m={threshold:.3g}")
        if not checks["ci_low_above_min_delta"]:
            failed.append(f"lower bound {low:+.4f} is not above min_delta={config.min_delta}")
        if not checks["win_rate"]:
            failed.append(f"won on {win_rate:.0%} of seeds, needs {config.min_win_rate:.0%}")
        if not checks["finite"]:
            failed.append("non-finite differences")
        detail = f"mean improvement {mean:+.4f}; " + "; ".join(failed)
    return GateResult(accepted=accepted, reason="accepted" if accepted else "not_better", detail=detail,
                      seeds=list(seeds), candidate=list(candidate), incumbent=list(incumbent),
                      differences=diffs.tolist(), mean_difference=mean, ci_low=low, ci95=ci95, p_value=p,
                      threshold=threshold, win_rate=win_rate, checks=checks)


def screen_rejects(candidate_val: float, incumbent_val: float, *, metric: Metric, config: GateConfig) -> bool:
    """Cheap one-seed screen on val: reject only a clear loser (it spends none of the gate's alpha,
    because rejecting can never produce a false acceptance)."""
    return config.screen and metric.improvement(candidate_val, incumbent_val) < -config.screen_margin
