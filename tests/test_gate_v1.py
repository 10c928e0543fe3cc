"""Gate v1 (legacy; goes with autoresearch/gate_v1.py). The gate's statistics on synthetic data: no-effect candidates are accepted at most at alpha
over a whole run; a clear effect is accepted. This calibration test decides the choice of test."""

import numpy as np
import pytest

from autoresearch.gate_v1 import GateConfig, decide, paired_t, screen_rejects
from autoresearch.scoring import Metric

ACC = Metric("accuracy", "higher")


def simulate_accuracies(rng, k, n_test=500, base=0.9, effect=0.0, seed_sd=0.01):
    """Per-seed test accuracies: a shared seed effect (paired), binomial noise on n_test examples."""
    seed_effect = rng.normal(0, seed_sd, size=k)
    inc = rng.binomial(n_test, np.clip(base + seed_effect, 0, 1)) / n_test
    cand = rng.binomial(n_test, np.clip(base + effect + seed_effect, 0, 1)) / n_test
    return cand.tolist(), inc.tolist()


@pytest.mark.parametrize("k", [3, 5, 8])
def test_no_effect_family_wise_rate_stays_under_alpha(k):
    rng = np.random.default_rng(1234 + k)
    m = 8
    cfg = GateConfig(seeds=k, alpha=0.05, proposals=m)
    runs, any_accepted, per_test = 1500, 0, 0
    for _ in range(runs):
        accepted = 0
        for _ in range(m):
            cand, inc = simulate_accuracies(rng, k)
            accepted += decide(list(range(k)), cand, inc, metric=ACC, config=cfg).accepted
        per_test += accepted
        any_accepted += accepted > 0
    fwer = any_accepted / runs
    # Binomial noise on 1500 runs: 3 standard errors above alpha is still a failure.
    assert fwer <= 0.05 + 3 * np.sqrt(0.05 * 0.95 / runs), fwer
    assert per_test / (runs * m) <= cfg.threshold + 3 * np.sqrt(cfg.threshold / (runs * m))


def test_per_test_false_acceptance_on_normal_differences_is_calibrated():
    rng = np.random.default_rng(7)
    cfg = GateConfig(seeds=5, alpha=0.05, proposals=8)
    diffs = rng.normal(0, 0.01, size=(40000, 5))
    accepted = sum(decide(list(range(5)), (0.9 + d).tolist(), [0.9] * 5, metric=ACC, config=cfg).accepted
                   for d in diffs[:8000])
    rate = accepted / 8000
    assert rate <= cfg.threshold + 3 * np.sqrt(cfg.threshold / 8000)


def test_clear_effect_is_accepted():
    rng = np.random.default_rng(99)
    cfg = GateConfig(seeds=5, alpha=0.05, proposals=8)
    hits = 0
    for _ in range(200):
        cand, inc = simulate_accuracies(rng, 5, effect=0.10)
        hits += decide(list(range(5)), cand, inc, metric=ACC, config=cfg).accepted
    assert hits >= 190


def test_identical_results_are_not_better():
    cfg = GateConfig(seeds=5, proposals=4)
    r = decide([1, 2, 3, 4, 5], [0.9] * 5, [0.9] * 5, metric=ACC, config=cfg)
    assert not r.accepted and r.reason == "not_better" and r.p_value == 1.0


def test_direction_lower_is_better():
    loss = Metric("log_loss", "lower")
    cfg = GateConfig(seeds=5, proposals=1)
    r = decide([1, 2, 3, 4, 5], [0.30, 0.31, 0.29, 0.30, 0.32], [0.50, 0.52, 0.49, 0.51, 0.50], metric=loss, config=cfg)
    assert r.accepted and r.mean_difference > 0
    r = decide([1, 2, 3, 4, 5], [0.50, 0.52, 0.49, 0.51, 0.50], [0.30, 0.31, 0.29, 0.30, 0.32], metric=loss, config=cfg)
    assert not r.accepted


def test_min_delta_and_win_rate_are_enforced():
    seeds = [1, 2, 3, 4, 5]
    cand = [0.92, 0.921, 0.919, 0.922, 0.92]
    inc = [0.91, 0.91, 0.91, 0.91, 0.91]
    assert decide(seeds, cand, inc, metric=ACC, config=GateConfig(proposals=1)).accepted
    r = decide(seeds, cand, inc, metric=ACC, config=GateConfig(proposals=1, min_delta=0.02))
    assert not r.accepted and not r.checks["ci_low_above_min_delta"]
    # Big mean driven by wins on 3 of 5 seeds: fails the 80% win rule even if the t-test passed.
    r = decide(seeds, [0.99, 0.99, 0.99, 0.90, 0.90], [0.90] * 5, metric=ACC, config=GateConfig(proposals=1, alpha=0.5))
    assert not r.checks["win_rate"] and not r.accepted


def test_lower_bound_matches_p_value():
    d = np.array([0.01, 0.02, 0.015, 0.03, 0.005])
    p, low, ci95 = paired_t(d, 0.05)
    assert (p < 0.05) == (low > 0)
    assert ci95[0] < d.mean() < ci95[1]


def test_screen_only_rejects_clear_losers():
    cfg = GateConfig(screen=True, screen_margin=0.05)
    assert screen_rejects(0.80, 0.90, metric=ACC, config=cfg)
    assert not screen_rejects(0.88, 0.90, metric=ACC, config=cfg)
    assert not screen_rejects(0.80, 0.90, metric=ACC, config=GateConfig(screen=False))
