"""Integrity checks that decide whether a candidate's numbers mean what they seem to, on the
trusted side, from what the trials returned (never from candidate code's own claims alone).

* **The predict set.** The predict phase gets the val and test inputs mixed, in a per-run secret
  order, with a slightly perturbed copy of every test input. A change that carries an answer key
  (labels looked up by position or by content) cannot find positions, and its key misses the
  perturbed copies: its accuracy on them falls far below its accuracy on the originals
  (``memorised``). A second pass over a secret subset in another order and batch size must give
  the same logits: a model whose output for one example depends on the others (test-time
  adaptation, pseudo-labels) is ``transductive``, which a benchmark allows only if its spec says so.
* **Seeds.** A candidate whose weights are one fixed draw on every seed (a private constant seed,
  a deterministic init) turns the paired test into one lucky draw repeated k times:
  ``seed_ignored`` when initial weights (at the first training forward pass, else right after
  ``build_model``) are identical or nearly so across seeds, or when final checkpoints are identical.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Literal

import numpy as np
from pydantic import BaseModel, ConfigDict, Field

from autoresearch.datasets import Split
from autoresearch.seeding import rng_seed

# Across-seed variance of the initial weights below this share of their within-tensor variance
# means one fixed draw (independent random inits give ~1; a fixed draw plus tiny noise gives ~0).
SEED_VARIANCE_FLOOR = 0.01
# z of the excess accuracy drop on perturbed copies above which a change is "memorised".
MEMORISED_Z = 3.0


class IntegritySpec(BaseModel):
    """A benchmark's integrity rules ([integrity] in spec.toml); each is stated in every report."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    perturbation: Literal["noise", "none"] = Field(
        default="noise", description="perturbed copies of the test inputs in the predict set (none: for "
        "inputs with no small, label-preserving change, e.g. token ids; the memorisation check is then off)")
    perturb_fraction: float = Field(default=0.1, gt=0, le=1, description="share of an input's entries changed")
    perturb_step: float | None = Field(default=None, gt=0, description="size of each change in input units "
                                       "(default: 1/16 of the test inputs' range, at least 1 for integers)")
    memorised_margin: float = Field(default=0.02, ge=0, description="excess accuracy drop on perturbed copies "
                                    "(candidate minus incumbent) tolerated before `memorised`")
    transductive: bool = Field(default=False, description="may a prediction depend on other test inputs")
    budget_tolerance: float = Field(default=0.01, ge=0, le=1, description="examples over epochs x train size "
                                    "tolerated (partial batches, a shape probe)")
    eval_epochs: float = Field(default=1.0, ge=0, description="examples with gradients off allowed in training, "
                               "in epochs of the train split (evaluation passes)")
    max_checkpoint_mb: float = Field(default=64, gt=0, description="the model's state_dict on disk")
    check_rows: int = Field(default=256, ge=0, description="rows predicted twice for the transductive check")


@dataclass(frozen=True)
class PredictLayout:
    """Where each example sits in the predict set (trusted side only)."""

    val_rows: np.ndarray
    test_rows: np.ndarray
    perturbed_rows: np.ndarray  # row of the perturbed copy of test example i (empty: no perturbation)
    check_rows: np.ndarray  # rows predicted a second time, in this order


def perturb(x: np.ndarray, rng: np.random.Generator, *, fraction: float, step: float | None) -> np.ndarray:
    """A copy of x with a random ``fraction`` of each example's entries moved by +-step (clipped to
    x's range, dtype kept); every example changes in at least one entry."""
    lo, hi = x.min(), x.max()
    integer = np.issubdtype(x.dtype, np.integer)
    if step is None:
        step = float(hi - lo) / 16.0
    if integer:
        step = max(1, int(round(step)))
    flat = x.reshape(x.shape[0], -1).astype(np.float64)
    mask = rng.random(flat.shape) < fraction
    mask[np.arange(flat.shape[0]), rng.integers(0, flat.shape[1], flat.shape[0])] = True
    signs = rng.choice(np.array([-1.0, 1.0]), size=flat.shape)
    moved = np.clip(flat + signs * step, lo, hi)
    # Where clipping cancelled the move, go the other way (still within range).
    stuck = moved == flat
    moved[stuck] = np.clip(flat[stuck] - signs[stuck] * step, lo, hi)
    out = np.where(mask, moved, flat)
    return out.reshape(x.shape).astype(x.dtype)


