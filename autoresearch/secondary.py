"""Secondary metrics shown beside the gated one (macro-F1, per-class accuracy). Never gated.

Computed with scikit-learn from predicted classes and labels, on the trusted side only.
"""

from __future__ import annotations

import numpy as np


def secondary_metrics(predicted: np.ndarray, labels: np.ndarray, num_classes: int) -> dict:
    """Macro-F1 over all ``num_classes`` classes (a class never predicted nor present counts 0) and
    each class's accuracy (recall; None for a class absent from the labels)."""
    from sklearn.metrics import f1_score

    p, r = np.asarray(predicted, dtype=np.int64), np.asarray(labels, dtype=np.int64)
    classes = list(range(num_classes))
    return {"macro_f1": float(f1_score(r, p, labels=classes, average="macro", zero_division=0.0)),
            "per_class_accuracy": [None if not np.any(r == c) else float(np.mean(p[r == c] == c)) for c in classes]}


def secondary_from_logits(logits: np.ndarray | None, labels: np.ndarray, num_classes: int) -> dict:
    """The same from a trial's test logits (already parsed by the scorer); shown, never gated."""
    if logits is None:
        return {}
    return secondary_metrics(np.asarray(logits).argmax(axis=1), labels, num_classes)
