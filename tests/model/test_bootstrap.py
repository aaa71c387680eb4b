"""Bootstrap resamples as count vectors: a resample's AUC from its counts is the weighted AUC of
the drawn reads, and the point estimates drawn tail first have the distribution of drawing
every read one by one (the two-step draw and its exact completion above the tail)."""

from __future__ import annotations

import numpy as np
import numpy.typing as npt
import pytest

from screener.model import bootstrap, commission, rules

Ints = npt.NDArray[np.int64]
Floats = npt.NDArray[np.float64]


def reads(n_pos: int, n_neg: int, seed: int) -> tuple[Ints, Floats, Floats]:
    """Pneumonias Beta(5, 2) and normals Beta(2, 5), scores rounded to two decimals (ties within
    and across classes), weights 1 or 20 as flagged and audit reads."""
    rng = np.random.default_rng(seed)
    y: Ints = np.r_[np.ones(n_pos, dtype=np.int64), np.zeros(n_neg, dtype=np.int64)].astype(
        np.int64
    )
    s: Floats = np.r_[rng.beta(5, 2, n_pos), rng.beta(2, 5, n_neg)].astype(np.float64).round(2)
    w: Floats = np.where(rng.random(n_pos + n_neg) < 0.3, 20.0, 1.0).astype(np.float64)
    return y, s, w


def test_counts_are_resamples_of_every_read() -> None:
    """Each row of counts draws n reads in all, and every read is drawn about once a row."""
    counts = bootstrap.resample_counts(np.random.default_rng(1), 500, 400)
    assert counts.shape == (400, 500) and (counts.sum(axis=1) == 500).all()
    assert counts.min() >= 0 and counts.mean(axis=0) == pytest.approx(np.ones(500), abs=0.2)


def test_auc_of_counts_is_the_auc_of_the_drawn_reads() -> None:
    """With ties within and across classes, each resample's AUC from its counts equals the
    weighted AUC of its drawn reads repeated as drawn."""
    y, s, w = reads(60, 90, 5)
    prepared = bootstrap.AucReads.of(y, s, w)
    rng = np.random.default_rng(2)
    pos_c, neg_c = bootstrap.resample_counts(rng, 60, 30), bootstrap.resample_counts(rng, 90, 30)
    got = prepared.aucs(pos_c, neg_c)
    pos, neg = np.flatnonzero(y == 1), np.flatnonzero(y == 0)
    neg = neg[np.argsort(s[neg], kind="stable")]  # the order the normal counts take
    for row in range(30):
        pick = np.r_[np.repeat(pos, pos_c[row]), np.repeat(neg, neg_c[row])]
        assert got[row] == pytest.approx(commission.weighted_auc(y[pick], s[pick], w[pick]))


def test_auc_interval_holds_the_auc_and_is_seeded() -> None:
    """The bootstrap interval is reproducible for a seed and holds the reads' own AUC."""
    y, s, w = reads(80, 120, 7)
    lo, hi = commission.bootstrap_weighted_auc(y, s, w, resamples=400)
    assert (lo, hi) == commission.bootstrap_weighted_auc(y, s, w, resamples=400)
    assert lo < commission.weighted_auc(y, s, w) < hi


#: Resamples each way in the distribution test.
DRAWS = 20_000


def brute_force_estimates(scores: Floats, weights: Floats, target: float, draws: int) -> Floats:
    """Point estimates of resamples drawn read by read (indexes, then the weighted rule)."""
    rng = np.random.default_rng(11)
    n = len(scores)
    ones = np.ones(n, dtype=np.int64)
    out = np.empty(draws)
    for i in range(draws):
        pick = rng.integers(0, n, n)
        out[i] = rules.weighted_point_threshold(ones, scores[pick], target, weights[pick])
    return out


def share_of_each(values: Floats, support: Floats) -> Floats:
    return np.array([np.mean(values == v) for v in support])


@pytest.mark.parametrize(
    ("margin", "classes"),
    [(bootstrap.MARGIN_SE, bootstrap.MAX_WEIGHT_CLASSES), (-50.0, 64), (bootstrap.MARGIN_SE, 0)],
)
def test_point_estimates_have_the_distribution_of_drawing_each_read(
    margin: float, classes: int, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The tail-first draw gives each point estimate as often as drawing every read does: with
    the usual margin, with none (nearly every resample then completed above the tail), and with
    too many weights to count (every read drawn as a count)."""
    monkeypatch.setattr(bootstrap, "MARGIN_SE", margin)
    monkeypatch.setattr(bootstrap, "MAX_WEIGHT_CLASSES", classes)
    _, s, w = reads(120, 0, 13)
    order = np.argsort(s, kind="stable")
    scores, weights = s[order], w[order]
    fast = bootstrap.weighted_point_estimates(scores, weights, 0.9, DRAWS, np.random.default_rng(3))
    slow = brute_force_estimates(scores, weights, 0.9, DRAWS)
    # the means within 4 standard errors of their difference (landing in the tail as if it
    # held 2 reads more, of 120, moves it by about 6)
    se = np.sqrt((fast.var() + slow.var()) / DRAWS)
    assert abs(fast.mean() - slow.mean()) < 4 * se, (fast.mean(), slow.mean(), se)
    support = np.union1d(fast, slow)
    # total variation between the two: sampling noise alone is about 0.02 here
    distance = 0.5 * np.abs(share_of_each(fast, support) - share_of_each(slow, support)).sum()
    assert distance < 0.04, distance
    # the same test tells a near rule apart: the estimates for target 0.85
    other = bootstrap.weighted_point_estimates(
        scores, weights, 0.85, DRAWS, np.random.default_rng(3)
    )
    apart = 0.5 * np.abs(share_of_each(other, support) - share_of_each(slow, support)).sum()
    assert apart > 0.2, apart


def test_every_estimate_is_a_drawable_point_estimate() -> None:
    """Every estimate is one of the pneumonias' scores, and the rule's lower quantile of them
    lies at or below the point estimate on the reads themselves."""
    y, s, w = reads(200, 0, 17)
    order = np.argsort(s, kind="stable")
    estimates = bootstrap.weighted_point_estimates(
        s[order], w[order], 0.95, 2000, np.random.default_rng(4)
    )
    assert set(estimates) <= set(s)
    assert bootstrap.lower_order_statistic(estimates, 0.9) <= rules.weighted_point_threshold(
        y, s, 0.95, w
    )
