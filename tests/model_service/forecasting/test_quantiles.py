"""The quantile head's pinball loss and coverage figures (forecasting/quantiles.py)."""

from __future__ import annotations

import numpy as np

from model_service.forecasting.quantiles import coverage, sorted_levels
from model_service.training.pinball import PinballLoss


def test_the_pinball_loss_weighs_under_and_over_prediction_by_the_level() -> None:
    loss = PinballLoss([0.1, 0.9])
    y_true = np.array([[1.0]], dtype=np.float32)
    # predicting 0 (under by 1): 0.1 * 1 at level 0.1 and 0.9 * 1 at level 0.9 -> mean 0.5
    assert float(loss(y_true, np.array([[0.0, 0.0]], dtype=np.float32))) == np.float32(0.5)
    # predicting 2 (over by 1): 0.9 at level 0.1, 0.1 at level 0.9 -> mean 0.5; asymmetric per level
    assert np.isclose(float(loss(y_true, np.array([[2.0, 1.0]], dtype=np.float32))), 0.45)


def test_the_pinball_loss_is_minimised_by_the_empirical_quantile() -> None:
    rng = np.random.default_rng(0)
    y = rng.normal(size=(2000, 1)).astype(np.float32)
    loss = PinballLoss([0.9])
    candidates = np.linspace(0.0, 2.5, 51)
    values = [float(loss(y, np.full((2000, 1), c, dtype=np.float32))) for c in candidates]
    assert abs(candidates[int(np.argmin(values))] - np.quantile(y, 0.9)) < 0.06


def test_the_loss_survives_its_config() -> None:
    restored = PinballLoss.from_config(PinballLoss([0.25, 0.5]).get_config())
    assert restored.quantiles == [0.25, 0.5]


def test_levels_are_sorted_per_value() -> None:
    out = sorted_levels(np.array([[3.0, 1.0, 2.0, 0.0, -1.0, 5.0]]), 3)
    assert out.tolist() == [[[1, 2, 3], [-1, 0, 5]]]


def test_coverage_counts_shares_below_and_inside() -> None:
    actual = np.array([0.0, 1.0, 2.0, 3.0])
    quantiles = np.tile([0.5, 1.5, 2.5], (4, 1))
    result = coverage(actual, quantiles, (0.1, 0.5, 0.9))
    assert result["below_q0.1"] == 0.25 and result["below_q0.5"] == 0.5 and result["below_q0.9"] == 0.75
    assert result["interval"] == 0.5 and np.isclose(result["nominal"], 0.8)
