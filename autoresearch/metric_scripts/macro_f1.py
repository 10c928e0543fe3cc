"""Macro-averaged F1: an `evaluate` metric module shipped with autoresearch, loaded by path
(the hub's metric scripts cannot be fetched offline). Trusted code: it sees labels and predicted
classes, never candidate code."""
import datasets
import evaluate
import numpy as np

_DESCRIPTION = "Unweighted mean over classes of the F1 score (classes absent from both labels and predictions count 0)."


class MacroF1(evaluate.Metric):
    def _info(self):
        return evaluate.MetricInfo(
            description=_DESCRIPTION, citation="", inputs_description="predictions, references: int class ids",
            features=datasets.Features({"predictions": datasets.Value("int64"), "references": datasets.Value("int64")}))

    def _compute(self, predictions, references, num_classes=None):
        p, r = np.asarray(predictions), np.asarray(references)
        k = int(num_classes or max(p.max(initial=0), r.max(initial=0)) + 1)
        f1 = []
        for c in range(k):
            tp = np.sum((p == c) & (r == c))
            denom = np.sum(p == c) + np.sum(r == c)
            f1.append(0.0 if denom == 0 else 2.0 * tp / denom)
        return {"macro_f1": float(np.mean(f1))}
