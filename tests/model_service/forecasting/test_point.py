"""The point answer of a quantile model (forecasting/point.py): Predict, Evaluate and the inference
protocol's 'values' get the median of each (step, target), never the interleaved head; a head without a
0.5 level is refused there, and Forecast still answers with its quantiles."""

from __future__ import annotations

import asyncio

import numpy as np
import pytest

from model_service.forecasting import point
from model_service.forecasting.config import ForecastConfig, Strategy
from model_service.forecasting.forecaster import forecast
from service_common.errors import FailedPrecondition, InvalidArgument
from tests.model_service.forecasting.fakes import served

# Two steps of one target, levels (0.1, 0.5, 0.9): the head answers them crossed (0.9 first) so that the
# median is found only after sorting. Step k's levels are last + k + {-1, 0, +1} * spread.
SPREAD = 2.0


def crossed_head(x: np.ndarray) -> np.ndarray:
    last = x[:, -1, 0]
    steps = [np.stack([last + k + SPREAD, last + k, last + k - SPREAD], axis=1) for k in (1, 2)]
    return np.concatenate(steps, axis=1)  # (batch, steps * levels), step-major


def quantile_model(levels: tuple[float, ...] = (0.1, 0.5, 0.9)):  # type: ignore[no-untyped-def]
    config = ForecastConfig(3, 2, Strategy.DIRECT, (0,), (0,), 1, quantiles=levels)
    return served(config, crossed_head)[0]


WINDOWS = np.array([[1.0, 2.0, 3.0], [10.0, 20.0, 30.0]])[..., None]
MEDIANS = np.array([[4.0, 5.0], [31.0, 32.0]])  # last + step


def test_predict_answers_the_median_of_each_step() -> None:
    model = quantile_model()
    raw = asyncio.run(model.infer_async(WINDOWS))
    assert raw.values is not None and raw.values.shape == (2, 6)  # the interleaved head
    answer = point.point_prediction(model, raw)
    assert answer.values is not None
    np.testing.assert_allclose(answer.values, MEDIANS, rtol=1e-6)
    assert point.point_outputs(model) == 2
    # the same numbers Forecast calls its point forecast
    np.testing.assert_allclose(answer.values, forecast(model, WINDOWS).point[..., 0], rtol=1e-6)


def test_evaluate_scores_the_median_against_one_value_per_step() -> None:
    model = quantile_model()
    y = MEDIANS + np.array([[1.0, -1.0], [3.0, 0.0]])
    metrics = point.evaluate(model, WINDOWS, y)
    assert metrics["mae"] == pytest.approx(5.0 / 4, rel=1e-6)
    assert metrics["mse"] == pytest.approx(11.0 / 4, rel=1e-6)
    # y as wide as the raw head is refused: the point answer has two values per sample
    with pytest.raises(InvalidArgument, match=r"has 2 output\(s\), so y must be \(2, 2\)"):
        point.evaluate(model, WINDOWS, np.zeros((2, 6)))


def test_a_point_model_is_answered_as_before() -> None:
    config = ForecastConfig(3, 2, Strategy.DIRECT, (0,), (0,), 1)
    model = served(config, lambda x: x[:, -1, :] + np.array([1.0, 2.0]))[0]
    raw = model.infer(WINDOWS)
    assert point.point_prediction(model, raw) is raw and point.point_outputs(model) == 2
    assert point.evaluate(model, WINDOWS, MEDIANS)["mae"] == pytest.approx(0.0, abs=1e-5)


def test_a_quantile_head_without_a_median_is_refused_and_forecast_still_answers() -> None:
    model = served(
        ForecastConfig(3, 2, Strategy.DIRECT, (0,), (0,), 1, quantiles=(0.1, 0.9)),
        lambda x: np.concatenate([np.stack([x[:, -1, 0] - 1, x[:, -1, 0] + 1], axis=1)] * 2, axis=1),
    )[0]
    message = r"levels \[0\.1, 0\.9\] and no 0\.5 level.*Forecast returns its quantiles"
    with pytest.raises(FailedPrecondition, match=message):
        point.point_prediction(model, model.infer(WINDOWS))
    with pytest.raises(FailedPrecondition, match=message):
        point.evaluate(model, WINDOWS, MEDIANS)
    result = forecast(model, WINDOWS)
    assert result.quantiles is not None and result.quantiles.shape == (2, 2, 1, 2)
    # its point is the quantile function halfway between 0.1 and 0.9
    np.testing.assert_allclose(result.point[:, 0, 0], [3.0, 30.0], rtol=1e-6)
