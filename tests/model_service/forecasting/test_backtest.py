"""Rolling origins and window scores (forecasting/backtest.py)."""

from __future__ import annotations

import asyncio

import numpy as np
import pytest

from model_service.forecasting import backtest
from model_service.forecasting.config import ForecastConfig, Strategy
from service_common.errors import InvalidArgument
from tests.model_service.forecasting.fakes import served

CONFIG = ForecastConfig(4, 3, Strategy.DIRECT, (0,), (0,), 1)


def test_origins_step_back_from_the_end() -> None:
    assert backtest.origins(20, CONFIG, 3, 0, 3) == [11, 14, 17]
    assert backtest.origins(20, CONFIG, 4, 2, 3) == [11, 13, 15, 17]


@pytest.mark.parametrize(
    ("windows", "step", "fragment"),
    [
        (0, 0, "windows must be in 1..1000"),
        (6, 0, "needs a history of at least one window (4 rows); send at least 22 rows"),
        (2, -1, "origin_step must be >= 0"),
    ],
)
def test_impossible_plans_are_refused(windows: int, step: int, fragment: str) -> None:
    with pytest.raises(InvalidArgument) as info:
        backtest.origins(20, CONFIG, windows, step, 3)
    assert fragment in str(info.value)


def test_scores_against_known_errors() -> None:
    history = np.array([[0.0], [2.0], [4.0]])  # naive in-sample MAE: 2
    actual = np.array([[6.0], [8.0]])
    forecast = np.array([[5.0], [10.0]])
    result = backtest.scores(history, actual, forecast, forecast - 1.5, forecast + 1.5, season_length=2)
    assert result["mae"] == 1.5 and np.isclose(result["rmse"], np.sqrt(2.5))
    assert result["mase"] == 0.75
    assert np.isclose(result["smape"], 100 * np.mean([2 / 11, 4 / 18]))
    assert result["naive_mae"] == 3.0  # last value 4 against 6 and 8
    assert result["seasonal_naive_mae"] == 4.0  # season (2, 4) against 6 and 8
    assert result["coverage"] == 0.5


def test_aggregate_averages_each_metric_skipping_nan() -> None:
    result = backtest.aggregate([{"mae": 1.0, "mase": float("nan")}, {"mae": 3.0, "mase": 2.0}])
    assert result == {"mae": 2.0, "mase": 2.0}


def last_value(x: np.ndarray) -> np.ndarray:
    return np.repeat(x[:, -1, :1], 3, axis=1)


def test_a_window_never_sees_data_after_its_origin() -> None:
    model, _ = served(CONFIG, last_value)
    series = np.sin(np.arange(40.0))
    windows = asyncio.run(backtest.run(model, series, 5, 3))
    origins = [w.origin for w in windows]
    # change everything from the third origin on: earlier windows must not move at all
    changed = series.copy()
    changed[origins[2] :] += 1000.0
    again = asyncio.run(backtest.run(model, changed, 5, 3))
    for before, after in zip(windows[:2], again[:2], strict=True):
        np.testing.assert_array_equal(before.forecast, after.forecast)
        assert before.metrics == after.metrics
    assert not np.array_equal(windows[2].actual, again[2].actual)
    np.testing.assert_array_equal(windows[2].forecast, again[2].forecast)  # its history is unchanged
    assert not np.array_equal(windows[3].forecast, again[3].forecast)


def test_a_series_with_other_columns_is_refused() -> None:
    model, _ = served(CONFIG, last_value)
    with pytest.raises(InvalidArgument, match="2 column"):
        asyncio.run(backtest.run(model, np.ones((30, 2)), 2))
