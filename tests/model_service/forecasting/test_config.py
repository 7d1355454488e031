"""Series requests checked and turned into a forecasting config (forecasting/config.py)."""

from __future__ import annotations

import numpy as np
import pytest

from model_service.forecasting.config import (
    MAX_HORIZON,
    ForecastConfig,
    SeriesRequest,
    Strategy,
    check_history,
    check_horizon,
    series_config,
)
from model_service.spec import Head, Lstm, ModelSpec, Task, with_defaults
from service_common.errors import InvalidArgument


def spec(timesteps: int = 3, features: int = 1, task: Task = Task.REGRESSION, **head: int) -> ModelSpec:
    return with_defaults(ModelSpec(timesteps, features, (Lstm(4),), Head(task, **head)))


def test_defaults_are_the_seed_one_step_model() -> None:
    config, widened = series_config(SeriesRequest(), np.arange(10.0), spec(), 0)
    assert config == ForecastConfig(3, 1, Strategy.DIRECT, (0,), (0,), 1, 1, ())
    assert widened.head.outputs == 1


def test_the_head_is_widened_to_horizon_targets_and_quantiles() -> None:
    request = SeriesRequest(horizon=4, target_columns=(1, 0), quantiles=(0.9, 0.1, 0.5))
    config, widened = series_config(request, np.ones((20, 2)), spec(features=2), 0)
    assert config.quantiles == (0.1, 0.5, 0.9)
    assert widened.head.outputs == config.head_outputs == 4 * 2 * 3


def test_a_recursive_model_predicts_one_step_of_every_input() -> None:
    request = SeriesRequest(horizon=6, strategy=Strategy.RECURSIVE, target_columns=(1, 0))
    config, widened = series_config(request, np.ones((20, 2)), spec(features=2), 0)
    assert config.horizon == 1 and widened.head.outputs == 2
    assert config.max_forecast_horizon == MAX_HORIZON


@pytest.mark.parametrize(
    ("request_", "series", "model", "fragment"),
    [
        (SeriesRequest(horizon=-1), np.arange(10.0), spec(), "horizon must be in 1..1000"),
        (SeriesRequest(horizon=MAX_HORIZON + 1), np.arange(10.0), spec(), "horizon must be in 1..1000"),
        (SeriesRequest(horizon=8), np.arange(10.0), spec(), "need at least 11"),
        (SeriesRequest(), np.arange(3.0), spec(), "need at least 4"),
        (
            SeriesRequest(window=4),
            np.arange(10.0),
            spec(),
            "window is 4 but the model's input has timesteps=3",
        ),
        (SeriesRequest(target_feature=2), np.arange(10.0), spec(), "target_feature 2 is out of range"),
        (SeriesRequest(target_columns=(0, 3)), np.ones((10, 2)), spec(2, 2), "column 3 is out of range"),
        (SeriesRequest(target_columns=(1, 1)), np.ones((10, 2)), spec(2, 2), "names a column twice"),
        (SeriesRequest(target_columns=(1,), target_feature=1), np.ones((10, 2)), spec(2, 2), "not both"),
        (SeriesRequest(), np.ones((10, 2)), spec(), "features=1"),
        (SeriesRequest(input_columns=(0, 1)), np.ones((10, 3)), spec(features=1), "input_columns [0, 1]"),
        (SeriesRequest(stride=-2), np.arange(10.0), spec(), "stride must be in"),
        (
            SeriesRequest(strategy=Strategy.RECURSIVE, input_columns=(0, 1), target_columns=(0,)),
            np.ones((10, 2)),
            spec(features=2),
            "input column(s) [1] are not among target_columns [0]",
        ),
        (
            SeriesRequest(strategy=Strategy.RECURSIVE, quantiles=(0.1, 0.5, 0.9)),
            np.arange(10.0),
            spec(),
            "quantiles need strategy DIRECT",
        ),
        (SeriesRequest(quantiles=(0.1, 0.9)), np.arange(10.0), spec(), "must include 0.5"),
        (SeriesRequest(quantiles=(0.5, 1.0)), np.arange(10.0), spec(), "in (0, 1) exclusive"),
        (SeriesRequest(quantiles=(0.5, 0.5)), np.arange(10.0), spec(), "repeat a level"),
        (SeriesRequest(), np.array([1.0, np.nan, 3, 4, 5]), spec(), "finite"),
        (SeriesRequest(), np.ones((2, 5, 1)), spec(), "expected (n,) or (n, columns)"),
        (SeriesRequest(), np.arange(10.0), spec(task=Task.BINARY), "must be REGRESSION"),
    ],
)
def test_bad_series_requests_are_refused(
    request_: SeriesRequest, series: np.ndarray, model: ModelSpec, fragment: str
) -> None:
    with pytest.raises(InvalidArgument) as info:
        series_config(request_, series, model, 0)
    assert fragment in str(info.value)


def test_a_declared_head_width_must_match_the_series_model() -> None:
    with pytest.raises(InvalidArgument) as info:
        series_config(SeriesRequest(horizon=2), np.arange(10.0), spec(), 5)
    assert "head.outputs is 5 but this series model predicts 2" in str(info.value)
    assert series_config(SeriesRequest(horizon=2), np.arange(10.0), spec(), 2)[1].head.outputs == 2


CONFIG = ForecastConfig(3, 2, Strategy.DIRECT, (0, 1), (0,), 2)


def test_histories_of_one_or_many_series_are_accepted() -> None:
    assert check_history(np.ones((5, 2)), CONFIG).shape == (1, 5, 2)
    assert check_history(np.ones((4, 3, 2)), CONFIG).shape == (4, 3, 2)


@pytest.mark.parametrize(
    ("history", "fragment"),
    [
        (np.ones((2, 2)), "2 row(s) per series (shape [1, 2, 2]); the model needs at least one window of 3"),
        (np.ones((5, 3)), "3 column(s) (shape [1, 5, 3]); the model was trained on a series of 2"),
        (np.ones(5), "1 column(s)"),
        (np.ones((0, 5, 2)), "holds no series"),
        (np.ones((1, 1, 5, 2)), "expected (length,), (length, columns) or (series, length, columns)"),
        (np.full((5, 2), np.inf), "finite"),
        (np.array(["a", "b"]), "expected numbers"),
    ],
)
def test_bad_histories_are_refused(history: np.ndarray, fragment: str) -> None:
    with pytest.raises(InvalidArgument) as info:
        check_history(history, CONFIG)
    assert fragment in str(info.value)


def test_horizons_past_what_the_model_allows_are_refused() -> None:
    assert check_horizon(0, CONFIG) == 2 and check_horizon(1, CONFIG) == 1
    for bad in (3, -1):
        with pytest.raises(InvalidArgument) as info:
            check_horizon(bad, CONFIG)
        assert "horizon must be in 1..2" in str(info.value) and "trained for 2 step(s)" in str(info.value)
