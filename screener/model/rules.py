"""Operating-point rules: how a threshold is chosen from a site's reads for a target
sensitivity, and how a rule fares when it is judged on the whole site.

Every rule looks only at the read positives' scores (specificity plays no part: the
normals of a new site are the ones the model flatters itself on) and returns the threshold
as one of those scores, so ``score >= threshold`` catches the positives at or above it.
They differ in how much margin they leave for the few reads they rest on:

* :func:`point_estimate_threshold`: none (observed sensitivity >= target);
* :func:`wilson_threshold`: a one-sided Wilson lower bound of sensitivity >= target, at a
  chosen confidence (95 % is the rule ``calibrate`` uses today,
  :func:`screener.model.metrics.threshold_for_sensitivity`);
* :func:`bootstrap_threshold`: the lower percentile of the point-estimate threshold over
  bootstrap resamples of the positives, computed exactly.

:func:`simulate` draws site reads from a pool of scored positives and normals, lets a rule
pick its threshold on them and judges it on the whole pool (``benchmarks/
bench_operating_rules.py`` compares the rules with it). Labels are 0 (normal) / 1 (pneumonia).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from statistics import NormalDist
from typing import Any

import numpy as np
import numpy.typing as npt

from screener.model import bootstrap
from screener.model.metrics import _check

Floats = npt.NDArray[np.float64]
#: A rule: (labels, scores, target sensitivity) -> threshold.
Rule = Callable[[Any, Any, float], float]


def positive_scores(labels: Any, scores: Any) -> Floats:
    """The positives' scores, highest first; raises ValueError when there is none."""
    y, s = _check(labels, scores)
    pos = np.sort(s[y == 1])[::-1]
    if len(pos) == 0:
        raise ValueError("no positive read: a threshold for a sensitivity needs at least one")
    return pos


def caught_needed(n: int, target: float) -> int:
    """The fewest of ``n`` positives whose catch makes the observed sensitivity >= target."""
    # the small slack keeps 0.95 * 100 from rounding up to 96
    return max(1, min(n, math.ceil(target * n - 1e-9)))


def point_estimate_threshold(labels: Any, scores: Any, target: float) -> float:
    """The highest threshold whose observed sensitivity on the reads is >= ``target``."""
    pos = positive_scores(labels, scores)
    return float(pos[caught_needed(len(pos), target) - 1])


def z_for(level: float) -> float:
    """The one-sided normal quantile for a confidence level, to three decimals as tabled
    (0.95 -> 1.645, the z of :func:`screener.model.metrics.wilson_lower`; 0.90 -> 1.282)."""
    if not 0.5 <= level < 1.0:
        raise ValueError(f"confidence level {level!r} is not in [0.5, 1)")
    return round(NormalDist().inv_cdf(level), 3)


def wilson_lower_bounds(n: int, z: float) -> Floats:
    """One-sided Wilson lower bounds of k / n for k = 1 .. n (Wilson 1927)."""
    k = np.arange(1, n + 1, dtype=np.float64)
    p = k / n
    centre = p + z * z / (2 * n)
    margin = z * np.sqrt(p * (1 - p) / n + z * z / (4 * n * n))
    return np.asarray((centre - margin) / (1.0 + z * z / n), dtype=np.float64)


def wilson_threshold(labels: Any, scores: Any, target: float, level: float = 0.95) -> float:
    """The highest threshold whose one-sided Wilson lower bound of sensitivity, at confidence
    ``level``, is >= ``target``; the lowest positive's score when no threshold reaches it.

    At ``level = 0.95`` this is the rule ``screener calibrate`` uses.
    """
    pos = positive_scores(labels, scores)
    reached = np.flatnonzero(wilson_lower_bounds(len(pos), z_for(level)) >= target)
    return float(pos[reached[0]] if len(reached) else pos[-1])


def binomial_upper_tail(n: int, p: Floats, k: int) -> Floats:
    """P(Binomial(n, p) >= k) for each p in ``p`` (exact, in logs)."""
    i = np.arange(k, n + 1, dtype=np.float64)
    log_fact = np.r_[0.0, np.cumsum(np.log(np.arange(1, n + 1, dtype=np.float64)))]
    log_comb = log_fact[n] - log_fact[k : n + 1] - log_fact[n - k :: -1][: n - k + 1]
    pc = np.asarray(p, dtype=np.float64)[:, None]
    with np.errstate(divide="ignore", invalid="ignore"):
        log_p = np.where(i > 0, i * np.log(pc), 0.0)
        log_q = np.where(n - i > 0, (n - i) * np.log1p(-pc), 0.0)
    return np.asarray(np.exp(log_comb + log_p + log_q).sum(axis=1), dtype=np.float64)


