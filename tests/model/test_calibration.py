"""Tests of Platt calibration."""

from __future__ import annotations

import numpy as np

from screener.model.calibration import Platt, fit_platt, logit, sigmoid
from screener.model.metrics import log_loss, roc_auc


def test_platt_lowers_log_loss_of_an_overconfident_model() -> None:
    """On synthetic over-confident scores, Platt scaling lowers log-loss and keeps the AUC."""
    rng = np.random.default_rng(0)
    y = rng.random(2000) < 0.7
    true_logit = rng.normal(np.where(y, 1.0, -1.0), 1.0)
    raw = sigmoid(6.0 * true_logit - 1.0)  # three times too sharp, shifted
    platt = fit_platt(y, raw)
    calibrated = platt.apply(raw)
    assert log_loss(y, calibrated) < log_loss(y, raw) - 0.05
    assert roc_auc(y, calibrated) == roc_auc(y, raw)
    assert 0.28 < platt.a < 0.39  # the true log-odds are 2x + ln(7/3)


def test_identity_platt_changes_nothing() -> None:
    """The default map is the identity on probabilities."""
    p = np.array([0.01, 0.3, 0.5, 0.97])
    assert np.allclose(Platt().apply(p), p)
    assert np.allclose(sigmoid(logit(p)), p)
    assert Platt.from_json(Platt(2.0, -1.0).to_json()) == Platt(2.0, -1.0)
