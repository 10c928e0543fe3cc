"""Gate v2 on synthetic data: no-effect candidates are accepted at most at alpha over a whole run,
with seed noise and test-set noise both present; identical differences on every seed are not
proof; a clear effect is accepted early; decisions are pure functions of the trial results. These
simulations decide the choice of test (scripts/bench_gate_power.py has the bigger ones)."""

import json
import math

import numpy as np
import pytest
from scipy import stats

from autoresearch.gate import GateConfig, StageDecision, decide_stage, efficacy_boundaries, stage_statistics
from autoresearch.gate_sim import Scenario, per_seed_sd, run_design, simulate
from autoresearch.scoring import Metric

ACC = Metric("accuracy", "higher")
M, ALPHA = 8, 0.05


def upper95(hits: int, trials: int) -> float:
    """Exact (Clopper-Pearson) one-sided 95% upper bound of a binomial rate: the Monte-Carlo margin."""
    return float(stats.beta.ppf(0.95, hits + 1, trials - hits))


def run_stages(config, cand, inc, metric=ACC):
    """Drive decide_stage as the engine will: add seeds until the gate decides."""
    for stage, k in enumerate(config.stages):
        result = decide_stage(config, stage, list(cand[:k]), list(inc[:k]), metric)
        if result.action != "continue":
            return result
        assert result.next_seeds == config.stages[stage + 1]
    raise AssertionError("the last stage must decide")


# ------------------------------------------------------------------------ (a) calibration