def build_predict_set(splits: dict[str, Split], secret: str, spec: IntegritySpec) -> tuple[np.ndarray, PredictLayout]:
    """The predict inputs (val, test and perturbed test copies, in a secret order) and their layout."""
    val_x, test_x = splits["val"].x, splits["test"].x
    parts = [val_x, test_x]
    if spec.perturbation == "noise":
        parts.append(perturb(test_x, np.random.default_rng(rng_seed(secret, "perturb")),
                             fraction=spec.perturb_fraction, step=spec.perturb_step))
    stacked = np.concatenate(parts)
    n = stacked.shape[0]
    order = np.random.default_rng(rng_seed(secret, "predict-order")).permutation(n)  # row r shows stacked[order[r]]
    position = np.empty(n, dtype=np.int64)
    position[order] = np.arange(n)
    nv, nt = val_x.shape[0], test_x.shape[0]
    check = np.random.default_rng(rng_seed(secret, "check-rows")).permutation(n)[:min(spec.check_rows, n)]
    layout = PredictLayout(val_rows=position[:nv], test_rows=position[nv:nv + nt],
                           perturbed_rows=position[nv + nt:] if len(parts) == 3 else np.zeros(0, np.int64),
                           check_rows=check.astype(np.int64))
    return np.ascontiguousarray(stacked[order]), layout


# --------------------------------------------------------------------------- checks on results


def transductive(logits: np.ndarray, check: np.ndarray, rows: np.ndarray) -> str | None:
    """The check pass (other order, other batch size) must reproduce the main pass's logits."""
    if check.shape != (rows.size, logits.shape[1]):
        return f"the check pass has shape {check.shape}, expected ({rows.size}, {logits.shape[1]})"
    if rows.size == 0:
        return None
    main = logits[rows]
    scale = 1.0 + np.abs(main).max(axis=1)
    worst = float((np.abs(main - check).max(axis=1) / scale).max())
    if worst > 1e-3:
        return (f"predictions depend on the other inputs: {rows.size} rows predicted again in another order and "
                f"batch size differ by up to {worst:.3g} (relative); the benchmark does not allow transductive "
                "prediction (spec [integrity] transductive = false)")
    return None


def _sketch_matrix(sketches: list[dict]) -> list[np.ndarray]:
    """Per tensor name present in every sketch with the same length: a seeds x coordinates matrix."""
    names = set(sketches[0])
    for s in sketches[1:]:
        names &= set(s)
    out = []
    for name in sorted(names):
        rows = [s[name] for s in sketches]
        if len({len(r) for r in rows}) == 1 and rows[0]:
            out.append(np.asarray(rows, dtype=np.float64))
    return out


def weight_variation(sketches: list[dict]) -> float | None:
    """Across-seed variance of sketched weights over their within-tensor variance (None: nothing random)."""
    mats = _sketch_matrix(sketches)
    across = sum(float(m.var(axis=0).mean()) for m in mats)
    within = sum(float(m.var(axis=1).mean()) for m in mats)
    if within <= 1e-20:
        return None  # constant tensors only (or none): no randomness to compare
    return across / within


def seed_ignored(reports: list[dict]) -> str | None:
    """Detail when the candidate's weights do not depend on the seed (>= 2 train reports)."""
    if len(reports) < 2:
        return None
    digests = [r.get("checkpoint_sha256") for r in reports]
    if len(set(digests)) < len(digests):
        return "identical final checkpoints on different seeds: the training ignores the seed it is given"
    for stage in ("first_training_forward", "init"):
        sketches = [r.get("sketch", {}).get(stage) for r in reports]
        if any(not s for s in sketches):
            continue
        ratio = weight_variation(sketches)
        if ratio is not None and ratio < SEED_VARIANCE_FLOOR:
            where = "at the first training step" if stage == "first_training_forward" else "after build_model"
            return (f"the initial weights {where} are (nearly) the same on every seed (across-seed variance "
                    f"{ratio:.2g} of the within-tensor variance, floor {SEED_VARIANCE_FLOOR}): one fixed draw, "
                    "not a method that works for any seed")
        break  # the later stage decides when it exists
    return None


