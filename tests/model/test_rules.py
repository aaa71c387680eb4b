"""Tests of the operating-point rules on synthetic scores whose answer is known."""

from __future__ import annotations

import numpy as np
import pytest

from screener.model import metrics, rules


def reads(n_pos: int, n_neg: int = 5) -> tuple[np.ndarray, np.ndarray]:
    """Positives scored 1, 2, ..., n_pos and normals scored below all of them."""
    y = np.r_[np.ones(n_pos, dtype=np.int64), np.zeros(n_neg, dtype=np.int64)]
    s = np.r_[np.arange(1, n_pos + 1, dtype=np.float64), -np.arange(1, n_neg + 1)]
    return y, s


def test_point_estimate_catches_exactly_the_target_share() -> None:
    """With positives 1..100 and target 0.95 the point estimate is 6: 95 of 100 caught."""
    y, s = reads(100)
    assert rules.point_estimate_threshold(y, s, 0.95) == 6.0
    assert rules.point_estimate_threshold(y, s, 0.951) == 5.0


def test_point_estimate_ignores_the_normals() -> None:
    """Moving the normals' scores does not move the threshold."""
    y, s = reads(40)
    s2 = s.copy()
    s2[y == 0] = 1000.0
    assert rules.point_estimate_threshold(y, s, 0.9) == rules.point_estimate_threshold(y, s2, 0.9)


def test_wilson_at_95_is_the_calibrate_rule() -> None:
    """At 95 % the Wilson rule picks what metrics.threshold_for_sensitivity picks."""
    rng = np.random.default_rng(3)
    for n in (20, 60, 100, 250):
        y = (rng.random(n + 50) < n / (n + 50)).astype(np.int64)
        s = rng.normal(size=len(y)) + 2 * y
        expected, _ = metrics.threshold_for_sensitivity(y, s, 0.95)
        assert rules.wilson_threshold(y, s, 0.95, level=0.95) == expected


def test_wilson_known_count() -> None:
    """With 100 positives the 95 % bound reaches 0.90 first at 95 caught (94 gives 0.893)."""
    y, s = reads(100)
    assert metrics.wilson_lower(94, 100) < 0.90 <= metrics.wilson_lower(95, 100)
    assert rules.wilson_threshold(y, s, 0.90, level=0.95) == 6.0


def test_wilson_margin_shrinks_with_confidence() -> None:
    """A lower confidence leaves a higher threshold, never above the point estimate."""
    y, s = reads(200)
    t80, t90, t95 = (rules.wilson_threshold(y, s, 0.95, level=c) for c in (0.8, 0.9, 0.95))
    assert t95 < t90 < t80 <= rules.point_estimate_threshold(y, s, 0.95)


def test_wilson_unreachable_takes_every_positive() -> None:
    """30 positives cannot show 0.95 at 95 % confidence: the lowest positive is the threshold."""
    y, s = reads(30)
    assert metrics.wilson_lower(30, 30) < 0.95
    assert rules.wilson_threshold(y, s, 0.95) == 1.0


def test_z_for_tabled_values() -> None:
    """Confidence levels map to the tabled one-sided z (1.645, 1.282, 0.842)."""
    assert [rules.z_for(c) for c in (0.95, 0.9, 0.8)] == [1.645, 1.282, 0.842]
    with pytest.raises(ValueError, match="not in"):
        rules.z_for(1.0)


def test_binomial_tail_matches_the_sum() -> None:
    """The exact upper tail equals the binomial sum, including p = 0 and p = 1."""
    from math import comb

    p = np.array([0.0, 0.3, 0.95, 1.0])
    got = rules.binomial_upper_tail(20, p, 17)
    want = [sum(comb(20, i) * q**i * (1 - q) ** (20 - i) for i in range(17, 21)) for q in p]
    assert got == pytest.approx(want, abs=1e-12)


def test_bootstrap_is_the_monte_carlo_percentile() -> None:
    """The exact rule's choice has, in 20,000 real resamples, a point-estimate threshold at or
    above it in >= the level's share, and the next higher candidate falls short."""
    rng = np.random.default_rng(7)
    pos = np.round(rng.normal(size=120), 2)  # ties included
    y = np.r_[np.ones(120, dtype=np.int64), np.zeros(10, dtype=np.int64)]
    s = np.r_[pos, np.full(10, -9.0)]
    t = rules.bootstrap_threshold(y, s, 0.95, level=0.9)
    k = rules.caught_needed(120, 0.95)
    boot = -np.partition(-rng.choice(pos, (20_000, 120)), k - 1, axis=1)[:, k - 1]
    assert np.mean(boot >= t) >= 0.9 - 0.01
    higher = np.unique(pos)[np.unique(pos) > t].min()
    assert np.mean(boot >= higher) < 0.9 + 0.01


