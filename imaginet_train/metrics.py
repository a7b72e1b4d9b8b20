"""The paper's metrics on arrays: ROC AUC, average precision, balanced accuracy, confusion matrix.

Subsets of a test set (one generator, one content type) are often degenerate, e.g. a single class;
there a metric that is undefined is NaN instead of an exception or a warning, so that tables stay
complete. AUC and AP are scikit-learn's; balanced accuracy is the mean recall over the classes
present in `y_true` (scikit-learn's definition).
"""
from __future__ import annotations

import math

import numpy as np
from sklearn.metrics import average_precision_score, roc_auc_score

# Origin metrics classify a sample as synthetic when its probability reaches this.
THRESHOLD = 0.5


def roc_auc(y_true: np.ndarray, score: np.ndarray) -> float:
    """Area under the ROC curve of `score` for binary `y_true` (1 = positive); NaN with one class."""
    y_true, score = _pair(y_true, score)
    if len(np.unique(y_true)) < 2:
        return math.nan
    return float(roc_auc_score(y_true, score))


def average_precision(y_true: np.ndarray, score: np.ndarray) -> float:
    """Average precision of `score` for binary `y_true`; NaN without a positive."""
    y_true, score = _pair(y_true, score)
    if not (y_true == 1).any():
        return math.nan
    return float(average_precision_score(y_true, score))


def confusion_matrix(y_true: np.ndarray, y_pred: np.ndarray, num_classes: int) -> np.ndarray:
    """int64 [num_classes, num_classes]: row = true class, column = predicted class."""
    y_true, y_pred = _pair(y_true, y_pred)
    for name, values in (("y_true", y_true), ("y_pred", y_pred)):
        if len(values) and (values.min() < 0 or values.max() >= num_classes):
            raise ValueError(f"{name} has labels outside 0..{num_classes - 1}: {sorted(set(values.tolist()))}")
    flat = np.bincount(y_true.astype(np.int64) * num_classes + y_pred.astype(np.int64),
                       minlength=num_classes * num_classes)
    return flat.reshape(num_classes, num_classes)


def balanced_accuracy(y_true: np.ndarray, y_pred: np.ndarray, num_classes: int) -> float:
    """Mean recall over the classes present in `y_true`; NaN when it is empty."""
    matrix = confusion_matrix(y_true, y_pred, num_classes)
    support = matrix.sum(axis=1)
    present = support > 0
    if not present.any():
        return math.nan
    return float(np.mean(np.diag(matrix)[present] / support[present]))


def multiclass_auc(y_true: np.ndarray, probability: np.ndarray) -> float:
    """Macro one-vs-rest ROC AUC of class probabilities [N, C] for labels in 0..C-1 (the authors'
    model-identification AUC); NaN unless every class has positives and negatives."""
    y_true = np.asarray(y_true).ravel()
    probability = np.asarray(probability)
    if probability.ndim != 2 or len(probability) != len(y_true):
        raise ValueError(f"expected probabilities [{len(y_true)}, C], got shape {probability.shape}")
    one_hot = np.eye(probability.shape[1], dtype=np.int64)[y_true]
    if len(y_true) == 0 or (one_hot.min(axis=0) == one_hot.max(axis=0)).any():
        return math.nan
    return float(roc_auc_score(one_hot, probability, average="macro"))


def origin_metrics(origin: np.ndarray, probability: np.ndarray) -> dict[str, float]:
    """AUC, balanced accuracy (at THRESHOLD) and AP of the synthetic-class probability."""
    return {"auc": roc_auc(origin, probability),
            "balanced_accuracy": balanced_accuracy(origin, (probability >= THRESHOLD).astype(np.int64), 2),
            "average_precision": average_precision(origin, probability)}


def _pair(a: np.ndarray, b: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    a, b = np.asarray(a).ravel(), np.asarray(b).ravel()
    if a.shape != b.shape:
        raise ValueError(f"inputs differ in length: {a.shape[0]} and {b.shape[0]}")
    return a, b
