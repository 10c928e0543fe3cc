"""Secondary metrics shown beside the gated one (macro-F1, per-class accuracy). Never gated.

They come from `evaluate` metric modules shipped in ``autoresearch/metric_scripts/`` and loaded
by path: the hub's scripts cannot load offline, and a local script cannot change under us.
`evaluate` (and `datasets` under it) is imported only here, lazily, so the CLI stays quick to
start; without it (the optional `hub` extra) reports say so instead of showing the figures.
"""

from __future__ import annotations

import threading
from pathlib import Path

import numpy as np

SCRIPTS = Path(__file__).resolve().parent / "metric_scripts"
METRICS = ("macro_f1", "per_class_accuracy")
_loaded: dict[str, object] = {}
_lock = threading.Lock()


def _module(name: str):
    with _lock:  # evaluate.load copies the script into its module cache: not thread-safe
        if name not in _loaded:
            import evaluate

            _loaded[name] = evaluate.load(str(SCRIPTS / f"{name}.py"))
        return _loaded[name]


def available() -> bool:
    try:
        import evaluate  # noqa: F401
    except ImportError:
        return False
    return True


def secondary_metrics(predicted: np.ndarray, labels: np.ndarray, num_classes: int) -> dict:
    """Macro-F1 and per-class accuracy of predicted class ids against labels."""
    if not available():
        return {"unavailable": "install autoresearch-gate[hub] (the `evaluate` package) for secondary metrics"}
    out: dict = {}
    for name in METRICS:
        module = _module(name)
        with _lock:
            out.update(module.compute(predictions=predicted.astype(np.int64).tolist(),
                                      references=labels.astype(np.int64).tolist(), num_classes=num_classes))
    return out


def secondary_from_logits(raw: bytes, labels: np.ndarray, num_classes: int) -> dict:
    """The same from a trial's raw test predictions; a failure here is reported, never fatal:
    secondary figures are shown, not gated."""
    from autoresearch.scoring import PredictionError, parse_predictions

    try:
        logits = parse_predictions(raw, rows=int(labels.shape[0]), classes=num_classes)
        return secondary_metrics(logits.argmax(axis=1), labels, num_classes)
    except (PredictionError, ImportError, OSError, ValueError) as exc:
        return {"error": f"{type(exc).__name__}: {exc}"[:300]}
