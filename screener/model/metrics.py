"""Binary classification metrics in numpy: ROC / AUC with a bootstrap CI, confusion-matrix
figures at a threshold, Brier score, log-loss, and the threshold rule for a target sensitivity.

Labels are 0 (normal) / 1 (pneumonia); scores are P(pneumonia).
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import numpy.typing as npt

Floats = npt.NDArray[np.float64]
Ints = npt.NDArray[np.int64]


def _check(labels: Any, scores: Any) -> tuple[Ints, Floats]:
    y = np.asarray(labels, dtype=np.int64).ravel()
    s = np.asarray(scores, dtype=np.float64).ravel()
    if y.shape != s.shape:
        raise ValueError(f"labels {y.shape} and scores {s.shape} differ in length")
    if not np.isin(y, (0, 1)).all():
        raise ValueError("labels must be 0 or 1")
    return y, s


def roc_curve(labels: Any, scores: Any) -> tuple[Floats, Floats, Floats]:
    """(false-positive rate, true-positive rate, thresholds), thresholds descending.

    Point ``i`` counts every score ``>= thresholds[i]`` as positive; the first point is
    (0, 0) at threshold +inf.
    """
    y, s = _check(labels, scores)
    order = np.argsort(-s, kind="mergesort")
    s, y = s[order], y[order]
    distinct = np.flatnonzero(np.diff(s)) if len(s) else np.array([], dtype=np.int64)
    ends = np.r_[distinct, len(s) - 1] if len(s) else distinct
    tps = np.cumsum(y)[ends].astype(np.float64)
    fps = (ends + 1 - tps).astype(np.float64)
    n_pos, n_neg = float(y.sum()), float(len(y) - y.sum())
    tpr = np.r_[0.0, tps / n_pos if n_pos else tps * np.nan]
    fpr = np.r_[0.0, fps / n_neg if n_neg else fps * np.nan]
    return fpr, tpr, np.r_[np.inf, s[ends]]


def roc_auc(labels: Any, scores: Any) -> float:
    """Area under the ROC curve (ties count one half): the Mann-Whitney statistic."""
    y, s = _check(labels, scores)
    n_pos = int(y.sum())
    n_neg = len(y) - n_pos
    if n_pos == 0 or n_neg == 0:
        return float("nan")
    ranks = _average_ranks(s)
    return float((ranks[y == 1].sum() - n_pos * (n_pos + 1) / 2.0) / (n_pos * n_neg))


def _average_ranks(s: Floats) -> Floats:
    """1-based ranks of ``s``, tied values sharing their mean rank (each run of equal values
    ``a..b-1`` in sorted order gets ``(a + b + 1) / 2``), without a Python loop per run: a
    year's 50,000 reads have about as many runs, and the ROC's bootstrap ranks them 500 times."""
    order = np.argsort(s, kind="mergesort")
    sorted_s = s[order]
    ranks = np.empty(len(s), dtype=np.float64)
    starts = np.r_[0, np.flatnonzero(np.diff(sorted_s)) + 1]
    ends = np.r_[starts[1:], len(s)]
    ranks[order] = np.repeat((starts + ends + 1) / 2.0, ends - starts)
    return ranks


def bootstrap_auc_ci(
    labels: Any, scores: Any, n_boot: int = 2000, seed: int = 0, level: float = 0.95
) -> tuple[float, float]:
    """Percentile bootstrap CI of the AUC, resampling positives and negatives separately."""
    y, s = _check(labels, scores)
    pos, neg = s[y == 1], s[y == 0]
    if len(pos) == 0 or len(neg) == 0:
        return float("nan"), float("nan")
    rng = np.random.default_rng(seed)
    aucs = np.empty(n_boot)
    yb = np.r_[np.ones(len(pos), dtype=np.int64), np.zeros(len(neg), dtype=np.int64)]
    for i in range(n_boot):
        sb = np.r_[rng.choice(pos, len(pos)), rng.choice(neg, len(neg))]
        aucs[i] = roc_auc(yb, sb)
    alpha = (1.0 - level) / 2.0
    lo, hi = np.quantile(aucs, [alpha, 1.0 - alpha])
    return float(lo), float(hi)


def _ratio(a: float, b: float) -> float:
    return a / b if b else float("nan")


def at_threshold(labels: Any, scores: Any, threshold: float) -> dict[str, Any]:
    """Confusion matrix and the usual rates when ``score >= threshold`` means pneumonia."""
    y, s = _check(labels, scores)
    pred = s >= threshold
    tp = int(np.sum(pred & (y == 1)))
    fp = int(np.sum(pred & (y == 0)))
    tn = int(np.sum(~pred & (y == 0)))
    fn = int(np.sum(~pred & (y == 1)))
    sens, ppv = _ratio(tp, tp + fn), _ratio(tp, tp + fp)
    return {
        "threshold": float(threshold),
        "confusion": {"tp": tp, "fp": fp, "tn": tn, "fn": fn},
        "accuracy": _ratio(tp + tn, len(y)),
        "sensitivity": sens,
        "specificity": _ratio(tn, tn + fp),
        "ppv": ppv,
        "npv": _ratio(tn, tn + fn),
        "f1": _ratio(2 * tp, 2 * tp + fp + fn),
    }


def brier(labels: Any, probs: Any) -> float:
    y, p = _check(labels, probs)
    return float(np.mean((p - y) ** 2))


def log_loss(labels: Any, probs: Any, eps: float = 1e-7) -> float:
    y, p = _check(labels, probs)
    p = np.clip(p, eps, 1.0 - eps)
    return float(-np.mean(y * np.log(p) + (1 - y) * np.log(1.0 - p)))


def expected_calibration_error(labels: Any, probs: Any, bins: int = 10) -> float:
    """ECE: the mean |observed rate - mean probability| over ``bins`` equal-width bins,
    weighted by the films in each bin (Naeini et al., AAAI 2015)."""
    y, p = _check(labels, probs)
    if len(y) == 0:
        return 0.0
    index = np.minimum((p * bins).astype(np.int64), bins - 1)
    total = 0.0
    for b in range(bins):
        inside = index == b
        if inside.any():
            total += float(inside.sum()) * abs(float(y[inside].mean()) - float(p[inside].mean()))
    return total / len(y)


def specificity_at_sensitivity(labels: Any, scores: Any, target: float) -> float:
    """The best specificity of any threshold whose observed sensitivity is >= ``target``
    (a threshold-free view of how well the two classes separate where it matters)."""
    y, s = _check(labels, scores)
    pos = np.sort(s[y == 1])[::-1]
    neg = s[y == 0]
    if len(pos) == 0 or len(neg) == 0:
        return float("nan")
    k = max(1, math.ceil(target * len(pos)))
    return float(np.mean(neg < pos[k - 1]))


def wilson_interval(successes: float, n: float, z: float = 1.96) -> tuple[float, float] | None:
    """Two-sided Wilson score interval of a proportion (z = 1.96: 95 %); None when n = 0.

    Unlike the normal approximation it stays inside [0, 1] and is honest for small n and for
    proportions near 0 or 1 (Wilson 1927; Brown, Cai & DasGupta 2001).
    """
    if n == 0:
        return None
    p = successes / n
    denom = 1.0 + z * z / n
    centre = (p + z * z / (2 * n)) / denom
    margin = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / denom
    return max(0.0, centre - margin), min(1.0, centre + margin)


def wilson_lower(successes: float, n: float, z: float = 1.645) -> float:
    """One-sided lower Wilson bound of a proportion (z = 1.645: 95 % one-sided)."""
    if n == 0:
        return 0.0
    p = successes / n
    denom = 1.0 + z * z / n
    centre = p + z * z / (2 * n)
    margin = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n))
    return (centre - margin) / denom


def threshold_for_sensitivity(
    labels: Any, scores: Any, target: float, weights: Any = None
) -> tuple[float, str]:
    """The highest threshold whose validation sensitivity has a 95 % one-sided Wilson lower
    bound of at least ``target``; returns (threshold, the rule in words).

    Using the lower bound instead of the observed sensitivity builds in a margin that grows
    as the validation set shrinks. Specificity plays no part in the choice: on this data the
    validation specificity is known to flatter (acquisition shift on unseen normals).
    ``weights`` (one per read, e.g. 1 / the chance it was read: screener.site.audit) weight the
    sensitivity, and the bound is taken over Kish's effective sample size.
    """
    y, s = _check(labels, scores)
    if weights is not None:
        return _weighted_threshold(y, s, np.asarray(weights, dtype=np.float64), target)
    pos = np.sort(s[y == 1])[::-1]
    n = len(pos)
    rule = (
        f"highest threshold at which the one-sided 95% Wilson lower bound of validation "
        f"sensitivity is >= {target:.3f}"
    )
    if n == 0:
        return 0.5, rule
    for k in range(1, n + 1):
        if wilson_lower(k, n) >= target:
            # Catch the k highest-scoring positives; ties below pos[k-1] come along.
            return float(pos[k - 1]), rule
    return float(pos[-1]), rule + " (not reachable: threshold set to catch every positive)"


def _weighted_threshold(y: Any, s: Any, w: Any, target: float) -> tuple[float, str]:
    rule = (
        "highest threshold at which the one-sided 95% Wilson lower bound of site sensitivity, "
        f"reads weighted by 1 / their chance of being read (effective size), is >= {target:.3f}"
    )
    keep = (y == 1) & (w > 0)
    order = np.argsort(-s[keep], kind="stable")
    pos, weight = s[keep][order], w[keep][order]
    if len(pos) == 0:
        return 0.5, rule
    total = float(weight.sum())
    n_eff = total**2 / float((weight**2).sum())
    caught = np.cumsum(weight) / total
    for k in range(len(pos)):
        if wilson_lower(float(caught[k]) * n_eff, n_eff) >= target:
            return float(pos[k]), rule
    return float(pos[-1]), rule + " (not reachable: threshold set to catch every positive)"


def summary(labels: Any, probs: Any, threshold: float, seed: int = 0) -> dict[str, Any]:
    """All the figures `screener evaluate` and the model card report."""
    y, p = _check(labels, probs)
    lo, hi = bootstrap_auc_ci(y, p, seed=seed)
    return {
        "n": len(y),
        "n_pneumonia": int(y.sum()),
        "n_normal": int(len(y) - y.sum()),
        "auc": roc_auc(y, p),
        "auc_ci95": [lo, hi],
        "auc_ci_method": "percentile bootstrap, 2000 stratified resamples, seed 0",
        "brier": brier(y, p),
        "log_loss": log_loss(y, p),
        "ece": expected_calibration_error(y, p),
        "specificity_at_sensitivity_0_95": specificity_at_sensitivity(y, p, 0.95),
        **at_threshold(y, p, threshold),
    }
