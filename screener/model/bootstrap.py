"""Bootstrap resamples of weighted reads as count vectors, many at once.

A bootstrap resample of ``n`` reads draws ``n`` of them with replacement; what any figure of
the resample depends on is how many times each read was drawn (a multinomial count vector,
Efron & Tibshirani 1993, sec 6.2), and a read drawn ``c`` times with weight ``w`` counts as
one read of weight ``c * w`` in every weighted figure here (each is linear in each read's
weight). So instead of gathering and re-sorting the drawn reads once per resample, the reads
are sorted once and a block of resamples is a matrix of counts over them:

* :meth:`AucReads.aucs`: the weighted Mann-Whitney AUC of each resample is a
  cumulative sum over the sorted normals, read off at each pneumonia (O(n) a resample, no
  sort);
* :func:`weighted_point_estimates`: the weighted point-estimate threshold of each resample of
  the read pneumonias. It rests only on the lowest scores (those below the target's share of
  the weight) and on the resample's total weight, so the draws are taken in two steps with the
  same distribution as ``n`` uniform draws: how many land among the lowest reads (binomial),
  where each of those lands (uniform), and how many of the rest land on each weight the rest
  carry (multinomial). A resample whose answer falls outside the lowest reads (rare: the
  share is chosen with a wide margin) is completed read by read from the same counts, so
  every resample's figure is exact, whatever the margin.

The resamples are the same in distribution as drawing indexes one by one; a given seed gives
other numbers than that did.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt

Floats = npt.NDArray[np.float64]
Counts = npt.NDArray[np.int64]

#: Counts (resamples x reads) held at once: bounds memory to a few arrays of 16 MiB.
BLOCK = 1 << 21
#: Standard errors of the resampled weight share kept between the target's tail and the
#: lowest reads :func:`weighted_point_estimates` draws one by one (speed only: a resample
#: outside them is completed exactly).
MARGIN_SE = 6.0
#: At most this many distinct weights above the tail are counted per weight; past it every
#: read is drawn one by one.
MAX_WEIGHT_CLASSES = 64


def rows_per_block(n: int) -> int:
    """Resamples of ``n`` reads handled together within :data:`BLOCK` counts."""
    return max(1, BLOCK // max(1, n))


def resample_counts(rng: np.random.Generator, n: int, rows: int) -> Counts:
    """``rows`` bootstrap resamples of ``n`` reads, each as the times it drew each read (every
    row sums to ``n``): ``n`` uniform draws per row, counted."""
    if rows * n < 2**31:  # 32-bit draws come about twice as fast
        narrow = rng.integers(0, n, size=(rows, n), dtype=np.int32)
        narrow += np.arange(0, rows * n, n, dtype=np.int32)[:, None]
        return np.bincount(narrow.ravel(), minlength=rows * n).reshape(rows, n)
    draws = rng.integers(0, n, size=(rows, n), dtype=np.int64)
    draws += np.arange(0, rows * n, n, dtype=np.int64)[:, None]
    return np.bincount(draws.ravel(), minlength=rows * n).reshape(rows, n)


@dataclass(frozen=True)
class AucReads:
    """Weighted reads prepared once for the AUC of many resamples: the normals sorted by
    score, and where each pneumonia's score falls among them (below it, and after its ties)."""

    positive_weights: Floats
    normal_weights: Floats
    below: npt.NDArray[np.intp]
    through_ties: npt.NDArray[np.intp]

    @classmethod
    def of(cls, labels: npt.NDArray[np.int64], scores: Floats, weights: Floats) -> AucReads:
        """The reads' pneumonias (label 1) and normals (label 0), in the order the counts of
        :meth:`aucs` take them: pneumonias as given, normals ascending by score."""
        order = np.argsort(scores[labels == 0], kind="stable")
        normal_scores = scores[labels == 0][order]
        positive_scores = scores[labels == 1]
        return cls(
            weights[labels == 1],
            weights[labels == 0][order],
            np.searchsorted(normal_scores, positive_scores, side="left"),
            np.searchsorted(normal_scores, positive_scores, side="right"),
        )

    def aucs(self, positive_counts: Counts, normal_counts: Counts) -> Floats:
        """The weighted Mann-Whitney AUC of each resample (a row of counts over the pneumonias
        and one over the normals): :func:`screener.model.commission.weighted_auc` of the reads
        with weights ``weight * count``; NaN where a resample holds no weight of one class."""
        normal = normal_counts * self.normal_weights
        cum = np.zeros((len(normal), normal.shape[1] + 1), dtype=np.float64)
        np.cumsum(normal, axis=1, out=cum[:, 1:])
        # below + half the tied = the mean of the cumulative weight before and after the ties
        outscored = (
            cum[:, self.below]
            if np.array_equal(self.below, self.through_ties)
            else 0.5 * (cum[:, self.below] + cum[:, self.through_ties])
        )
        positive = positive_counts * self.positive_weights
        total = positive.sum(axis=1) * cum[:, -1]
        pairs = np.einsum("ij,ij->i", positive, outscored)
        with np.errstate(divide="ignore", invalid="ignore"):
            return np.asarray(np.where(total > 0, pairs / total, np.nan), dtype=np.float64)


