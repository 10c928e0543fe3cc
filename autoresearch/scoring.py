"""Trusted scoring. Never imports candidate code; parses predictions as plain arrays only.

Predictions are per-example class logits (float32, shape [examples, classes]) written by the
harness's predict phase. This module alone holds the labels and computes the metric.

The bytes come from a sandbox: parse_predictions reads the .npy header itself and checks it
before touching the data, so no header (huge, object or structured dtype, float128, Fortran
order, a shape that would need terabytes) makes this process allocate, unpickle or crash.
"""

from __future__ import annotations

import io
from dataclasses import dataclass
from typing import Literal

import numpy as np


class PredictionError(ValueError):
    """Predictions that cannot be scored; ``kind`` maps to a trial status."""

    def __init__(self, kind: Literal["nonfinite", "crash"], message: str):
        super().__init__(message)
        self.kind = kind


@dataclass(frozen=True)
class Metric:
    """A metric that knows which way is better."""

    name: str
    direction: Literal["higher", "lower"]

    def improvement(self, candidate: float, incumbent: float) -> float:
        """Positive when the candidate is better, whatever the direction."""
        return candidate - incumbent if self.direction == "higher" else incumbent - candidate


@dataclass(frozen=True)
class SplitScores:
    metric: float
    correct: np.ndarray  # per-example 0/1, int8
    nll: np.ndarray  # per-example negative log-likelihood, float64
    count: int

    @property
    def log_loss(self) -> float:
        return float(self.nll.mean())


# float32 or float64, either byte order: what np.save writes for the harness's logits. Wider
# floats are refused: float128 holds finite values (1e4000) that are inf as float64.
PREDICTION_DTYPES = ("<f4", ">f4", "<f8", ">f8")
MAX_HEADER_BYTES = 1024  # np.save's header for a 2-D array is 128 bytes


def parse_predictions(raw: bytes, *, rows: int, classes: int) -> np.ndarray:
    """Logits as a float64 (rows, classes) array, from a .npy file of format 1.0 holding exactly
    that: a C-order float32/float64 array of that shape and nothing after its data."""
    fp = io.BytesIO(raw)
    try:
        version = np.lib.format.read_magic(fp)
        if version != (1, 0):
            raise ValueError(f"format version {version}, expected (1, 0)")
        shape, fortran_order, dtype = np.lib.format.read_array_header_1_0(fp, max_header_size=MAX_HEADER_BYTES)
    except Exception as exc:  # numpy raises many types for a malformed header; all mean the same here
        raise PredictionError("crash", f"predictions are not a valid .npy array: {type(exc).__name__}: {exc}"[:500]) \
            from None
    if dtype.str not in PREDICTION_DTYPES:
        raise PredictionError("crash", f"predictions must be float32 or float64, got dtype {dtype.str[:40]}")
    if fortran_order:
        raise PredictionError("crash", "predictions must be in C order, got Fortran order")
    if shape != (rows, classes):
        raise PredictionError("crash", f"predictions have shape {str(shape)[:100]}, expected ({rows}, {classes})")
    offset, expected = fp.tell(), rows * classes * dtype.itemsize
    if len(raw) - offset != expected:
        raise PredictionError("crash", f"predictions hold {len(raw) - offset} bytes of data, expected {expected}")
    arr = np.frombuffer(raw, dtype=dtype, count=rows * classes, offset=offset).reshape(rows, classes)
    arr = arr.astype(np.float64)
    if not np.isfinite(arr).all():  # after the cast: what is scored must be finite
        bad = int((~np.isfinite(arr)).any(axis=1).sum())
        raise PredictionError("nonfinite", f"predictions contain NaN or inf in {bad} row(s)")
    return arr


def score_logits(logits: np.ndarray, labels: np.ndarray, *, metric: Metric) -> SplitScores:
    """The metric and per-example scores of parsed logits (float64, finite, rows = labels)."""
    with np.errstate(over="ignore"):  # finite float64 logits ~1e308 apart overflow: checked just below
        shifted = logits - logits.max(axis=1, keepdims=True)
    log_probs = shifted - np.log(np.exp(shifted).sum(axis=1, keepdims=True))
    nll = -log_probs[np.arange(labels.shape[0]), labels]
    if not np.isfinite(nll).all():
        raise PredictionError("nonfinite", "log loss is infinite: the logits span more than float64 can hold")
    correct = (logits.argmax(axis=1) == labels).astype(np.int8)
    if metric.name != "accuracy":
        raise ValueError(f"unsupported metric {metric.name}")
    return SplitScores(metric=float(correct.mean()), correct=correct, nll=nll, count=int(labels.shape[0]))


def score(raw: bytes, labels: np.ndarray, *, classes: int, metric: Metric) -> SplitScores:
    return score_logits(parse_predictions(raw, rows=int(labels.shape[0]), classes=classes), labels, metric=metric)
