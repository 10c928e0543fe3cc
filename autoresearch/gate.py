"""Gate v2: does a candidate truly beat the incumbent on the data distribution, not just on these
seeds and these test examples? A sequential paired test with alpha spending.

Inputs. For each seed s (candidate and incumbent share it) and each test example i, both arms'
per-example scores (for accuracy, 0/1 correctness). ``metric.improvement`` turns them into
per-example improvements d[s, i] (positive = candidate better, whatever the metric's direction).
The metric must be the mean of its per-example scores (accuracy, log loss; not F1 or AUC).

Two sources of noise. The estimate is the grand mean D of d[s, i]. Model d[s, i] = mu + a_s + b_i
+ e_si (seed, example, interaction): the test set is a sample of examples, so b_i counts like a_s.
Var(D) = var(a)/k + var(b)/n + var(e)/(kn), estimated from the k x n table by moments:
  * seed component: s2(per-seed means) / k (the paired-t variance, unbiased for var(a)/k +
    var(e)/(kn)), floored at MS_res/(kn): every seed mean carries the interaction noise, which
    MS_res estimates on (k-1)(n-1) df, so a chance tie of per-seed means (accuracy moves in steps
    of 1/n) cannot zero it;
  * example component: max(0, s2(per-example means) - MS_res/k) / n, for var(b)/n. When every seed
    gives the same differences (the same examples flipped on every seed) the seed component is 0
    and this is the whole variance: p reflects the finite test set, never 0 by construction.
t = (D - min_delta) / se on df = min(k - 1, q - 1), q = the examples with any nonzero difference:
neither component has more df than that. With few differing examples this is close to the exact
sign (McNemar) test. Satterthwaite's df was tried and rejected by simulation: 2-4x
anti-conservative at 4-6 seeds when seed and example effects are both large. If every d[s, i] is
the same number no noise is measurable, and p = 1: nothing untestable is accepted.

Sequential design. Seeds come in stages (default 2, 4, 6, 10, 16 cumulative). The one-sided level
alpha/m (m = the run's proposal budget, so the family-wise false-acceptance rate of a run stays
<= alpha) is spent over the stages by alpha/m * t^2, t = seeds / max seeds (Kim & DeMets's power
family, rho = 2, between Pocock-type and O'Brien-Fleming-type). The z boundaries come from the
exact joint normal law of the stage statistics (numerical integration, corr = sqrt(t_i / t_j));
a stage accepts when its p is below the boundary's nominal level 1 - Phi(c_j). Why t^2
(scripts/bench_gate_power.py): Pocock-type spends a fifth of alpha/m at 2 seeds, where a t-test
on 1 df cannot use it, and loses power (1 sd: 0.69 vs 0.73; 1.5 sd where test-set noise dominates:
0.28 vs 0.40) to stop clear winners about one seed sooner; O'Brien-Fleming-type gains a little
power but accepts nothing before 10 seeds. Information fractions count seeds; the
example component makes stages more correlated than that, which (Slepian's inequality) only
lowers the chance of a false crossing. Futility: a stage before the last rejects when p >= its
futility level (default 0.5, 0.2, 0.1, 0.05; 0.5 at 2 seeds is "not better on average"). The
bounds are non-binding: the efficacy boundaries ignore them, so stopping early can only lower
false acceptance. The old one-seed val screen is this first stage. Nothing depends on time or
slots.

Reported: ``ci_low``, the one-sided lower bound at the stage's own level (the repeated confidence
bound: accept <=> ci_low > min_delta), and ``ci95``, the plain two-sided 95% interval with both
components, not adjusted for stopping (after an early stop it tends to sit high). Gate v1's
80%-of-seeds-won rule is gone: the test is calibrated without it, it cost power (a 1.5-sd effect
loses a seed 7% of the time, and accuracy ties count as losses) and it cannot see test-set noise.
tests/test_gate_calibration.py and scripts/bench_gate_power.py hold the simulations that decide.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from functools import lru_cache
from typing import Literal, NamedTuple, Sequence

import numpy as np
from scipy import optimize, special, stats

from autoresearch.scoring import Metric

Spending = Literal["quadratic", "pocock", "obrien-fleming"]
Action = Literal["accept", "reject", "continue"]


@dataclass(frozen=True, kw_only=True)
class GateConfig:
    """The gate's design. Lists (from JSON) are accepted for the tuple fields."""

    alpha: float = 0.05  # family-wise false-acceptance rate over a run
    proposals: int = 8  # m, the run's proposal budget: each proposal is tested at alpha / m
    stages: tuple[int, ...] = (2, 4, 6, 10, 16)  # cumulative paired seeds at each look
    futility: tuple[float, ...] = (0.5, 0.2, 0.1, 0.05)  # per stage but the last: reject when p >= this
    spending: Spending = "quadratic"  # how alpha / m is spent over the stages (see the module docstring)
    min_delta: float = 0.0  # the improvement must exceed this (metric units), not just 0

    def __post_init__(self) -> None:
        object.__setattr__(self, "stages", tuple(int(s) for s in self.stages))
        object.__setattr__(self, "futility", tuple(float(f) for f in self.futility))
        if not 0 < self.alpha < 1:
            raise ValueError(f"alpha must be in (0, 1), got {self.alpha}")
        if int(self.proposals) != self.proposals or self.proposals < 1:
            raise ValueError(f"proposals must be a positive integer, got {self.proposals}")
        if not self.stages or self.stages[0] < 2 or any(b <= a for a, b in zip(self.stages, self.stages[1:])):
            raise ValueError(f"stages must be increasing seed counts starting at 2 or more, got {self.stages}")
        if len(self.futility) != len(self.stages) - 1 or not all(0 < f <= 1 for f in self.futility):
            raise ValueError(f"futility needs one level in (0, 1] per stage but the last ({len(self.stages) - 1}), "
                             f"got {self.futility}")
        if self.spending not in ("quadratic", "pocock", "obrien-fleming"):
            raise ValueError(f"spending must be 'quadratic', 'pocock' or 'obrien-fleming', got {self.spending!r}")
        if not math.isfinite(self.min_delta):
            raise ValueError("min_delta must be finite")

    @classmethod
    def fixed(cls, seeds: int, *, alpha: float = 0.05, proposals: int = 1, min_delta: float = 0.0) -> GateConfig:
        """One stage of ``seeds`` seeds at alpha / proposals (the end-of-run verification uses m=1)."""
        return cls(alpha=alpha, proposals=proposals, stages=(seeds,), futility=(), min_delta=min_delta)

    @property
    def threshold(self) -> float:
        return self.alpha / self.proposals

    @property
    def max_seeds(self) -> int:
        return self.stages[-1]

    def to_dict(self) -> dict:
        return {**asdict(self), "stages": list(self.stages), "futility": list(self.futility)}