@dataclass(frozen=True)
class MemorisationCheck:
    excess_drop: float  # mean over seeds and examples of (candidate's drop) - (incumbent's drop)
    z: float
    flagged: bool
    detail: str


def memorisation(candidate: list[tuple[np.ndarray, np.ndarray]], incumbent: list[tuple[np.ndarray, np.ndarray]],
                 *, margin: float) -> MemorisationCheck | None:
    """Per seed, (correct on test originals, correct on their perturbed copies) for both arms.
    Flags a candidate whose accuracy drops on the perturbed copies by more than the incumbent's
    drop plus ``margin``, beyond example noise (z over test examples)."""
    if not candidate or not incumbent or len(candidate) != len(incumbent) or candidate[0][1].size == 0:
        return None
    per_seed = []
    for (c_orig, c_pert), (i_orig, i_pert) in zip(candidate, incumbent):
        per_seed.append((c_orig.astype(np.float64) - c_pert) - (i_orig.astype(np.float64) - i_pert))
    x = np.mean(per_seed, axis=0)  # per test example, averaged over seeds
    mean = float(x.mean())
    sd = float(x.std(ddof=1)) if x.size > 1 else 0.0
    z = mean / (sd / math.sqrt(x.size)) if sd > 0 else (math.inf if mean > 0 else 0.0)
    flagged = mean > margin and z > MEMORISED_Z
    detail = (f"accuracy on perturbed copies of the test inputs drops {mean:+.4f} more than the incumbent's "
              f"(z={z:.2f}; flagged above {margin} with z>{MEMORISED_Z})")
    if flagged:
        detail = ("memorised: the change scores far better on the test inputs themselves than on slightly "
                  "perturbed copies of them, as an answer key would; " + detail)
    return MemorisationCheck(excess_drop=mean, z=z, flagged=flagged, detail=detail)


# --------------------------------------------------------------------------- what the diff carries

LITERAL_ELEMENTS = 64  # a list/dict/set/tuple literal with more constant elements than this is a "table"
LITERAL_CHARS = 512  # a string or bytes literal longer than this is data, not code


def literal_tables(old: dict[str, str], new: dict[str, str]) -> list[str]:
    """Large literal data a change adds (e.g. an answer key: 500 labels fit in ~200 bytes of a
    string), one line per finding. Shown in the report; the memorisation check is the decision."""
    import ast

    def tables(source: str) -> list[tuple[int, str]]:
        try:
            tree = ast.parse(source)
        except (SyntaxError, ValueError, RecursionError, MemoryError):
            return []
        found = []
        for node in ast.walk(tree):
            if isinstance(node, (ast.List, ast.Tuple, ast.Set)):
                n = sum(isinstance(e, ast.Constant) for e in node.elts)
                if n > LITERAL_ELEMENTS:
                    found.append((node.lineno, f"a {type(node).__name__.lower()} literal of {n} constants"))
            elif isinstance(node, ast.Dict):
                n = sum(isinstance(v, ast.Constant) for v in node.values)
                if n > LITERAL_ELEMENTS:
                    found.append((node.lineno, f"a dict literal of {n} constant values"))
            elif isinstance(node, ast.Constant) and isinstance(node.value, (str, bytes)) and \
                    len(node.value) > LITERAL_CHARS:
                found.append((node.lineno, f"a {type(node.value).__name__} literal of {len(node.value):,} characters"))
        return found

    out = []
    for path in sorted(new):
        if not path.endswith(".py") or old.get(path) == new[path]:
            continue
        before = {what for _line, what in tables(old.get(path, ""))}
        for line, what in tables(new[path]):
            if what not in before:
                out.append(f"{path}:{line}: {what}")
    return out