def test_bootstrap_orders_with_level() -> None:
    """A higher bootstrap level gives a lower (more sensitive) threshold, below the estimate."""
    y, s = reads(150)
    t50 = rules.bootstrap_threshold(y, s, 0.95, level=0.5)
    t90 = rules.bootstrap_threshold(y, s, 0.95, level=0.9)
    assert t90 < t50 and t90 < rules.point_estimate_threshold(y, s, 0.95)


def test_no_positive_read_is_an_error() -> None:
    """A rule on reads without a positive raises ValueError naming the reason."""
    with pytest.raises(ValueError, match="no positive"):
        rules.point_estimate_threshold([0, 0], [0.1, 0.2], 0.95)


def test_judge_on_the_pool() -> None:
    """A threshold of 3 on positives 1..4 and normals 0..3 catches 2 of 4 and clears 3 of 4."""
    j = rules.judge(3.0, np.array([1.0, 2, 3, 4]), np.array([0.0, 1, 2, 3]))
    assert (j.sensitivity, j.specificity) == (0.5, 0.75)


def test_draw_reads_mixes_at_the_prevalence() -> None:
    """Drawn reads hold n films, about prevalence x n positives, none repeated."""
    rng = np.random.default_rng(1)
    pos, neg = np.arange(1000.0, 1500.0), np.arange(0.0, 500.0)
    shares = []
    for _ in range(300):
        y, s = rules.draw_reads(pos, neg, 100, 0.3, rng)
        assert len(y) == 100 and len(np.unique(s)) == 100
        assert np.all((s >= 1000) == (y == 1))
        shares.append(y.mean())
    assert np.mean(shares) == pytest.approx(0.3, abs=0.01)


def test_simulate_separated_pool_keeps_everything() -> None:
    """On a perfectly separated pool every rule keeps the target with full specificity."""
    rng = np.random.default_rng(2)
    pos, neg = rng.uniform(1, 2, 400), rng.uniform(0, 1, 400)
    judged = rules.simulate(rules.wilson_threshold, pos, neg, 100, 0.5, 0.95, 50, rng)
    summary = rules.summarise(judged, 0.95)
    assert summary.specificity_median == 1.0 and summary.kept > 0.5


def test_simulate_point_estimate_misses_about_half() -> None:
    """On overlapping continuous scores the point estimate keeps sensitivity >= 0.95 in about
    half of the draws, and the 95 % Wilson rule in most, at lower specificity."""
    rng = np.random.default_rng(4)
    pos, neg = rng.normal(2, 1, 5000), rng.normal(0, 1, 5000)
    point = rules.summarise(
        rules.simulate(rules.point_estimate_threshold, pos, neg, 200, 0.5, 0.95, 400, rng), 0.95
    )
    wilson = rules.summarise(
        rules.simulate(rules.wilson_threshold, pos, neg, 200, 0.5, 0.95, 400, rng), 0.95
    )
    assert 0.3 < point.kept < 0.7
    assert wilson.kept > 0.9
    assert wilson.specificity_median < point.specificity_median


def test_recommend_best_specificity_among_kept() -> None:
    """The recommendation is the most specific rule that keeps the floor in every condition."""
    s = rules.Summary
    results = {
        "loose": [s(0.5, 0.9, 0.8), s(0.6, 0.9, 0.8)],
        "middle": [s(0.85, 0.8, 0.7), s(0.82, 0.8, 0.7)],
        "strict": [s(0.99, 0.6, 0.5), s(0.99, 0.6, 0.5)],
    }
    assert rules.recommend(results, 0.8) == "middle"
    assert rules.recommend(results, 0.9) == "strict"
    assert rules.recommend(results, 0.999) is None


def test_recommend_skips_conditions_no_rule_keeps() -> None:
    """A condition where no rule reaches the floor does not disqualify every rule."""
    s = rules.Summary
    results = {
        "loose": [s(0.5, 0.9, 0.8), s(0.70, 0.95, 0.9)],
        "strict": [s(0.85, 0.8, 0.7), s(0.75, 0.85, 0.8)],
    }
    assert rules.attainable(results, 0.8) == [True, False]
    assert rules.recommend(results, 0.8) == "strict"
