"""Tests of the numpy metrics against hand-computed values."""

from __future__ import annotations

import numpy as np
import pytest

from screener.model import metrics

LABELS = [0, 0, 1, 1, 0, 1]
SCORES = [0.1, 0.4, 0.35, 0.8, 0.7, 0.9]


def test_auc_matches_the_pair_count() -> None:
    """AUC equals the share of (positive, negative) pairs ranked right: 7 of 9 here."""
    assert metrics.roc_auc(LABELS, SCORES) == pytest.approx(7 / 9)


def test_auc_counts_ties_as_half() -> None:
    """A tied positive/negative pair counts one half."""
    assert metrics.roc_auc([0, 1], [0.5, 0.5]) == pytest.approx(0.5)
    assert metrics.roc_auc([0, 0, 1], [0.2, 0.5, 0.5]) == pytest.approx(0.75)


def test_roc_curve_trapezoid_equals_auc() -> None:
    """The ROC curve's area (trapezoids) equals the rank AUC."""
    fpr, tpr, thr = metrics.roc_curve(LABELS, SCORES)
    assert fpr[0] == 0 and tpr[0] == 0 and fpr[-1] == 1 and tpr[-1] == 1
    area = float(np.sum(np.diff(fpr) * (tpr[1:] + tpr[:-1]) / 2))
    assert area == pytest.approx(7 / 9)
    assert np.all(np.diff(thr) < 0)


def test_confusion_figures_at_threshold() -> None:
    """At 0.5: TP 2, FN 1, TN 2, FP 1 and the rates that follow."""
    m = metrics.at_threshold(LABELS, SCORES, 0.5)
    assert m["confusion"] == {"tp": 2, "fp": 1, "tn": 2, "fn": 1}
    assert m["sensitivity"] == pytest.approx(2 / 3)
    assert m["specificity"] == pytest.approx(2 / 3)
    assert m["ppv"] == pytest.approx(2 / 3)
    assert m["npv"] == pytest.approx(2 / 3)
    assert m["accuracy"] == pytest.approx(4 / 6)
    assert m["f1"] == pytest.approx(2 / 3)


def test_brier_and_log_loss() -> None:
    """Brier score and log-loss of two predictions, computed by hand."""
    assert metrics.brier([0, 1], [0.2, 0.6]) == pytest.approx((0.04 + 0.16) / 2)
    expected = -(np.log(0.8) + np.log(0.6)) / 2
    assert metrics.log_loss([0, 1], [0.2, 0.6]) == pytest.approx(expected)


def test_bootstrap_ci_brackets_the_auc() -> None:
    """The bootstrap interval contains the point estimate and is reproducible."""
    rng = np.random.default_rng(0)
    y = np.r_[np.zeros(100), np.ones(200)].astype(int)
    s = rng.normal(y * 1.5, 1.0)
    auc = metrics.roc_auc(y, s)
    lo, hi = metrics.bootstrap_auc_ci(y, s, n_boot=300)
    assert lo < auc < hi
    assert (lo, hi) == metrics.bootstrap_auc_ci(y, s, n_boot=300)


def test_threshold_meets_target_sensitivity_with_margin() -> None:
    """The chosen threshold gives a validation sensitivity at or above the target's lower bound."""
    rng = np.random.default_rng(1)
    y = np.r_[np.zeros(300), np.ones(700)].astype(int)
    s = 1 / (1 + np.exp(-rng.normal((y - 0.5) * 4, 1.2)))
    thr, rule = metrics.threshold_for_sensitivity(y, s, 0.95)
    caught = int(np.sum(s[y == 1] >= thr))
    assert metrics.wilson_lower(caught, 700) >= 0.95
    assert caught / 700 > 0.95
    assert metrics.wilson_lower(caught - 1, 700) < 0.95  # the highest such threshold
    assert "Wilson" in rule
