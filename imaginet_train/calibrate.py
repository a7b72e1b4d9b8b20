"""Platt scaling of the origin head: the threshold calibration of the ImagiNet authors' evaluation.

A one-feature logistic regression (C = 1e10, i.e. practically unregularised) is fitted on the origin
head's logits of a small calibration set; a test image is called synthetic when
`expit(coef * logit + intercept) >= 0.5`. The authors fit it with scikit-learn's `saga` solver; this
uses `lbfgs`, which reaches the same optimum of this convex one-dimensional problem deterministically
(saga is stochastic and may stop before converging).
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy.special import expit
from sklearn.linear_model import LogisticRegression

PLATT_C = 1e10
PLATT_MAX_ITER = 1000


@dataclass(frozen=True)
class PlattScaler:
    """probability = expit(coef * logit + intercept), fitted on `count` calibration images."""

    coef: float
    intercept: float
    count: int

    def probability(self, logits: np.ndarray) -> np.ndarray:
        """Calibrated probability of `synthetic` for origin logits."""
        return expit(self.coef * np.asarray(logits, dtype=np.float64) + self.intercept)

    def predict(self, logits: np.ndarray) -> np.ndarray:
        """1 (synthetic) where the calibrated probability reaches 0.5, else 0."""
        return (self.probability(logits) >= 0.5).astype(np.int64)


def fit_platt(logits: np.ndarray, origin: np.ndarray) -> PlattScaler:
    """Fit the scaler on origin logits [N] and labels [N] (0 real, 1 synthetic); both classes needed."""
    logits, origin = np.asarray(logits, dtype=np.float64).ravel(), np.asarray(origin).ravel()
    if logits.shape != origin.shape:
        raise ValueError(f"logits and labels differ in length: {len(logits)} and {len(origin)}")
    if set(np.unique(origin).tolist()) != {0, 1}:
        raise ValueError(f"Platt scaling needs real and synthetic calibration images, got labels "
                         f"{sorted(set(origin.tolist()))}")
    model = LogisticRegression(C=PLATT_C, max_iter=PLATT_MAX_ITER).fit(logits[:, None], origin)
    return PlattScaler(float(model.coef_[0, 0]), float(model.intercept_[0]), len(origin))