@pytest.mark.parametrize("scenario", [
    Scenario(),  # same distribution for both arms: seed noise and per-example flips
    Scenario(tau=3.0, seed_sd=0.02, example_sd=1.0),  # helps some examples, hurts others; little seed noise
    Scenario(tau=5.0, seed_sd=0.4, seed_corr=0.0, example_sd=1.0),  # both large (Satterthwaite's df fails here)
], ids=["same-distribution", "example-effects", "seed-and-example-effects"])
def test_no_effect_family_wise_rate_over_runs_of_8_stays_under_alpha(scenario):
    rng = np.random.default_rng(2024)
    runs, config = 1000, GateConfig(alpha=ALPHA, proposals=M)
    accepted, used = [], []
    for _ in range(runs * M // 500):
        cand, inc = simulate(rng, scenario, 500, config.max_seeds)
        a, u = run_design(config, cand - inc)
        accepted.append(a)
        used.append(u)
    any_accepted = np.concatenate(accepted).reshape(runs, M).any(axis=1)
    # Margin: the exact 95% upper bound on the family-wise rate, not just the estimate, is <= alpha.
    assert upper95(int(any_accepted.sum()), runs) <= ALPHA, any_accepted.mean()
    assert np.concatenate(used).mean() <= 4  # the goal of issue 12: no-effect proposals are cheap


def test_seed_only_test_is_fooled_by_test_set_noise_where_the_gate_is_not():
    """A change that is better on this test set's examples but not on the distribution: the paired t
    over per-seed accuracy (gate v1, without its win rule) accepts it far above its level."""
    rng = np.random.default_rng(11)
    config = GateConfig.fixed(5, alpha=ALPHA, proposals=M)
    cand, inc = simulate(rng, Scenario(tau=3.0, seed_sd=0.02, example_sd=1.0), 3000, 5)
    d = cand - inc
    per_seed = d.mean(axis=2)
    t = per_seed.mean(axis=1) / (per_seed.std(axis=1, ddof=1) / math.sqrt(5))
    seed_only = (stats.t.sf(t, 4) < config.threshold).mean()
    gate = run_design(config, d)[0].mean()
    assert seed_only > 2 * config.threshold and gate <= config.threshold, (seed_only, gate)


def test_boundaries_match_published_values_and_spend_exactly_alpha():
    # Lan-DeMets O'Brien-Fleming-type, 5 equally spaced looks, one-sided 0.025 (gsDesign sfLDOF).
    z, _, spent = efficacy_boundaries((1, 2, 3, 4, 5), 0.025, "obrien-fleming")
    assert np.allclose(z, [4.8769, 3.3570, 2.6803, 2.2898, 2.0310], atol=2e-4)
    _, _, spent = efficacy_boundaries((2, 4, 6, 10, 16), 0.05 / 8, "pocock")
    assert spent[-1] == pytest.approx(0.05 / 8) and spent[0] == pytest.approx(0.05 / 8 * math.log1p((math.e - 1) / 8))
    z, nominal, spent = efficacy_boundaries((2, 4, 6, 10, 16), 0.05 / 8, "quadratic")
    assert np.allclose(spent, 0.05 / 8 * (np.array([2, 4, 6, 10, 16]) / 16) ** 2)
    # Monte Carlo on the z process with the design's correlations: crossing probability = alpha/m.
    rng = np.random.default_rng(0)
    t = np.array([2, 4, 6, 10, 16]) / 16
    z_paths = np.cumsum(rng.normal(size=(1_000_000, 5)) * np.sqrt(np.diff(t, prepend=0)), axis=1) / np.sqrt(t)
    assert (z_paths >= np.array(z)).any(axis=1).mean() == pytest.approx(0.05 / 8, abs=3 * math.sqrt(0.00625 / 1e6))
    assert nominal == tuple(stats.norm.sf(z))


def test_variance_components_estimate_the_two_way_model():
    """d = a_seed + b_example + e (Gaussian, known variances): the two components are unbiased for
    var(a)/k + var(e)/(kn) and var(b)/n (seed variance well above its floor here), and their sum is
    the spread of the mean over replicates."""
    rng = np.random.default_rng(5)
    r, k, n, sa, sb, se = 2000, 4, 200, 0.1, 0.3, 0.5
    d = (0.0 + rng.normal(0, sa, (r, k, 1)) + rng.normal(0, sb, (r, 1, n)) + rng.normal(0, se, (r, k, n)))
    s = stage_statistics(GateConfig.fixed(k), 0, d)
    assert s.var_seeds.mean() == pytest.approx(sa**2 / k + se**2 / (k * n), rel=0.05)
    assert s.var_examples.mean() == pytest.approx(sb**2 / n, rel=0.05)
    assert (s.var_seeds + s.var_examples).mean() == pytest.approx(s.mean.var(), rel=0.1)


def test_a_chance_tie_of_per_seed_means_does_not_zero_the_seed_component():
    """Two seeds with the same accuracy difference on different examples: the per-seed spread is 0,
    but each seed mean carries the per-example interaction noise, so the seed component is kept at
    MS_res / (k n) and p is not driven to 0 by a tie (the steps of 1/n make ties common)."""
    inc = np.zeros(400, dtype=np.int8)
    inc[:300] = 1
    c1, c2 = inc.copy(), inc.copy()
    c1[300:320], c2[320:340] = 1, 1  # +0.05 on both seeds, on other examples
    s = stage_statistics(GateConfig(), 0, np.stack([c1 - inc, c2 - inc])[None].astype(float))
    d = np.stack([c1 - inc, c2 - inc]).astype(float)
    resid = d - d.mean(1, keepdims=True) - d.mean(0) + d.mean()
    assert s.var_seeds[0] == pytest.approx((resid**2).sum() / (1 * 399) / (2 * 400)) and s.var_seeds[0] > 0


# ------------------------------------------------------------------------ (b) identical differences

def test_same_examples_flipped_on_every_seed_is_not_proof():
    """Candidate = incumbent with the same 6 wrong examples made right on every seed: gate v1 said
    p=0. Here the seed component is 0 and p comes from the 500-example test set alone."""
    rng = np.random.default_rng(3)
    inc = (rng.random(500) < 0.9).astype(np.int8)
    cand = inc.copy()
    cand[np.flatnonzero(inc == 0)[:6]] = 1
    config = GateConfig(proposals=M)
    for stage, k in enumerate(config.stages):
        r = decide_stage(config, stage, [cand] * k, [inc] * k, ACC)
        e = cand - inc
        expected_se = math.sqrt(e.var(ddof=1) / 500)
        assert r.var_seeds < 1e-20 and r.se == pytest.approx(expected_se)
        assert r.df == min(k - 1, 6 - 1)  # no more df than differing examples
        assert r.p_value == pytest.approx(stats.t.sf(0.012 / expected_se, min(k - 1, 5)))
        assert r.p_value > 0.02 and not r.accepted  # exact McNemar: 1/64; never accepted at alpha/m
        if r.action != "continue":
            break
    assert r.reason == "not_better"


def test_many_examples_flipped_the_same_way_on_every_seed_is_accepted():
    """30 of 30 differing examples in the candidate's favour is strong evidence on the distribution
    (sign test p = 2^-30): accepted once the seeds' df allow it (t on 5 df at 6 seeds, 9 at 10)."""
    rng = np.random.default_rng(4)
    inc = (rng.random(500) < 0.85).astype(np.int8)
    cand = inc.copy()
    cand[np.flatnonzero(inc == 0)[:30]] = 1
    r = run_stages(GateConfig(proposals=M), [cand] * 16, [inc] * 16)
    assert r.accepted and r.stage <= 3


def test_no_measurable_noise_is_never_accepted():
    config = GateConfig(proposals=1)
    same = np.ones(100, dtype=np.int8)
    r = decide_stage(config, 0, [same, same], [same, same], ACC)
    assert r.action == "reject" and r.p_value == 1.0 and r.mean_difference == 0.0
    # Right on every example where the incumbent is wrong on every one: nothing left to measure noise on.
    r = decide_stage(GateConfig.fixed(5, proposals=1), 0, [same] * 5, [1 - same] * 5, ACC)
    assert not r.accepted and r.p_value == 1.0 and "no noise" in r.detail
    # The same with float scores: every loss lower by 0.3 leaves rounding-level spread, not noise.
    loss = Metric("log_loss", "lower")
    inc = np.linspace(0.4, 2.0, 100)
    r = decide_stage(GateConfig.fixed(5, proposals=1), 0, [inc - 0.3] * 5, [inc] * 5, loss)
    assert r.mean_difference == pytest.approx(0.3) and not r.accepted and r.p_value == 1.0


# ------------------------------------------------------------------------ (c) power, early stopping

def test_clear_improvement_is_accepted_in_the_first_stages():
    rng = np.random.default_rng(99)
    scenario, config = Scenario(), GateConfig(proposals=M)
    sd = per_seed_sd(rng, scenario, replicates=200)
    cand, inc = simulate(rng, scenario, 400, 16, effect=4 * sd)
    accepted, used = run_design(config, cand - inc)
    assert accepted.mean() >= 0.99 and (used[accepted] <= 6).mean() >= 0.9


def test_worse_candidates_stop_at_the_first_stage():
    rng = np.random.default_rng(7)
    scenario = Scenario()
    sd = per_seed_sd(rng, scenario, replicates=200)
    cand, inc = simulate(rng, scenario, 400, 16, effect=-1 * sd)
    accepted, used = run_design(GateConfig(proposals=M), cand - inc)
    assert not accepted.any() and used.mean() <= 2.5


def test_moderate_effect_gets_more_seeds_and_is_found():
    rng = np.random.default_rng(8)
    scenario = Scenario()
    sd = per_seed_sd(rng, scenario, replicates=200)
    cand, inc = simulate(rng, scenario, 400, 16, effect=1.5 * sd)
    accepted, used = run_design(GateConfig(proposals=M), cand - inc)
    assert accepted.mean() >= 0.9 and used.mean() > 6


def test_futility_stops_a_candidate_no_better_on_average():
    inc = np.zeros(200, dtype=np.int8)
    inc[:150] = 1
    cand = [np.roll(inc, 1), np.roll(inc, -3)]  # permuted correctness: same accuracy, other examples
    r = decide_stage(GateConfig(), 0, cand, [inc, inc], ACC)
    assert r.action == "reject" and r.reason == "not_better" and "futility" in r.detail and r.p_value >= 0.5


def test_min_delta_is_required_of_the_lower_bound():
    rng = np.random.default_rng(12)
    inc = [(rng.random(1000) < 0.8).astype(np.int8) for _ in range(5)]
    cand = [np.where(rng.random(1000) < 0.5, 1, i).astype(np.int8) for i in inc]  # about +0.10
    r = decide_stage(GateConfig.fixed(5, proposals=1), 0, cand, inc, ACC)
    assert r.accepted and r.ci_low > 0
    r = decide_stage(GateConfig.fixed(5, proposals=1, min_delta=0.2), 0, cand, inc, ACC)
    assert not r.accepted and r.ci_low <= 0.2 and r.min_delta == 0.2


def test_direction_lower_is_better_for_per_example_losses():
    rng = np.random.default_rng(13)
    loss = Metric("log_loss", "lower")
    inc = [rng.gamma(2.0, 0.25, 300) for _ in range(6)]
    cand = [x * 0.8 for x in inc]
    config = GateConfig.fixed(6, proposals=1)
    assert decide_stage(config, 0, cand, inc, loss).accepted
    r = decide_stage(config, 0, inc, cand, loss)
    assert not r.accepted and r.mean_difference < 0


def test_fixed_mode_is_one_stage_at_alpha_over_m():
    config = GateConfig.fixed(5, alpha=0.05, proposals=1)
    assert config.stages == (5,) and config.futility == ()
    z, nominal, spent = efficacy_boundaries(config.stages, config.threshold, config.spending)
    assert nominal[0] == pytest.approx(0.05) and spent == (pytest.approx(0.05),)


# ------------------------------------------------------------------------ (d) pure and recorded

def test_decisions_are_deterministic_functions_of_the_inputs():
    rng = np.random.default_rng(21)
    cand, inc = simulate(rng, Scenario(), 1, 4, effect=0.02)
    config = GateConfig(proposals=M)
    a = decide_stage(config, 1, list(cand[0]), list(inc[0]), ACC, seeds=[1, 2, 3, 4])
    b = decide_stage(config, 1, [x.astype(np.float64) for x in cand[0]], tuple(inc[0].copy()), ACC, seeds=(1, 2, 3, 4))
    assert a == b and a.to_dict() == b.to_dict()
    batch = stage_statistics(config, 1, (cand - inc).astype(np.float64))
    assert batch.p[0] == a.p_value and {1: "accept", -1: "reject", 0: "continue"}[int(batch.action[0])] == a.action


def test_decision_round_trips_through_json():
    rng = np.random.default_rng(22)
    cand, inc = simulate(rng, Scenario(), 1, 2)
    r = decide_stage(GateConfig(), 0, list(cand[0]), list(inc[0]), ACC, seeds=[7, 8])
    back = StageDecision.from_dict(json.loads(json.dumps(r.to_dict(), allow_nan=False)))
    assert back == r and back.seeds == [7, 8] and back.stages == (2, 4, 6, 10, 16)
    assert back.accepted == r.accepted and (back.var_seeds, back.var_examples) == (r.var_seeds, r.var_examples)


def test_extreme_designs_stay_finite_for_the_ledger():
    """O'Brien-Fleming-type spending at 2 of 1000 seeds underflows to 0: boundaries stay finite."""
    config = GateConfig(stages=(2, 1000), futility=(0.5,), spending="obrien-fleming", proposals=50)
    rng = np.random.default_rng(23)
    cand, inc = simulate(rng, Scenario(), 1, 2, effect=0.1)
    r = decide_stage(config, 0, list(cand[0]), list(inc[0]), ACC)
    assert math.isfinite(r.boundary_z) and math.isfinite(r.ci_low) and r.action == "continue"
    json.dumps(r.to_dict(), allow_nan=False)


def test_config_is_strict_and_round_trips():
    config = GateConfig(alpha=0.1, proposals=4, stages=[3, 6, 12], futility=[0.5, 0.2])
    assert config.stages == (3, 6, 12) and GateConfig(**json.loads(json.dumps(config.to_dict()))) == config
    with pytest.raises(TypeError):
        GateConfig(seeds=5)  # gate v1's field: unknown here
    for bad in [dict(stages=(1, 4)), dict(stages=(4, 4)), dict(futility=(0.5,)), dict(alpha=0),
                dict(spending="linear"), dict(proposals=0), dict(futility=(0.5, 0.2, 0.1, 0.0))]:
        with pytest.raises(ValueError):
            GateConfig(**bad)


def test_inputs_are_checked():
    ok = np.ones(50, dtype=np.int8)
    config = GateConfig()
    with pytest.raises(ValueError, match="exactly 2 paired seeds"):
        decide_stage(config, 0, [ok] * 3, [ok] * 3, ACC)
    with pytest.raises(ValueError, match="same length"):
        decide_stage(config, 0, [ok, ok[:40]], [ok, ok], ACC)
    with pytest.raises(ValueError, match="finite"):
        decide_stage(config, 0, [ok, np.full(50, np.nan)], [ok, ok], ACC)
    with pytest.raises(ValueError, match="outside"):
        decide_stage(config, 5, [ok] * 2, [ok] * 2, ACC)