@dataclass(frozen=True, kw_only=True)
class StageDecision:
    """One look of the gate: the decision and every number a report shows. Improvements are
    candidate minus incumbent in the better direction; variances are of the mean improvement."""

    action: Action
    reason: Literal["accepted", "not_better"] | None  # None while the action is "continue"
    detail: str
    stage: int  # 0-based index into stages
    stages: tuple[int, ...]
    next_seeds: int | None  # cumulative seeds the next stage needs, when continuing
    seeds: list[int]  # seed ids used at this stage, in order
    examples: int  # test examples per seed
    differences: list[float]  # per-seed mean improvement
    mean_difference: float
    ci95: tuple[float, float]  # two-sided 95%, both noise sources, not adjusted for stopping
    ci_low: float  # one-sided lower bound at level 1 - boundary: accept <=> ci_low > min_delta
    statistic: float  # t = (mean - min_delta) / se
    df: float
    p_value: float  # one-sided, for improvement > min_delta
    boundary: float  # this stage's nominal one-sided level (efficacy boundary on the p scale)
    boundary_z: float  # the same boundary on the z scale
    futility: float | None  # reject at this stage when p >= futility (None at the last stage)
    alpha_spent: float  # cumulative alpha/m spent through this stage
    threshold: float  # alpha / m, the whole budget of this proposal
    var_seeds: float  # seed component of Var(mean improvement)
    var_examples: float  # test-set (example) component of Var(mean improvement)
    se: float
    win_rate: float  # share of seeds with a positive difference (descriptive only)
    min_delta: float
    spending: str
    version: int = 2

    @property
    def accepted(self) -> bool:
        return self.action == "accept"

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> StageDecision:
        return cls(**{**d, "ci95": tuple(d["ci95"]), "stages": tuple(d["stages"])})


# ----------------------------------------------------------------------------- boundaries

def spent(t: np.ndarray, level: float, spending: Spending) -> np.ndarray:
    """Cumulative one-sided alpha spent at information fractions t: Kim & DeMets's power family with
    rho = 2, or Lan & DeMets's Pocock-type and O'Brien-Fleming-type functions."""
    t = np.asarray(t, dtype=np.float64)
    if spending == "quadratic":
        return level * t**2
    if spending == "pocock":
        return level * np.log1p((math.e - 1) * t)
    return 2 * stats.norm.sf(stats.norm.isf(level / 2) / np.sqrt(t))


