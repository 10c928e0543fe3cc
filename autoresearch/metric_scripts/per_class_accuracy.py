"""Per-class accuracy (recall of each class): an `evaluate` metric module shipped with
autoresearch, loaded by path. Trusted code: it sees labels and predicted classes only."""
import datasets
import evaluate
import numpy as np

_DESCRIPTION = "For each class, the fraction of its examples predicted as that class (None when it has none)."


class PerClassAccuracy(evaluate.Metric):
    def _info(self):
        return evaluate.MetricInfo(
            description=_DESCRIPTION, citation="", inputs_description="predictions, references: int class ids",
            features=datasets.Features({"predictions": datasets.Value("int64"), "references": datasets.Value("int64")}))

    def _compute(self, predictions, references, num_classes=None):
        p, r = np.asarray(predictions), np.asarray(references)
        k = int(num_classes or max(p.max(initial=0), r.max(initial=0)) + 1)
        return {"per_class_accuracy": [None if not np.any(r == c) else float(np.mean(p[r == c] == c))
                                       for c in range(k)]}