def bootstrap_threshold(labels: Any, scores: Any, target: float, level: float = 0.90) -> float:
    """The highest threshold at or below the bootstrap's point-estimate threshold in at least
    ``level`` of resamples of the positives: the percentile bootstrap's one-sided lower bound
    of the threshold.

    Computed exactly, as with infinitely many resamples: a resample's k-th highest score is
    >= a candidate t exactly when at least k of its n draws are >= t, a Binomial(n, c / n)
    count with c the read positives at or above t.
    """
    pos = positive_scores(labels, scores)
    n = len(pos)
    candidates = np.unique(pos)[::-1]
    at_or_above = np.searchsorted(-pos, -candidates, side="right")
    share = binomial_upper_tail(n, at_or_above / n, caught_needed(n, target))
    # share grows as the candidate falls; the last candidate (c = n) always has share 1
    return float(candidates[np.flatnonzero(share >= level - 1e-12)[0]])


@dataclass(frozen=True)
class Judged:
    """What one draw of site reads led to: the rule's threshold and its sensitivity and
    specificity on the whole pool."""

    threshold: float
    sensitivity: float
    specificity: float


def judge(threshold: float, positives: Floats, normals: Floats) -> Judged:
    """A threshold's sensitivity and specificity on the pool (``score >= threshold`` flags)."""
    return Judged(
        float(threshold),
        float(np.mean(positives >= threshold)),
        float(np.mean(normals < threshold)),
    )


def draw_reads(
    positives: Floats, normals: Floats, n: int, prevalence: float, rng: np.random.Generator
) -> tuple[npt.NDArray[np.int64], Floats]:
    """``n`` site reads drawn without replacement from the pool: the positives among them
    Binomial(n, prevalence), at least one; returns (labels, scores)."""
    n_pos = int(np.clip(rng.binomial(n, prevalence), 1, min(n, len(positives))))
    n_neg = n - n_pos
    if n_neg > len(normals):
        raise ValueError(f"{n_neg} normal reads asked of a pool of {len(normals)}")
    s = np.r_[rng.choice(positives, n_pos, replace=False), rng.choice(normals, n_neg, False)]
    y = np.r_[np.ones(n_pos, dtype=np.int64), np.zeros(n_neg, dtype=np.int64)]
    return y, s


def simulate(
    rule: Rule,
    positives: Any,
    normals: Any,
    n: int,
    prevalence: float,
    target: float,
    draws: int,
    rng: np.random.Generator,
) -> list[Judged]:
    """``draws`` times: draw ``n`` reads (:func:`draw_reads`), let ``rule`` choose its
    threshold for ``target`` on them, and judge it on the whole pool."""
    pos = np.asarray(positives, dtype=np.float64)
    neg = np.asarray(normals, dtype=np.float64)
    out = []
    for _ in range(draws):
        y, s = draw_reads(pos, neg, n, prevalence, rng)
        out.append(judge(rule(y, s, target), pos, neg))
    return out


@dataclass(frozen=True)
class Summary:
    """A rule's figures over many draws: the share whose pool sensitivity kept the target,
    and the median and 10th percentile of the specificity it left."""

    kept: float
    specificity_median: float
    specificity_p10: float


def summarise(judged: list[Judged], target: float) -> Summary:
    """:class:`Summary` of a rule's draws."""
    sens = np.array([j.sensitivity for j in judged])
    spec = np.array([j.specificity for j in judged])
    return Summary(
        float(np.mean(sens >= target)),
        float(np.median(spec)),
        float(np.quantile(spec, 0.10)),
    )


def attainable(results: dict[str, list[Summary]], kept_floor: float) -> list[bool]:
    """Per condition: whether any rule's kept rate reaches ``kept_floor`` there."""
    columns = zip(*results.values(), strict=True)
    return [any(s.kept >= kept_floor for s in column) for column in columns]


