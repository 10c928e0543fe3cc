"""Trusted scoring. Never imports candidate code; parses predictions as plain arrays only.

Predictions are per-example class logits (float32, shape [examples, classes]) written by the
harness's predict phase. This module alone holds the labels and computes the metric.
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

    def better(self, a: float, b: float) -> bool:
        return self.improvement(a, b) > 0


@dataclass(frozen=True)
class SplitScores:
    metric: float
    correct: np.ndarray  # per-example 0/1, int8
    nll: np.ndarray  # per-example negative log-likelihood, float64
    count: int

    @property
    def log_loss(self) -> float:
        return float(self.nll.mean())


def parse_predictions(raw: bytes, *, rows: int, classes: int) -> np.ndarray:
    try:
        arr = np.load(io.BytesIO(raw), allow_pickle=False)
    except Exception as exc:  # np.load raises many types for malformed bytes; all mean the same here
        raise PredictionError("crash", f"predictions are not a valid .npy array: {type(exc).__name__}: {exc}") from None
    if not isinstance(arr, np.ndarray) or arr.dtype.kind != "f":
        raise PredictionError("crash", f"predictions must be a float array, got dtype {getattr(arr, 'dtype', '?')}")
    if arr.shape != (rows, classes):
        raise PredictionError("crash", f"predictions have shape {arr.shape}, expected ({rows}, {classes})")
    if not np.isfinite(arr).all():
        bad = int((~np.isfinite(arr)).any(axis=1).sum())
        raise PredictionError("nonfinite", f"predictions contain NaN or inf in {bad} row(s)")
    return arr.astype(np.float64)


def score_logits(logits: np.ndarray, labels: np.ndarray, *, metric: Metric) -> SplitScores:
    """The metric and per-example scores of parsed logits (float64, finite, rows = labels)."""
    shifted = logits - logits.max(axis=1, keepdims=True)
    log_probs = shifted - np.log(np.exp(shifted).sum(axis=1, keepdims=True))
    nll = -log_probs[np.arange(labels.shape[0]), labels]
    correct = (logits.argmax(axis=1) == labels).astype(np.int8)
    if metric.name != "accuracy":
        raise ValueError(f"unsupported metric {metric.name}")
    return SplitScores(metric=float(correct.mean()), correct=correct, nll=nll, count=int(labels.shape[0]))


def score(raw: bytes, labels: np.ndarray, *, classes: int, metric: Metric) -> SplitScores:
    return score_logits(parse_predictions(raw, rows=int(labels.shape[0]), classes=classes), labels, metric=metric)
