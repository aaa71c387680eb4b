"""The drift statistics, each a distance between a window of films and the reference.

- Continuous signals (P, the domain guard's distance): the two-sample Kolmogorov-Smirnov
  distance, the largest gap between the two empirical distribution functions (0 to 1;
  no binning, insensitive to the scale of the score).
- Rates (flag rate, share outside the domain): the absolute difference.
- Categorical input facts: the total-variation distance, half the summed absolute difference
  of the category frequencies (0 to 1: the share of the window that would have to change
  category to look like the reference).
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable, Mapping

import numpy as np
import numpy.typing as npt

FloatArray = npt.NDArray[np.float64]


def ks_distance(sample: npt.ArrayLike, reference: npt.ArrayLike) -> float:
    """Two-sample Kolmogorov-Smirnov distance sup |F_sample - F_reference| (0 when either is empty)."""
    a = np.sort(np.asarray(sample, dtype=np.float64))
    b = np.sort(np.asarray(reference, dtype=np.float64))
    if a.size == 0 or b.size == 0:
        return 0.0
    grid = np.concatenate([a, b])  # the supremum is reached at one of the sample points
    cdf_a = np.searchsorted(a, grid, side="right") / a.size
    cdf_b = np.searchsorted(b, grid, side="right") / b.size
    return float(np.max(np.abs(cdf_a - cdf_b)))


def frequencies(values: Iterable[str]) -> dict[str, float]:
    """Each category's share of ``values`` (empty: no categories)."""
    counts = Counter(values)
    total = sum(counts.values())
    return {k: n / total for k, n in sorted(counts.items())} if total else {}


def total_variation(window: Mapping[str, float], reference: Mapping[str, float]) -> float:
    """Total-variation distance between two category frequency tables (each summing to 1)."""
    keys = set(window) | set(reference)
    return 0.5 * sum(abs(window.get(k, 0.0) - reference.get(k, 0.0)) for k in keys)


def null_thresholds(
    probabilities: FloatArray,
    flagged: npt.NDArray[np.bool_],
    domain_scores: FloatArray | None,
    outside: npt.NDArray[np.bool_] | None,
    window: int,
    false_alarm_rate: float,
    draws: int = 4000,
    seed: int = 0,
) -> dict[str, float]:
    """Each score signal's threshold: a high quantile of its statistic between a window of
    the reference films and the rest of them, over ``draws`` random windows.

    The quantile is ``1 - false_alarm_rate / k`` for the ``k`` signals (Bonferroni), so
    that a window of films like the reference trips any of them with chance at most about
    ``false_alarm_rate``. Comparing with the rest, not the whole reference, keeps the
    window's films out of what it is compared with, as at a site. A window larger than half
    the reference is drawn at half its size: the statistic only shrinks with more films, so
    such thresholds err towards silence.
    """
    n_ref = probabilities.size
    size = max(1, min(window, n_ref // 2))
    rng = np.random.default_rng(seed)
    stats: dict[str, list[float]] = {"probability": [], "flag_rate": []}
    if domain_scores is not None and outside is not None:
        stats.update({"domain_distance": [], "outside_share": []})
    for _ in range(draws):
        order = rng.permutation(n_ref)
        win, rest = order[:size], order[size:]
        stats["probability"].append(ks_distance(probabilities[win], probabilities[rest]))
        stats["flag_rate"].append(abs(float(flagged[win].mean() - flagged[rest].mean())))
        if domain_scores is not None and outside is not None:
            stats["domain_distance"].append(ks_distance(domain_scores[win], domain_scores[rest]))
            stats["outside_share"].append(abs(float(outside[win].mean() - outside[rest].mean())))
    q = 1.0 - false_alarm_rate / len(stats)
    return {name: float(np.quantile(values, q)) for name, values in stats.items()}