def recommend(results: dict[str, list[Summary]], kept_floor: float) -> str | None:
    """The rule with the best mean median specificity among those whose kept rate is at
    least ``kept_floor`` in every condition where some rule reaches it (:func:`attainable`:
    where none does, e.g. too few positive reads, the condition cannot tell rules apart);
    None when no rule qualifies or no condition is attainable."""
    reach = attainable(results, kept_floor)
    if not any(reach):
        return None
    eligible = {
        name: float(np.mean([s.specificity_median for s in summaries]))
        for name, summaries in results.items()
        if all(s.kept >= kept_floor for s, r in zip(summaries, reach, strict=True) if r)
    }
    return max(eligible, key=lambda name: eligible[name]) if eligible else None


# Weighted reads (screener.site.audit): a site's reads of flagged studies weigh 1 and its audit
# reads of unflagged ones 1 / the audit share (Horvitz & Thompson 1952), so each rule below
# judges sensitivity as the weighted share of read positives caught.


def _weighted_positives(labels: Any, scores: Any, weights: Any) -> tuple[Floats, Floats]:
    """The positives' scores (highest first) and weights, dropping weight-0 reads."""
    y, s = _check(labels, scores)
    w = np.asarray(weights, dtype=np.float64)
    if w.shape != s.shape:
        raise ValueError(f"{w.shape[0] if w.ndim else 0} weights for {s.shape[0]} reads")
    if np.any(~np.isfinite(w)) or np.any(w < 0):
        raise ValueError("weights must be finite and >= 0")
    keep = (y == 1) & (w > 0)
    order = np.argsort(-s[keep], kind="stable")
    pos, weight = s[keep][order], w[keep][order]
    if len(pos) == 0:
        raise ValueError("no positive read: a threshold for a sensitivity needs at least one")
    return pos, weight


def weighted_point_threshold(labels: Any, scores: Any, target: float, weights: Any) -> float:
    """The highest threshold whose weighted sensitivity on the reads is >= ``target``."""
    pos, w = _weighted_positives(labels, scores, weights)
    caught = np.cumsum(w) / w.sum()
    return float(pos[np.flatnonzero(caught >= target - 1e-12)[0]])


def weighted_wilson_threshold(
    labels: Any, scores: Any, target: float, weights: Any, level: float = 0.95
) -> float:
    """:func:`wilson_threshold` on weighted reads: the bound is taken over Kish's effective
    sample size ((sum w)^2 / sum w^2) of the positives."""
    pos, w = _weighted_positives(labels, scores, weights)
    total = float(w.sum())
    n_eff = total**2 / float((w**2).sum())
    p = np.cumsum(w) / total
    z = z_for(level)
    centre = p + z * z / (2 * n_eff)
    margin = z * np.sqrt(p * (1 - p) / n_eff + z * z / (4 * n_eff * n_eff))
    lower = (centre - margin) / (1.0 + z * z / n_eff)
    reached = np.flatnonzero(lower >= target)
    return float(pos[reached[0]] if len(reached) else pos[-1])


def weighted_bootstrap_threshold(
    labels: Any,
    scores: Any,
    target: float,
    weights: Any,
    level: float = 0.90,
    resamples: int = 4000,
    seed: int = 0,
) -> float:
    """:func:`bootstrap_threshold` on weighted reads. With equal weights it *is*
    :func:`bootstrap_threshold` (exact); otherwise the positives are resampled with their
    weights ``resamples`` times (seeded: the same reads give the same threshold) and the
    threshold is the ``1 - level`` quantile of the resamples' weighted point estimates.

    The resamples are count vectors drawn a block at a time, only the lowest scores one by one
    (:func:`screener.model.bootstrap.weighted_point_estimates`): the same resamples in
    distribution as drawing indexes and sorting them, each estimate exact."""
    pos, w = _weighted_positives(labels, scores, weights)
    if np.allclose(w, w[0]):
        return bootstrap_threshold(np.ones(len(pos), dtype=np.int64), pos, target, level)
    rng = np.random.default_rng(seed)
    estimates = bootstrap.weighted_point_estimates(pos[::-1], w[::-1], target, resamples, rng)
    # the lower (1 - level) quantile, as one of the positives' own scores
    return bootstrap.lower_order_statistic(estimates, level)
