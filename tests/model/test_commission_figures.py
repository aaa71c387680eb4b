"""The commissioning figures on synthetic weighted reads whose answers are known: the weighted
rules reduce to the unweighted ones with equal weights and to replicated reads with integer
weights, the weighted AUC is the Mann-Whitney one, and the table's candidates carry what the
rules chose."""

from __future__ import annotations

import numpy as np
import numpy.typing as npt
import pytest

from screener.model import commission, metrics, rules

Ints = npt.NDArray[np.int64]
Floats = npt.NDArray[np.float64]


def site(n_pos: int = 80, n_neg: int = 120, seed: int = 3) -> tuple[Ints, Floats]:
    """Overlapping scores: pneumonias Beta(5, 2), normals Beta(2, 5)."""
    rng = np.random.default_rng(seed)
    y = np.r_[np.ones(n_pos, dtype=np.int64), np.zeros(n_neg, dtype=np.int64)]
    s = np.r_[rng.beta(5, 2, n_pos), rng.beta(2, 5, n_neg)]
    return y, s


def test_equal_weights_give_the_unweighted_rules() -> None:
    """With every weight 1 each weighted rule picks the threshold its unweighted form picks."""
    y, s = site()
    w = np.ones(len(y))
    assert rules.weighted_point_threshold(y, s, 0.95, w) == rules.point_estimate_threshold(
        y, s, 0.95
    )
    assert rules.weighted_wilson_threshold(y, s, 0.9, w, 0.9) == rules.wilson_threshold(
        y, s, 0.9, 0.9
    )
    assert rules.weighted_bootstrap_threshold(y, s, 0.95, w) == rules.bootstrap_threshold(
        y, s, 0.95, 0.90
    )


def test_integer_weights_count_as_replicated_reads() -> None:
    """A read of weight 3 moves the point estimate as three copies of it would."""
    y, s = site(40, 10)
    w = np.where(np.arange(len(y)) % 4 == 0, 3.0, 1.0)
    reps = w.astype(np.int64)
    y_rep, s_rep = np.repeat(y, reps), np.repeat(s, reps)
    assert rules.weighted_point_threshold(y, s, 0.9, w) == rules.point_estimate_threshold(
        y_rep, s_rep, 0.9
    )
    assert commission.weighted_auc(y, s, w) == pytest.approx(metrics.roc_auc(y_rep, s_rep))


def test_weighted_bootstrap_is_seeded_and_lower_than_the_point_estimate() -> None:
    """Unequal weights take the resampling path: the same reads give the same threshold, at or
    below the point estimate's."""
    y, s = site()
    w = np.where(y == 1, np.where(np.arange(len(y)) % 3 == 0, 5.0, 1.0), 1.0)
    a = rules.weighted_bootstrap_threshold(y, s, 0.95, w)
    assert a == rules.weighted_bootstrap_threshold(y, s, 0.95, w)
    assert a <= rules.weighted_point_threshold(y, s, 0.95, w)
    assert a in set(s[y == 1])


def test_weighted_auc_equals_mann_whitney_with_ties() -> None:
    """Equal weights: the weighted AUC is roc_auc, ties counted one half."""
    y = np.array([1, 1, 0, 0, 1, 0])
    s = np.array([0.9, 0.5, 0.5, 0.1, 0.7, 0.7])
    assert commission.weighted_auc(y, s, np.ones(6)) == pytest.approx(metrics.roc_auc(y, s))


def test_weights_below_zero_are_refused() -> None:
    """A negative weight is a bug upstream, not a read: ValueError."""
    y, s = site(5, 5)
    w = np.ones(10)
    w[0] = -1
    with pytest.raises(ValueError, match="weights"):
        rules.weighted_point_threshold(y, s, 0.9, w)


def test_table_holds_each_rule_and_the_bundle_threshold() -> None:
    """Every rule's threshold is a row named by it, the recommended one is bootstrap 90 %,
    sensitivity at each row is the weighted share caught, and the flags per 100 count every
    assessed study, read or not."""
    y, s = site()
    w = np.where(y == 0, 4.0, 1.0)  # normals read as audit reads at share 0.25
    every = np.linspace(0, 1, 1001)
    c = commission.commission(y, s, w, y == 0, every, 0.5, 0.95, refit_calibration=False)
    for key, (name, rule) in commission.RULES.items():
        row = c.candidate(key)
        assert row.threshold == rule(y, s, 0.95, w) == c.rule_thresholds[key]
        assert any(n.startswith(name) for n in row.names)
    rec = c.recommended
    assert "recommended" in rec.label and rec.label.startswith("bootstrap 90 %")
    assert rec.sensitivity.value == pytest.approx(np.mean(s[y == 1] >= rec.threshold))
    assert rec.specificity.value == pytest.approx(np.mean(s[y == 0] < rec.threshold))
    assert rec.flags_per_100 == pytest.approx(100 * np.mean(every >= rec.threshold))
    # weight 4 on each normal: the specificity interval rests on the normals' effective size
    assert rec.specificity.n_eff == pytest.approx(120)
    assert any("the bundle's threshold now" in k.names for k in c.candidates)
    thresholds = [k.threshold for k in c.candidates]
    assert thresholds == sorted(thresholds, reverse=True)


def test_refitted_calibration_keeps_the_ranking_and_rescales_the_thresholds() -> None:
    """Refitting the calibration is monotone: the same reads are caught at each rule's
    threshold, and the weighted Brier score does not get worse on the reads it was fitted on."""
    y, s = site()
    w = np.ones(len(y))
    kept = commission.commission(y, s, w, y == 0, s, 0.5, 0.95, refit_calibration=False)
    refit = commission.commission(y, s, w, y == 0, s, 0.5, 0.95, refit_calibration=True)
    assert refit.auc == pytest.approx(kept.auc)
    for key in commission.RULES:
        assert refit.candidate(key).sensitivity.value == pytest.approx(
            kept.candidate(key).sensitivity.value
        )
    assert refit.calibration_after["brier"] <= refit.calibration_before["brier"] + 1e-9


def test_few_read_pneumonias_are_named_in_a_note() -> None:
    """With 30 read pneumonias the table says no rule kept the target in simulation."""
    y, s = site(30, 60)
    c = commission.commission(y, s, np.ones(90), y == 0, s, 0.5, 0.95, False)
    assert any("only 30 read pneumonias" in n for n in c.notes)
