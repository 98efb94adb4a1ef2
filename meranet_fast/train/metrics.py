"""Classification metrics of micro-expression recognition, all computed from a confusion matrix.

- accuracy: trace / total.
- precision, recall, f1: unweighted means over classes of the per-class values (macro averages).
  A class with no predictions has precision 0, one with no samples recall 0; F1 of a class is
  ``2·TP / (2·TP + FP + FN)`` (0 when that is 0/0).
- uf1 (unweighted F1) and uar (unweighted average recall), the MEGC metrics, are the macro F1 and the
  macro recall of the given matrix. For leave-one-subject-out they are computed on the confusion matrix
  pooled over all folds (pass the summed matrix), which is how MEGC defines them.
"""
from __future__ import annotations

import numpy as np

__all__ = ["confusion_matrix", "classification_metrics"]


def confusion_matrix(y_true, y_pred, num_classes: int) -> np.ndarray:
    """``cm[i, j]`` = number of samples of true class ``i`` predicted as ``j`` (int64 ``[K, K]``)."""
    y_true = np.asarray(y_true, dtype=np.int64).ravel()
    y_pred = np.asarray(y_pred, dtype=np.int64).ravel()
    if y_true.shape != y_pred.shape:
        raise ValueError(f"y_true and y_pred differ in length: {y_true.size} vs {y_pred.size}")
    for name, y in (("y_true", y_true), ("y_pred", y_pred)):
        if y.size and (y.min() < 0 or y.max() >= num_classes):
            raise ValueError(f"{name} has labels outside 0..{num_classes - 1}")
    return np.bincount(y_true * num_classes + y_pred, minlength=num_classes ** 2).reshape(num_classes, num_classes)


def _ratio(num: np.ndarray, den: np.ndarray) -> np.ndarray:
    return np.divide(num, den, out=np.zeros_like(num, dtype=np.float64), where=den > 0)


def classification_metrics(cm: np.ndarray) -> dict[str, float]:
    """Accuracy, macro precision/recall/F1, UF1 and UAR of a confusion matrix (see the module docstring)."""
    cm = np.asarray(cm, dtype=np.float64)
    tp = np.diag(cm)
    support = cm.sum(axis=1)
    predicted = cm.sum(axis=0)
    precision = _ratio(tp, predicted)
    recall = _ratio(tp, support)
    f1 = _ratio(2 * tp, support + predicted)
    total = cm.sum()
    return {
        "accuracy": float(tp.sum() / total) if total else 0.0,
        "precision": float(precision.mean()),
        "recall": float(recall.mean()),
        "f1": float(f1.mean()),
        "uf1": float(f1.mean()),
        "uar": float(recall.mean()),
    }
