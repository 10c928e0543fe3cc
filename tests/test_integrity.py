"""Integrity rules: what a change must not be able to buy its acceptance with.

Unit tests of the trusted-side checks (autoresearch.integrity, autoresearch.seeding) and two
end-to-end runs for the seed rules (the adversarial suite holds the other attacks: a bundled copy
of the labels, a longer training loop, training in the predict phase, answer keys, transduction)."""

from __future__ import annotations

import sqlite3
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from autoresearch.benchmark import load_benchmark, materialise_splits
from autoresearch.integrity import (IntegritySpec, build_predict_set, literal_tables, memorisation, perturb,
                                    seed_ignored, transductive, weight_variation)
from autoresearch.seeding import derived_key, draw_seeds, trial_key
from conftest import AUTORESEARCH, copy_benchmark

sys.path.insert(0, str(Path(__file__).parent))
from adversarial.cases import PRIVATE_INIT, _line  # noqa: E402


# --------------------------------------------------------------------------- seeds


def test_seeds_are_drawn_per_run_and_look_alike():
    a, b = "11" * 32, "22" * 32
    assert draw_seeds(a, "gate", 5) == draw_seeds(a, "gate", 5)  # a resumed run gets its own seeds back
    assert draw_seeds(a, "gate", 5) != draw_seeds(b, "gate", 5)
    gate, verify = draw_seeds(a, "gate", 16), draw_seeds(a, "verify", 16)
    assert len(set(gate)) == 16 and not set(gate) & set(verify)
    assert draw_seeds(a, "gate", 16)[:5] == draw_seeds(a, "gate", 5)  # more seeds extend, never reshuffle
    # Nothing tells verification seeds from gate seeds (the landed code used 1-5 and 1001-1005).
    assert all(0 <= s < 2**31 for s in gate + verify) and min(gate + verify) > 1000


def test_trial_keys_pair_arms_and_hide_the_seed():
    secret = "33" * 32
    assert trial_key(secret, 7) == trial_key(secret, 7)  # candidate and incumbent share a seed's key
    assert trial_key(secret, 7) != trial_key(secret, 8) != trial_key("44" * 32, 8)
    assert len(trial_key(secret, 7)) == 64 and str(7) != trial_key(secret, 7)
    assert derived_key(secret, "sketch") != derived_key(secret, "other")


# --------------------------------------------------------------------------- the predict set


@pytest.fixture(scope="module")
def digits_splits():
    return materialise_splits(load_benchmark("digits-mlp").spec)


def test_predict_set_layout_and_secret_order(digits_splits):
    spec = IntegritySpec(perturb_step=1 / 16)
    inputs, layout = build_predict_set(digits_splits, "55" * 32, spec)
    val, test = digits_splits["val"].x, digits_splits["test"].x
    assert inputs.shape == (len(val) + 2 * len(test), 64) and inputs.dtype == val.dtype
    assert np.array_equal(inputs[layout.val_rows], val) and np.array_equal(inputs[layout.test_rows], test)
    copies = inputs[layout.perturbed_rows]
    assert not np.any(np.all(copies == test, axis=1))  # every copy differs from its original
    assert np.allclose(np.abs(copies - test)[copies != test], 1 / 16)  # by one intensity step where it does
    assert np.all((copies >= 0) & (copies <= 1))
    rows = np.concatenate([layout.val_rows, layout.test_rows, layout.perturbed_rows])
    assert sorted(rows.tolist()) == list(range(inputs.shape[0]))
    assert not np.array_equal(layout.test_rows, np.arange(len(val), len(val) + len(test)))  # not in split order
    other, _ = build_predict_set(digits_splits, "66" * 32, spec)
    assert not np.array_equal(other, inputs)  # another run, another order
    again, again_layout = build_predict_set(digits_splits, "55" * 32, spec)
    assert np.array_equal(again, inputs) and np.array_equal(again_layout.check_rows, layout.check_rows)


def test_no_perturbation_for_inputs_without_one(digits_splits):
    inputs, layout = build_predict_set(digits_splits, "55" * 32, IntegritySpec(perturbation="none"))
    assert layout.perturbed_rows.size == 0 and inputs.shape[0] == 297 + 500


def test_perturb_keeps_integer_images_in_range():
    x = np.random.default_rng(0).integers(0, 256, (50, 1, 28, 28)).astype(np.uint8)
    y = perturb(x, np.random.default_rng(1), fraction=0.1, step=16)
    assert y.dtype == np.uint8 and y.shape == x.shape
    changed = (y != x).reshape(50, -1)
    assert changed.any(axis=1).all() and 0.05 < changed.mean() < 0.15


def test_transductive_check():
    logits = np.random.default_rng(0).normal(size=(100, 10))
    rows = np.array([5, 3, 99])
    assert transductive(logits, logits[rows] + 1e-7, rows) is None
    assert "depend on the other inputs" in transductive(logits, logits[rows] + 0.5, rows)
    assert "shape" in transductive(logits, logits[:2], rows)


# --------------------------------------------------------------------------- seeds ignored


def _sketch(rng, base=None, noise=1.0):
    w = rng.normal(size=64) if base is None else base + noise * rng.normal(size=64)
    return {"0.weight": w.tolist(), "0.bias": [0.0] * 8}