def _tail_size(weights: Floats, target: float) -> int:
    """How many of the lowest reads (``weights`` in ascending order of score) to draw one by
    one: their share of the weight exceeds the target's tail by :data:`MARGIN_SE` standard
    errors of a resampled share (Kish's effective size)."""
    total = float(weights.sum())
    n_eff = total**2 / float((weights**2).sum())
    share = np.cumsum(weights) / total
    se = np.sqrt(share * (1 - share) / n_eff)
    enough = np.flatnonzero(share - (1.0 - target) >= MARGIN_SE * se + 1e-12)
    return int(enough[0]) + 1 if len(enough) else len(weights)


def _lowest_reached(counts: Counts, weights: Floats, allowance: Floats) -> npt.NDArray[np.intp]:
    """Per row, the highest read drawn (count > 0) whose drawn reads below it weigh at most
    ``allowance``: the weighted point estimate, in ascending order of score."""
    weighted = counts * weights
    below = np.cumsum(weighted, axis=1) - weighted
    ok = (counts > 0) & (below <= allowance[:, None])
    width = counts.shape[1]
    return np.asarray(width - 1 - np.argmax(ok[:, ::-1], axis=1), dtype=np.intp)


def weighted_point_estimates(
    scores: Floats, weights: Floats, target: float, resamples: int, rng: np.random.Generator
) -> Floats:
    """The weighted point-estimate threshold (the highest score whose weighted sensitivity on
    the resample is >= ``target``) of each of ``resamples`` bootstrap resamples of the read
    pneumonias; ``scores`` ascending, with their ``weights``."""
    n = len(scores)
    # the point estimate is the highest drawn read with at most this share of weight below
    tail_share = 1.0 - target + 1e-12
    m = _tail_size(weights, target)
    classes, class_of = np.unique(weights[m:], return_inverse=True)
    if len(classes) > MAX_WEIGHT_CLASSES:
        m, classes, class_of = n, weights[:0], np.zeros(0, dtype=np.intp)
    class_sizes = np.bincount(class_of, minlength=len(classes))
    out = np.empty(resamples, dtype=np.float64)
    step = rows_per_block(m)
    for start in range(0, resamples, step):
        rows = min(step, resamples - start)
        in_tail = rng.binomial(n, m / n, size=rows) if m < n else np.full(rows, n)
        above = (
            rng.multinomial(n - in_tail, class_sizes / (n - m))
            if m < n
            else np.zeros((rows, 0), dtype=np.int64)
        )
        row_of = np.repeat(np.arange(rows, dtype=np.int64), in_tail)
        draws = rng.integers(0, m, size=len(row_of), dtype=np.int64) + m * row_of
        counts = np.bincount(draws, minlength=rows * m).reshape(rows, m)
        tail_weight = counts @ weights[:m]
        total = tail_weight + above @ classes
        allowance = tail_share * total
        found = _lowest_reached(counts, weights[:m], allowance)
        out[start : start + rows] = scores[found]
        # the answer lies above the tail: draw those reads one by one, within their weights
        for r in np.flatnonzero(tail_weight <= allowance):
            whole = np.zeros(n, dtype=np.int64)
            whole[:m] = counts[r]
            for k in np.flatnonzero(above[r]):
                members = m + np.flatnonzero(class_of == k)
                picked = members[rng.integers(0, len(members), size=int(above[r, k]))]
                whole += np.bincount(picked, minlength=n)
            out[start + r] = scores[_lowest_reached(whole[None, :], weights, allowance[[r]])[0]]
    return out


def percentile_interval(values: Floats, coverage: float = 0.95) -> tuple[float, float]:
    """The percentile bootstrap's two-sided ``coverage`` interval (NaN resamples left out)."""
    tail = (1.0 - coverage) / 2
    lo, hi = np.nanquantile(values, [tail, 1.0 - tail])
    return float(lo), float(hi)


def lower_order_statistic(values: Floats, level: float) -> float:
    """The ``1 - level`` lower quantile of ``values`` as one of them (the
    ``floor((1 - level) * len)``-th smallest)."""
    k = math.floor((1 - level) * len(values))
    return float(np.partition(values, k)[k])


__all__ = [
    "AucReads",
    "lower_order_statistic",
    "percentile_interval",
    "resample_counts",
    "rows_per_block",
    "weighted_point_estimates",
]
