"""Platt scaling of the network's pneumonia log-odds, fitted on the validation split.

``p = sigmoid(a * logit(raw) + b)``: two parameters, fitted by Newton's method on the
log-loss with a small ridge penalty, so it cannot overfit a validation set of a few hundred
films. A monotone map: it changes probabilities, never the ranking (AUC).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import numpy.typing as npt

_EPS = 1e-7


def logit(p: Any) -> npt.NDArray[np.float64]:
    q = np.clip(np.asarray(p, dtype=np.float64), _EPS, 1.0 - _EPS)
    out: npt.NDArray[np.float64] = np.log(q) - np.log1p(-q)
    return out


def sigmoid(z: Any) -> npt.NDArray[np.float64]:
    z = np.asarray(z, dtype=np.float64)
    out: npt.NDArray[np.float64] = np.where(
        z >= 0, 1.0 / (1.0 + np.exp(-np.abs(z))), np.exp(-np.abs(z)) / (1.0 + np.exp(-np.abs(z)))
    )
    return out


@dataclass(frozen=True)
class Platt:
    """Calibration map on the raw probability: ``sigmoid(a * logit(p) + b)``."""

    a: float = 1.0
    b: float = 0.0

    def apply(self, raw: Any) -> npt.NDArray[np.float64]:
        return sigmoid(self.a * logit(raw) + self.b)

    def to_json(self) -> dict[str, Any]:
        return {"method": "platt", "a": self.a, "b": self.b, "fitted_on": "validation split"}

    @classmethod
    def from_json(cls, data: dict[str, Any] | None) -> Platt:
        if not data:
            return cls()
        return cls(a=float(data["a"]), b=float(data["b"]))


def fit_platt(
    labels: Any, raw: Any, ridge: float = 1e-3, steps: int = 100, weights: Any = None
) -> Platt:
    """Fit ``a, b`` by damped Newton steps on the mean log-loss (+ ridge on ``a - 1``, ``b``);
    ``weights`` make it a weighted mean (e.g. reads weighted by 1 / their chance of being read).

    Each Newton step is halved until the objective falls, so very over-confident raw scores
    (where the plain Newton step overshoots) converge too; the objective is convex.
    """
    y = np.asarray(labels, dtype=np.float64).ravel()
    z = logit(raw).ravel()
    x = np.stack([z, np.ones_like(z)], axis=1)
    prior = np.array([1.0, 0.0])
    v = np.ones_like(y) if weights is None else np.asarray(weights, dtype=np.float64).ravel()
    v = v * (len(y) / v.sum())  # weights with mean 1: the ridge keeps its strength
    n = len(y)

    def objective(w: npt.NDArray[np.float64]) -> float:
        m = x @ w
        # log(1 + e^m) - y m, computed stably
        loss = v * (np.logaddexp(0.0, m) - y * m)
        return float(loss.mean() + 0.5 * ridge * np.sum((w - prior) ** 2))

    w = prior.copy()
    current = objective(w)
    for _ in range(steps):
        p = sigmoid(x @ w)
        grad = x.T @ (v * (p - y)) / n + ridge * (w - prior)
        hess = (x.T * (v * p * (1 - p))) @ x / n + ridge * np.eye(2)
        step = np.linalg.solve(hess, grad)
        scale = 1.0
        while scale > 1e-6:
            trial = w - scale * step
            value = objective(trial)
            if value <= current:
                break
            scale /= 2.0
        else:
            break
        converged = abs(current - value) < 1e-12
        w, current = trial, value
        if converged:
            break
    return Platt(a=float(w[0]), b=float(w[1]))
