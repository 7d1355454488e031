"""Multi-step forecasts through a served model (forecasting/forecaster.py), against predictors whose
answer is known exactly: the layout of steps, targets and quantiles, recursion and unscaling."""

from __future__ import annotations

import asyncio

import numpy as np
import pytest

from model_service.affine_scalers import AffineScaler, ScalerRef
from model_service.forecasting.config import ForecastConfig, Strategy
from model_service.forecasting.forecaster import forecast, forecast_async
from service_common.errors import FailedPrecondition, InvalidArgument
from tests.model_service.forecasting.fakes import served


def linear_steps(steps: int):  # type: ignore[no-untyped-def]
    """The exact continuation of a linear window, ``steps`` values ahead (step-major, one target)."""

    def function(x: np.ndarray) -> np.ndarray:
        last, slope = x[:, -1, 0], x[:, -1, 0] - x[:, -2, 0]
        return np.stack([last + slope * (k + 1) for k in range(steps)], axis=1)

    return function


def test_a_direct_forecast_of_a_linear_series_is_exact() -> None:
    config = ForecastConfig(4, 5, Strategy.DIRECT, (0,), (0,), 1)
    model, predictor = served(config, linear_steps(5))
    history = 3.0 * np.arange(20.0) + 7
    result = forecast(model, history)
    np.testing.assert_allclose(result.point[0, :, 0], 3.0 * np.arange(20.0, 25.0) + 7, rtol=1e-6)
    assert result.quantiles is None and predictor.calls == 1
    # fewer steps than the model's horizon: the first ones
    np.testing.assert_allclose(forecast(model, history, 2).point[0, :, 0], [67, 70], rtol=1e-6)


def test_many_series_are_forecast_in_one_pass() -> None:
    config = ForecastConfig(3, 2, Strategy.DIRECT, (0,), (0,), 1)
    model, predictor = served(config, linear_steps(2))
    histories = np.stack([np.arange(6.0) * slope for slope in (1.0, -2.0, 0.5)])[..., None]
    result = asyncio.run(forecast_async(model, histories))
    assert result.point.shape == (3, 2, 1) and predictor.calls == 1
    np.testing.assert_allclose(result.point[:, :, 0], np.array([[6, 7], [-12, -14], [3, 3.5]]), rtol=1e-6)


def seasonal(t: np.ndarray) -> np.ndarray:
    return np.stack([np.sin(2 * np.pi * t / 8), 10 + np.cos(2 * np.pi * t / 8)], axis=1)


def one_step_of_a_rotation(x: np.ndarray) -> np.ndarray:
    """The exact next (cos, sin) pair of a rotation by 2pi/8, answered in target order (1, 0)."""
    s, c = x[:, -1, 0], x[:, -1, 1] - 10
    a = 2 * np.pi / 8
    next_s, next_c = s * np.cos(a) + c * np.sin(a), c * np.cos(a) - s * np.sin(a)
    return np.stack([next_c + 10, next_s], axis=1)


def test_a_recursive_forecast_of_a_seasonal_series_is_exact_and_takes_one_pass_per_step() -> None:
    config = ForecastConfig(3, 1, Strategy.RECURSIVE, (0, 1), (1, 0), 2)
    model, predictor = served(config, one_step_of_a_rotation)
    t = np.arange(30.0)
    result = forecast(model, seasonal(t)[:20], horizon=10)
    assert result.point.shape == (1, 10, 2) and predictor.calls == 10
    expected = seasonal(t[20:30])[:, [1, 0]]  # target order
    np.testing.assert_allclose(result.point[0], expected, atol=1e-5)


def test_quantiles_come_back_sorted_with_the_median_as_point_and_unscaled_per_level() -> None:
    config = ForecastConfig(2, 2, Strategy.DIRECT, (0,), (0,), 1, quantiles=(0.1, 0.5, 0.9))

    def crossing(x: np.ndarray) -> np.ndarray:
        # per step: levels given as (high, low, mid) in scaled units around the last value
        last = x[:, -1, 0]
        return np.stack([last + 1, last - 1, last, last + 2, last - 2, last + 0.5], axis=1)

    # y scaled as y * 0.5 + 1 per step column: unscaling is (v - 1) / 0.5
    scaler = AffineScaler(ScalerRef("y", 1), "per_feature", (2,), np.array([0.5, 0.5]), np.array([1.0, 1.0]))
    model, _ = served(config, crossing, y_scaler=scaler)
    result = forecast(model, np.array([0.0, 3.0]))
    assert result.quantiles is not None and result.levels == (0.1, 0.5, 0.9)
    q = result.quantiles[0, :, 0]
    np.testing.assert_allclose(q, [[2 * (3 - 1 - 1), 2 * (3 - 1), 2 * (3 + 1 - 1)], [0, 5, 8]], rtol=1e-6)
    assert (np.diff(result.quantiles, axis=-1) >= 0).all()
    np.testing.assert_allclose(result.point[0, :, 0], q[:, 1])


def test_bad_requests_are_refused_before_any_pass() -> None:
    config = ForecastConfig(4, 3, Strategy.DIRECT, (0,), (0,), 1)
    model, predictor = served(config, linear_steps(3))
    with pytest.raises(InvalidArgument, match="horizon must be in 1..3"):
        forecast(model, np.arange(10.0), horizon=4)
    with pytest.raises(InvalidArgument, match="at least one window of 4"):
        forecast(model, np.arange(3.0))
    assert predictor.calls == 0


def test_a_model_without_a_series_config_cannot_forecast() -> None:
    config = ForecastConfig(4, 1, Strategy.DIRECT, (0,), (0,), 1)
    model, _ = served(config, linear_steps(1))
    object.__setattr__(model, "record", model.record.__class__(**{**model.record.__dict__, "forecast": None}))
    with pytest.raises(FailedPrecondition, match="trained on supervised"):
        forecast(model, np.arange(10.0))
