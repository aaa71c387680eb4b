"""Commissioning: the figures a hospital chooses its operating point from.

A site runs screener silent (shadow mode), its radiologists read the flagged studies and the
audit draw of unflagged ones (:mod:`screener.site.audit`), and ``screener commission`` (or the web's
commissioning page) puts in front of them, from those weighted reads:

* the site's ROC curve and AUC with a bootstrap interval, and the calibration before and
  after refitting it on the reads (weighted Brier score and ECE);
* a table of candidate thresholds, each with weighted sensitivity and specificity and their
  95 % Wilson intervals over Kish's effective sample size, and the flags per 100 studies it
  would have raised among *every* study the model assessed at the site (not only the read
  ones: that share needs no read);
* the threshold of the rule screener recommends, and why.

Reads are weighted by 1 / the chance their study was read (Horvitz & Thompson 1952):
flagged studies weigh 1, audit reads of unflagged studies 1 / the audit share, and reads of
unflagged studies that were not drawn weigh 0 (they are not a random sample of anything).

Everything here is pure (arrays in, figures out): :mod:`screener.commands.commission` and the
web page load the reads and all assessed probabilities from the database.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import numpy.typing as npt

from screener.model import bootstrap, rules
from screener.model.calibration import Platt, fit_platt
from screener.model.metrics import wilson_interval

Floats = npt.NDArray[np.float64]
#: A site rule: (labels, scores, target, weights) -> threshold.
SiteRule = Callable[[Any, Any, float, Any], float]

#: The rules a site may choose from, by the name the command takes (``--rule``).
RULES: dict[str, tuple[str, SiteRule]] = {
    "bootstrap90": (
        "bootstrap 90 %",
        lambda y, s, t, w: rules.weighted_bootstrap_threshold(y, s, t, w, 0.90),
    ),
    "wilson90": (
        "Wilson 90 %",
        lambda y, s, t, w: rules.weighted_wilson_threshold(y, s, t, w, 0.90),
    ),
    "wilson95": (
        "Wilson 95 %",
        lambda y, s, t, w: rules.weighted_wilson_threshold(y, s, t, w, 0.95),
    ),
    "point": ("point estimate", rules.weighted_point_threshold),
}
RECOMMENDED = "bootstrap90"
#: Why: the simulation of README "Which threshold rule" (benchmarks/bench_operating_rules.py).
WHY = (
    "bootstrap 90 % had the best specificity among the rules that kept sensitivity at the "
    "target in at least 80 % of simulated sites (benchmarks/bench_operating_rules.py on our "
    "own shift-proxy scores: kept in 81-91 % of draws of 200-300 reads, specificity "
    "0.929-0.949, against 97-98 % and 0.876-0.925 for Wilson 95 %; the point estimate kept "
    "it in only about half). Choose wilson90 to keep it in about 90 % of sites, at some "
    "specificity."
)
#: Read pneumonias below which no rule kept the target in 80 % of simulated sites.
FEW_POSITIVES = 60


@dataclass(frozen=True)
class Estimate:
    """A weighted proportion with its 95 % Wilson interval over the effective size."""

    value: float | None
    interval: tuple[float, float] | None
    n_eff: float

    def text(self) -> str:
        if self.value is None:
            return "-"
        if self.interval is None:
            return f"{self.value:.3f}"
        return f"{self.value:.3f} ({self.interval[0]:.3f}-{self.interval[1]:.3f})"


def weighted_estimate(hits: npt.ArrayLike, weights: npt.ArrayLike) -> Estimate:
    """The weighted share of ``hits`` (Kish's effective size for its interval)."""
    h = np.asarray(hits, dtype=bool)
    w = np.asarray(weights, dtype=np.float64)
    total = float(w.sum())
    if total <= 0:
        return Estimate(None, None, 0.0)
    p = float(w[h].sum()) / total
    n_eff = total**2 / float((w**2).sum())
    return Estimate(p, wilson_interval(p * n_eff, n_eff), n_eff)


def weighted_roc(labels: Any, scores: Any, weights: Any) -> tuple[Floats, Floats]:
    """(false-positive rate, sensitivity) at every distinct score, weighted."""
    y = np.asarray(labels, dtype=np.int64)
    s = np.asarray(scores, dtype=np.float64)
    w = np.asarray(weights, dtype=np.float64)
    order = np.argsort(-s, kind="stable")
    s, y, w = s[order], y[order], w[order]
    tp = np.cumsum(w * (y == 1))
    fp = np.cumsum(w * (y == 0))
    last = np.r_[np.flatnonzero(np.diff(s)), len(s) - 1]  # one point per distinct score
    pos, neg = tp[-1], fp[-1]
    return np.r_[0.0, fp[last] / neg], np.r_[0.0, tp[last] / pos]


def weighted_auc(labels: Any, scores: Any, weights: Any) -> float:
    """The weighted Mann-Whitney AUC: the chance a read pneumonia outscores a read normal,
    each pair counted by the product of its weights (ties count one half)."""
    y = np.asarray(labels, dtype=np.int64)
    s = np.asarray(scores, dtype=np.float64)
    w = np.asarray(weights, dtype=np.float64)
    pos_s, pos_w = s[y == 1], w[y == 1]
    neg_s, neg_w = s[y == 0], w[y == 0]
    if pos_w.sum() <= 0 or neg_w.sum() <= 0:
        return float("nan")
    order = np.argsort(neg_s)
    neg_s, cum = neg_s[order], np.r_[0.0, np.cumsum(neg_w[order])]
    below = cum[np.searchsorted(neg_s, pos_s, side="left")]
    tied = cum[np.searchsorted(neg_s, pos_s, side="right")] - below
    return float((pos_w * (below + 0.5 * tied)).sum() / (pos_w.sum() * neg_w.sum()))


def bootstrap_weighted_auc(
    labels: Any, scores: Any, weights: Any, resamples: int = 1000, seed: int = 0
) -> tuple[float, float]:
    """95 % percentile-bootstrap interval of :func:`weighted_auc`, resampling the read
    pneumonias and the read normals separately (each read keeps its weight).

    Each resample is a count vector over the reads sorted once by P, its AUC a cumulative sum
    (:meth:`screener.model.bootstrap.AucReads.aucs`), a block of resamples at a time:
    the same resamples in distribution as drawing indexes and re-sorting them, without a sort
    per resample (44,116 reads: 6.7 -> 0.7 s; benchmarks/RESULTS.md "Issue 24, the remaining
    read paths")."""
    y = np.asarray(labels, dtype=np.int64)
    s = np.asarray(scores, dtype=np.float64)
    w = np.asarray(weights, dtype=np.float64)
    rng = np.random.default_rng(seed)
    reads = bootstrap.AucReads.of(y, s, w)
    n_pos, n_neg = len(reads.positive_weights), len(reads.normal_weights)
    aucs = np.empty(resamples, dtype=np.float64)
    step = bootstrap.rows_per_block(len(y))
    for start in range(0, resamples, step):
        rows = min(step, resamples - start)
        aucs[start : start + rows] = reads.aucs(
            bootstrap.resample_counts(rng, n_pos, rows),
            bootstrap.resample_counts(rng, n_neg, rows),
        )
    return bootstrap.percentile_interval(aucs)


def weighted_brier(labels: Any, probs: Any, weights: Any) -> float:
    y = np.asarray(labels, dtype=np.float64)
    p = np.asarray(probs, dtype=np.float64)
    w = np.asarray(weights, dtype=np.float64)
    return float((w * (p - y) ** 2).sum() / w.sum())


def weighted_ece(labels: Any, probs: Any, weights: Any, bins: int = 10) -> float:
    """Expected calibration error over equal-width bins of P, reads weighted."""
    y = np.asarray(labels, dtype=np.float64)
    p = np.asarray(probs, dtype=np.float64)
    w = np.asarray(weights, dtype=np.float64)
    index = np.minimum((p * bins).astype(np.int64), bins - 1)
    total, err = float(w.sum()), 0.0
    for b in range(bins):
        inside = index == b
        wb = float(w[inside].sum())
        if wb > 0:
            err += wb / total * abs(float((w[inside] * (p[inside] - y[inside])).sum()) / wb)
    return err


@dataclass(frozen=True)
class Candidate:
    """One threshold a site could choose, with what it would have done at the site."""

    threshold: float
    names: tuple[str, ...]
    sensitivity: Estimate
    specificity: Estimate
    #: flags among every study the model assessed at the site, per 100
    flags_per_100: float | None

    @property
    def label(self) -> str:
        return ", ".join(self.names)


@dataclass(frozen=True)
class Commissioning:
    """Everything ``screener commission`` shows; probabilities are after the refitted
    calibration when ``refitted`` (the scale the site bundle will flag on)."""

    target: float
    labels: npt.NDArray[np.int64]
    probabilities: Floats
    weights: Floats
    audited: npt.NDArray[np.bool_]
    refitted: bool
    local: Platt
    auc: float
    auc_interval: tuple[float, float]
    calibration_before: dict[str, float]
    calibration_after: dict[str, float]
    candidates: list[Candidate]
    rule_thresholds: dict[str, float]
    assessed_studies: int
    notes: list[str] = field(default_factory=list)

    @property
    def recommended(self) -> Candidate:
        return self.candidate(RECOMMENDED)

    def candidate(self, rule: str) -> Candidate:
        name = RULES[rule][0]
        return next(c for c in self.candidates if any(n.startswith(name) for n in c.names))

    @property
    def read_positives(self) -> int:
        return int(((self.labels == 1) & (self.weights > 0)).sum())

    @property
    def read_normals(self) -> int:
        return int(((self.labels == 0) & (self.weights > 0)).sum())

    @property
    def audit_reads(self) -> int:
        return int(self.audited.sum())


def judge(
    threshold: float,
    labels: npt.NDArray[np.int64],
    probs: Floats,
    weights: Floats,
    all_probs: Floats,
    names: tuple[str, ...],
) -> Candidate:
    flagged = probs >= threshold
    pos, neg = labels == 1, labels == 0
    return Candidate(
        float(threshold),
        names,
        weighted_estimate(flagged[pos], weights[pos]),
        weighted_estimate(~flagged[neg], weights[neg]),
        float(100 * np.mean(all_probs >= threshold)) if len(all_probs) else None,
    )


def commission(
    labels: npt.ArrayLike,
    probabilities: npt.ArrayLike,
    weights: npt.ArrayLike,
    audited: npt.ArrayLike,
    all_probabilities: npt.ArrayLike,
    shipped_threshold: float,
    target: float,
    refit_calibration: bool,
) -> Commissioning:
    """The commissioning figures from the site's reads.

    ``probabilities`` are the reads' P under the bundle in use (its own calibration);
    ``all_probabilities`` are every assessed study's P, for the flags per 100. With
    ``refit_calibration`` a Platt map is fitted on the weighted reads and every threshold is
    on its scale (the shipped threshold is mapped onto it)."""
    y = np.asarray(labels, dtype=np.int64)
    p0 = np.asarray(probabilities, dtype=np.float64)
    w = np.asarray(weights, dtype=np.float64)
    every = np.asarray(all_probabilities, dtype=np.float64)
    keep = w > 0
    y, p0, w, drawn = y[keep], p0[keep], w[keep], np.asarray(audited, dtype=bool)[keep]
    if not (y == 1).any() or not (y == 0).any():
        raise ValueError("commissioning needs reads of both pneumonia and normal")
    local = fit_platt(y, p0, weights=w) if refit_calibration else Platt()
    p = local.apply(p0) if refit_calibration else p0
    scale = local.apply(every) if refit_calibration and len(every) else every
    shipped = (
        float(local.apply(np.array([shipped_threshold]))[0])
        if refit_calibration
        else (shipped_threshold)
    )
    chosen: dict[float, list[str]] = {}

    def name(t: float, label: str) -> None:
        # one row per threshold: the same score reached by two float paths is one threshold
        same = next((k for k in chosen if abs(k - t) <= 1e-9 * max(1.0, abs(t))), t)
        chosen.setdefault(same, []).append(label)

    rule_thresholds: dict[str, float] = {}
    for key, (label, rule) in RULES.items():
        t = float(rule(y, p, target, w))
        rule_thresholds[key] = t
        name(t, label + (" (recommended)" if key == RECOMMENDED else ""))
    name(shipped, "the bundle's threshold now")
    for level in (0.90, 0.975, 0.99):
        if level != target:
            name(
                float(rules.weighted_point_threshold(y, p, level, w)),
                f"sensitivity {level:g} (point estimate)",
            )
    candidates = [
        judge(t, y, p, w, scale, tuple(names))
        for t, names in sorted(chosen.items(), key=lambda kv: -kv[0])
    ]
    notes = []
    if int((y == 1).sum()) < FEW_POSITIVES:
        notes.append(
            f"only {int((y == 1).sum())} read pneumonias: with fewer than {FEW_POSITIVES} no "
            "rule kept the target in 80 % of simulated sites; read more before trusting the "
            "threshold"
        )
    return Commissioning(
        target=target,
        labels=y,
        probabilities=p,
        weights=w,
        audited=drawn,
        refitted=refit_calibration,
        local=local,
        auc=weighted_auc(y, p, w),
        auc_interval=bootstrap_weighted_auc(y, p, w),
        calibration_before={"brier": weighted_brier(y, p0, w), "ece": weighted_ece(y, p0, w)},
        calibration_after={"brier": weighted_brier(y, p, w), "ece": weighted_ece(y, p, w)},
        candidates=candidates,
        rule_thresholds=rule_thresholds,
        assessed_studies=len(every),
        notes=notes,
    )


def as_json(c: Commissioning) -> dict[str, Any]:
    """What the site bundle's model.json records of its commissioning."""

    def est(e: Estimate) -> dict[str, Any]:
        return {"value": e.value, "interval": e.interval, "n_eff": round(e.n_eff, 1)}

    return {
        "target_sensitivity": c.target,
        "reads": len(c.labels),
        "read_as_pneumonia": c.read_positives,
        "read_as_normal": c.read_normals,
        "audit_reads": c.audit_reads,
        "assessed_studies": c.assessed_studies,
        "auc": c.auc,
        "auc_interval": list(c.auc_interval),
        "calibration_before": c.calibration_before,
        "calibration_after": c.calibration_after,
        "recommended_rule": RULES[RECOMMENDED][0],
        "why": WHY,
        "candidates": [
            {
                "threshold": k.threshold,
                "chosen_by": list(k.names),
                "sensitivity": est(k.sensitivity),
                "specificity": est(k.specificity),
                "flags_per_100": k.flags_per_100,
            }
            for k in c.candidates
        ],
        "notes": c.notes,
    }


__all__ = [
    "RECOMMENDED",
    "RULES",
    "WHY",
    "Candidate",
    "Commissioning",
    "Estimate",
    "as_json",
    "bootstrap_weighted_auc",
    "commission",
    "weighted_auc",
    "weighted_estimate",
    "weighted_roc",
]