def test_weight_variation_tells_a_fixed_draw_from_random_inits():
    rng = np.random.default_rng(0)
    assert weight_variation([_sketch(rng) for _ in range(3)]) > 0.5
    base = rng.normal(size=64)
    assert weight_variation([_sketch(rng, base, 1e-6) for _ in range(3)]) < 1e-6
    assert weight_variation([{"b": [0.0] * 4}, {"b": [0.0] * 4}]) is None  # nothing random at all


def test_seed_ignored_rules():
    rng = np.random.default_rng(1)
    base = rng.normal(size=64)
    honest = [{"checkpoint_sha256": f"{i:064x}", "sketch": {"init": _sketch(rng)}} for i in range(2)]
    assert seed_ignored(honest) is None
    same_final = [{"checkpoint_sha256": "a" * 64, "sketch": {"init": _sketch(rng)}} for _ in range(2)]
    assert "identical final checkpoints" in seed_ignored(same_final)
    fixed = [{"checkpoint_sha256": f"{i:064x}", "sketch": {"init": _sketch(rng),
                                                            "first_training_forward": _sketch(rng, base, 1e-7)}}
             for i in range(2)]
    assert "at the first training step" in seed_ignored(fixed)  # re-initialised inside fit
    assert seed_ignored(honest[:1]) is None  # one seed says nothing


# --------------------------------------------------------------------------- answer keys


def _arms(rng, n, acc_orig, acc_pert, seeds=2):
    return [((rng.random(n) < acc_orig).astype(np.int8), (rng.random(n) < acc_pert).astype(np.int8))
            for _ in range(seeds)]


def test_memorisation_flags_an_answer_key_not_an_honest_gain():
    rng = np.random.default_rng(2)
    incumbent = _arms(rng, 500, 0.62, 0.61)
    honest = _arms(rng, 500, 0.92, 0.91)
    assert not memorisation(honest, incumbent, margin=0.02).flagged
    key = [(np.ones(500, np.int8), pert) for _, pert in _arms(rng, 500, 0.62, 0.61)]
    check = memorisation(key, incumbent, margin=0.02)
    assert check.flagged and check.excess_drop > 0.3 and "memorised" in check.detail
    # A partial key (a tenth of the test examples) is still far beyond example noise.
    partial = []
    for orig, pert in _arms(rng, 500, 0.62, 0.61):
        orig = orig.copy()
        orig[:50] = 1
        pert = pert.copy()
        pert[:50] = 0
        partial.append((orig, pert))
    assert memorisation(partial, incumbent, margin=0.02).flagged


def test_large_literal_tables_are_found():
    old = {"model.py": "x = 1\n"}
    table = "KEY = " + repr({f"k{i}": i % 10 for i in range(500)}) + "\n"
    blob = "LABELS = '" + "0123456789" * 60 + "'\n"
    found = literal_tables(old, {"model.py": "x = 1\n" + table + blob})
    assert any("dict literal of 500" in f for f in found) and any("str literal of 600" in f for f in found)
    assert literal_tables(old, {"model.py": "x = [1, 2, 3]\n"}) == []


# --------------------------------------------------------------------------- end to end: seeds


FIXED_DRAW = _line("re-draw every weight from a private generator of a fixed seed", [
    {"path": "train.py", "search": "    n = x.shape[0]\n", "replace": PRIVATE_INIT + "    n = x.shape[0]\n"}])
FIXED_PLUS_NOISE = _line("a fixed draw plus seeded noise too small to matter", [
    {"path": "train.py", "search": "    n = x.shape[0]\n",
     "replace": PRIVATE_INIT + "    with _t.no_grad():\n        for _p in model.parameters():\n"
                "            _p.add_(1e-6 * _t.randn(_p.shape))\n    n = x.shape[0]\n"}])


@pytest.mark.slow
def test_one_fixed_draw_on_every_seed_is_seed_ignored(tmp_path):
    """The paired test cannot see a private constant seed (every gate seed repeats one lucky draw);
    the harness's weight sketches can. A fixed design of two seeds: both proposals reach the check."""
    bench = copy_benchmark(tmp_path / "bench", train_seconds=20, predict_seconds=15, grace_seconds=15)
    proposals = tmp_path / "p.jsonl"
    proposals.write_text(FIXED_DRAW + "\n" + FIXED_PLUS_NOISE + "\n")
    out = subprocess.run([AUTORESEARCH, "run", "--benchmark", str(bench), "--proposals-file", str(proposals),
                          "--seeds", "2", "--no-verify", "--runs-dir", str(tmp_path / "runs")],
                         capture_output=True, text=True, timeout=900)
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
    (ledger,) = (tmp_path / "runs").glob("*/ledger.sqlite")
    rows = sqlite3.connect(ledger).execute("SELECT idx, reason, detail FROM proposals ORDER BY idx").fetchall()
    assert [r[1] for r in rows] == ["seed_ignored", "seed_ignored"], rows
    assert "identical final checkpoints" in rows[0][2] or "same on every seed" in rows[0][2]
    assert "at the first training step" in rows[1][2], rows[1]