def _grid(hi: float, t: float, step: float = 0.02, lo: float = -8.0) -> tuple[np.ndarray, np.ndarray]:
    """Points of the score S = Z sqrt(t) for Z in [lo, hi], with Simpson weights."""
    n = 2 * math.ceil((hi - lo) / step / 2) + 1
    z = np.linspace(lo, hi, n)
    w = np.ones(n)
    w[1:-1:2], w[2:-1:2] = 4, 2
    return z * math.sqrt(t), w * (z[1] - z[0]) * math.sqrt(t) / 3


@lru_cache(maxsize=128)
def efficacy_boundaries(stages: tuple[int, ...], level: float, spending: Spending) -> tuple[tuple[float, ...], ...]:
    """(z boundaries, nominal one-sided levels, cumulative alpha spent), one per stage.

    Under no effect the stage z statistics are jointly normal with independent score increments;
    c_j solves P(no crossing before j, Z_j >= c_j) = spent_j - spent_{j-1}, integrating the density
    of the score over the continuation region (Armitage, McPherson & Rowe 1969; Simpson's rule).
    """
    t = np.asarray(stages, dtype=np.float64) / stages[-1]
    cum = spent(t, level, spending)
    increments = np.diff(cum, prepend=0.0)
    z = [float(stats.norm.isf(max(increments[0], 1e-300)))]  # finite even if early spending underflows
    s, w = _grid(z[0], t[0])
    density = stats.norm.pdf(s, scale=math.sqrt(t[0]))
    for j in range(1, len(t)):
        sd = math.sqrt(t[j] - t[j - 1])
        mass = density * w
        b = optimize.brentq(lambda b: float(mass @ special.ndtr((s - b) / sd)) - increments[j], -40, 40, xtol=1e-12)
        z.append(b / math.sqrt(t[j]))
        s_next, w = _grid(z[-1], t[j])
        density = stats.norm.pdf((s_next[:, None] - s[None, :]) / sd) / sd @ mass
        s = s_next
    return tuple(z), tuple(float(x) for x in stats.norm.sf(z)), tuple(float(x) for x in cum)


# ----------------------------------------------------------------------------- the test

class StageStatistics(NamedTuple):
    """Per-replicate arrays (a batch axis first) of one stage's test; decide_stage uses batch 1."""

    mean: np.ndarray
    var_seeds: np.ndarray
    var_examples: np.ndarray
    df: np.ndarray
    statistic: np.ndarray
    p: np.ndarray
    ci_low: np.ndarray
    action: np.ndarray  # 1 accept, -1 reject, 0 continue


def stage_statistics(config: GateConfig, stage: int, d: np.ndarray) -> StageStatistics:
    """Test per-example improvements ``d`` of shape (batch, k, n), k = config.stages[stage]."""
    _, k, n = d.shape
    d = d.astype(np.float64, copy=False)
    seed_means = d.mean(axis=2)
    mean = seed_means.mean(axis=1)
    example_means = d.mean(axis=1)
    s2_seeds = seed_means.var(axis=1, ddof=1)
    s2_examples = example_means.var(axis=1, ddof=1)
    sum_squares = np.einsum("rki,rki->r", d, d)
    ss_total = sum_squares - k * n * mean**2
    ss_res = np.maximum(0.0, ss_total - n * (k - 1) * s2_seeds - k * (n - 1) * s2_examples)
    ms_res = ss_res / ((k - 1) * (n - 1))
    var_seeds = np.maximum(s2_seeds / k, ms_res / (k * n))
    var_examples = np.maximum(0.0, s2_examples - ms_res / k) / n
    var = var_seeds + var_examples
    differing = (d != 0).any(axis=1).sum(axis=1)
    df = np.minimum(k - 1, np.clip(differing - 1, 1, n - 1)).astype(np.float64)
    # Identical differences everywhere: no noise to test against (rounding can leave ~1e-33, not 0).
    testable = var > 1e-20 * sum_squares / (k * n)
    se = np.sqrt(np.where(testable, var, 1.0))
    statistic = np.where(testable, (mean - config.min_delta) / se, 0.0)
    p = np.where(testable, stats.t.sf(statistic, df), 1.0)
    _, nominal, _ = efficacy_boundaries(config.stages, config.threshold, config.spending)
    ci_low = mean - np.where(testable, stats.t.isf(nominal[stage], df) * se, 0.0)
    last = stage == len(config.stages) - 1
    give_up = np.ones_like(p, dtype=bool) if last else p >= config.futility[stage]
    action = np.where(p < nominal[stage], 1, np.where(give_up, -1, 0))
    return StageStatistics(mean, var_seeds, var_examples, df, statistic, p, ci_low, action)


