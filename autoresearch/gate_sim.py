"""Synthetic paired trials for calibrating the gate (tests/test_gate_calibration.py and
scripts/bench_gate_power.py): per-example 0/1 correctness with both seed noise and test-set noise.

The model (probit). Each replicate draws a fresh test set of n examples from the distribution, so
the test-set noise is real: example i has a latent difficulty theta_i ~ N(mu, tau^2) and the
candidate's own effect on it, delta + beta_i with beta_i ~ N(0, example_sd^2) (a change that helps
some examples and hurts others). Each seed s gives each arm a model-level shift u ~ N(0, seed_sd^2),
correlated seed_corr between the arms of a seed (pairing: same seed, same data order and init). An
arm is right on example i with probability Phi(theta_i + u + its effect), independently per seed
(which examples a given model gets right). ``effect`` is the true accuracy gain on the distribution
(over examples and seeds); delta is solved in closed form, using E Phi(X) = Phi(m / sqrt(1 + v)) for
X ~ N(m, v), so effect 0 with example_sd > 0 is a no-effect change that still wins on some test sets.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
from scipy import special, stats

from autoresearch.gate import GateConfig, stage_statistics


@dataclass(frozen=True, kw_only=True)
class Scenario:
    n: int = 500  # test examples (digits-mlp's test split)
    mu: float = 1.6  # with tau, seed_sd: incumbent accuracy ~0.81, 17% of examples flip between arms
    tau: float = 1.5
    seed_sd: float = 0.15
    seed_corr: float = 0.5
    example_sd: float = 0.0

    def delta(self, effect: float) -> float:
        """Probit shift of the candidate giving a distribution-level accuracy gain ``effect``."""
        base_var = 1 + self.tau**2 + self.seed_sd**2
        base = stats.norm.cdf(self.mu / math.sqrt(base_var))
        if not 0 < base + effect < 1:
            raise ValueError(f"an accuracy gain of {effect} from {base:.3f} leaves (0, 1)")
        return float(stats.norm.ppf(base + effect) * math.sqrt(base_var + self.example_sd**2) - self.mu)


def simulate(rng: np.random.Generator, scenario: Scenario, replicates: int, seeds: int,
             effect: float = 0.0) -> tuple[np.ndarray, np.ndarray]:
    """(candidate, incumbent) correctness, int8 arrays of shape (replicates, seeds, n)."""
    sc, shape = scenario, (replicates, seeds, scenario.n)
    theta = rng.normal(sc.mu, sc.tau, size=(replicates, 1, sc.n))
    own = sc.delta(effect) + (rng.normal(0, sc.example_sd, size=(replicates, 1, sc.n)) if sc.example_sd else 0.0)
    u_inc = rng.normal(0, sc.seed_sd, size=(replicates, seeds, 1))
    u_cand = sc.seed_corr * u_inc + math.sqrt(1 - sc.seed_corr**2) * rng.normal(0, sc.seed_sd, size=u_inc.shape)
    incumbent = (rng.random(shape) < special.ndtr(theta + u_inc)).astype(np.int8)
    candidate = (rng.random(shape) < special.ndtr(theta + u_cand + own)).astype(np.int8)
    return candidate, incumbent


def per_seed_sd(rng: np.random.Generator, scenario: Scenario, replicates: int = 400, seeds: int = 16) -> float:
    """Standard deviation of the per-seed paired accuracy difference (within a test set), no effect:
    the unit in which issue 12 states power."""
    cand, inc = simulate(rng, scenario, replicates, seeds)
    diffs = cand.mean(axis=2) - inc.mean(axis=2)
    return float(np.sqrt(diffs.var(axis=1, ddof=1).mean()))


def run_design(config: GateConfig, d: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Run every replicate of improvements ``d`` (replicates, >= max seeds, n) through the gate's
    stages, as the engine would: (accepted, seeds used), one per replicate."""
    replicates = d.shape[0]
    accepted = np.zeros(replicates, dtype=bool)
    used = np.zeros(replicates, dtype=np.int64)
    open_ = np.arange(replicates)
    for stage, k in enumerate(config.stages):
        action = stage_statistics(config, stage, d[open_, :k]).action
        done = action != 0
        accepted[open_[action == 1]] = True
        used[open_[done]] = k
        open_ = open_[~done]
    return accepted, used