def _improvements(candidate: Sequence[np.ndarray], incumbent: Sequence[np.ndarray], metric: Metric) -> np.ndarray:
    arrays = [np.asarray(a) for a in (*candidate, *incumbent)]
    n = arrays[0].shape[0] if arrays and arrays[0].ndim == 1 else -1
    for a in arrays:
        if a.ndim != 1 or a.shape[0] != n or a.dtype.kind not in "biuf":
            raise ValueError("every seed needs a 1-D numeric array of per-example scores, the same length for "
                             f"both arms and all seeds (got shapes {sorted({x.shape for x in arrays})})")
        if not np.isfinite(a).all():
            raise ValueError("per-example scores must be finite")
    if n < 2:
        raise ValueError("the gate needs at least 2 test examples per seed")
    c = np.stack(candidate).astype(np.float64)
    i = np.stack(incumbent).astype(np.float64)
    return metric.improvement(c, i)


def decide_stage(config: GateConfig, stage: int, candidate_scores: Sequence[np.ndarray],
                 incumbent_scores: Sequence[np.ndarray], metric: Metric, *,
                 seeds: Sequence[int] | None = None) -> StageDecision:
    """Decide stage ``stage`` (0-based) from the per-example test scores of the first
    ``config.stages[stage]`` paired seeds (same examples, same order, for every seed and both arms).
    ``seeds`` (ids) are only recorded. A pure function of its arguments."""
    if not 0 <= stage < len(config.stages):
        raise ValueError(f"stage {stage} is outside 0..{len(config.stages) - 1}")
    k = config.stages[stage]
    if len(candidate_scores) != k or len(incumbent_scores) != k:
        raise ValueError(f"stage {stage} needs exactly {k} paired seeds, got {len(candidate_scores)} candidate "
                         f"and {len(incumbent_scores)} incumbent")
    seed_ids = list(range(k)) if seeds is None else [int(s) for s in seeds]
    if len(seed_ids) != k:
        raise ValueError(f"{len(seed_ids)} seed ids for {k} seeds")
    d = _improvements(candidate_scores, incumbent_scores, metric)
    r = stage_statistics(config, stage, d[None])
    z, nominal, cum = efficacy_boundaries(config.stages, config.threshold, config.spending)
    mean, p, low = float(r.mean[0]), float(r.p[0]), float(r.ci_low[0])
    var_s, var_e, df = float(r.var_seeds[0]), float(r.var_examples[0]), float(r.df[0])
    se = math.sqrt(var_s + var_e)
    half = float(stats.t.isf(0.025, df)) * se
    last = stage == len(config.stages) - 1
    futility = None if last else config.futility[stage]
    action: Action = {1: "accept", -1: "reject", 0: "continue"}[int(r.action[0])]
    where = f"stage {stage + 1}/{len(config.stages)} ({k} seeds x {d.shape[1]} test examples)"
    numbers = (f"mean improvement {mean:+.4f}, 95% CI [{mean - half:+.4f}, {mean + half:+.4f}], se {se:.4f} "
               f"(seeds {math.sqrt(var_s):.4f}, test examples {math.sqrt(var_e):.4f})")
    if se == 0.0:
        detail = (f"{where}: every per-example difference is {mean:+.4f}: no noise can be measured, "
                  "so nothing is accepted")
    elif action == "accept":
        detail = (f"accepted at {where}: {numbers}; p={p:.2g} < stage boundary {nominal[stage]:.3g} "
                  f"(alpha/m={config.threshold:.3g}); lower bound {low:+.4f} > min_delta {config.min_delta}")
    elif action == "continue":
        detail = (f"undecided at {where}: {numbers}; p={p:.3g} is between the boundary {nominal[stage]:.3g} and "
                  f"the futility level {futility}; next stage needs {config.stages[stage + 1]} seeds")
    elif last:
        detail = (f"not better at {where}: {numbers}; p={p:.3g} is not below the final boundary "
                  f"{nominal[stage]:.3g} (alpha/m={config.threshold:.3g})")
    else:
        detail = f"stopped for futility at {where}: {numbers}; p={p:.3g} >= {futility}"
    seed_diffs = d.mean(axis=1)
    return StageDecision(
        action=action, reason=None if action == "continue" else ("accepted" if action == "accept" else "not_better"),
        detail=detail, stage=stage, stages=config.stages,
        next_seeds=config.stages[stage + 1] if action == "continue" else None, seeds=seed_ids,
        examples=int(d.shape[1]), differences=seed_diffs.tolist(), mean_difference=mean,
        ci95=(mean - half, mean + half), ci_low=low, statistic=float(r.statistic[0]), df=df, p_value=p,
        boundary=nominal[stage], boundary_z=z[stage], futility=futility, alpha_spent=cum[stage],
        threshold=config.threshold, var_seeds=var_s, var_examples=var_e, se=se,
        win_rate=float((seed_diffs > 0).mean()), min_delta=config.min_delta, spending=config.spending)
