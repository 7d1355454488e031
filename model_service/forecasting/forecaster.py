"""Multi-step forecasts through a served model: every forward pass goes through its batcher and
compiled predictor (ServedModel.infer / infer_async), never model.predict.

Direct models answer in one pass; recursive ones take one pass per step, each fed the steps before.
A forecast whose reply could not be sent is refused before its first pass: its size follows from the
number of series, the horizon and the model's quantiles, and a recursive model's passes are each far
smaller than the forecast they add up to.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass

import numpy as np

from model_service.cost import forecast_reply_bytes
from model_service.forecasting.calibration import widen
from model_service.forecasting.config import ForecastConfig, Strategy, check_history, check_horizon
from model_service.forecasting.quantiles import coverage, median_of, sorted_levels
from model_service.serving import ServedModel
from service_common.errors import FailedPrecondition


@dataclass(frozen=True)
class Forecast:
    horizon: int
    target_columns: tuple[int, ...]
    point: np.ndarray  # (series, horizon, targets), original units
    levels: tuple[float, ...]  # quantile levels, ascending; empty for point models
    quantiles: np.ndarray | None  # (series, horizon, targets, levels), sorted along the last axis


def config_of(model: ServedModel) -> ForecastConfig:
    config = model.record.forecast
    if config is None and model.record.dataset_id:
        raise FailedPrecondition(
            f"model {model.model_id!r} v{model.version} was trained on stored dataset "
            f"{model.record.dataset_id} of pre-made (x, y) samples: nothing says how those windows were cut "
            "from a series (which rows and columns make x, which later rows y), so no next window can be "
            "built from a history; Forecast and Backtest need a model trained on a series "
            "(TrainRequest.series, or a DATASET_SERIES dataset)"
        )
    if config is None:
        raise FailedPrecondition(
            f"model {model.model_id!r} v{model.version} was trained on supervised (x, y) data; Forecast and "
            "Backtest need a model trained on a series (TrainRequest.series)"
        )
    return config


def head_to_steps(values: np.ndarray, config: ForecastConfig) -> tuple[np.ndarray, np.ndarray | None]:
    """Head outputs in original units (batch, head_outputs) -> point (batch, steps, targets) and, for
    quantile models, sorted quantiles (batch, steps, targets, levels)."""
    n = values.shape[0]
    if not config.quantiles:
        return values.reshape(n, config.horizon, config.targets), None
    quantiles = widen(sorted_levels(values, config.levels), config)
    quantiles = quantiles.reshape(n, config.horizon, config.targets, config.levels)
    return median_of(quantiles, config.quantiles), quantiles


def _inputs(rows: np.ndarray, config: ForecastConfig) -> np.ndarray:
    return rows[:, -config.window :, list(config.input_columns)]


def _next_rows(rows: np.ndarray, step: np.ndarray, config: ForecastConfig) -> np.ndarray:
    """The history with one more row: the predicted targets, the other columns carried forward."""
    row = rows[:, -1:, :].copy()
    row[:, 0, list(config.target_columns)] = step
    return np.concatenate(
        [rows[:, -(config.window - 1) :, :] if config.window > 1 else rows[:, :0, :], row], 1
    )


def _result(
    config: ForecastConfig, horizon: int, point: np.ndarray, quantiles: np.ndarray | None
) -> Forecast:
    return Forecast(
        horizon,
        config.target_columns,
        point[:, :horizon],
        config.quantiles,
        None if quantiles is None else quantiles[:, :horizon],
    )


def check_reply(model: ServedModel, config: ForecastConfig, series: int, horizon: int) -> None:
    """ResourceExhausted, naming the sizes, when the forecast of ``series`` series over ``horizon``
    steps would make a reply above the message limit; nothing has been computed yet."""
    admission = model.admission
    if admission is None:
        return
    levels = len(config.quantiles)
    shape = f"{series} series x {horizon} step(s) x {config.targets} target(s)"
    if levels:
        shape += f" x (1 point + {levels} quantiles)"
    admission.check_reply(
        f"a forecast of {shape} on model {model.model_id!r} v{model.version}",
        forecast_reply_bytes(series, horizon, config.targets, levels),
        "send fewer series per call",
    )


def forecast(model: ServedModel, history: np.ndarray, horizon: int = 0, reply: bool = True) -> Forecast:
    """The next ``horizon`` steps after each series in ``history`` (raw units), from a worker thread.
    With ``reply`` the forecast is sent back whole: refused first when it would not fit in a message."""
    config = config_of(model)
    rows = check_history(history, config)
    horizon = check_horizon(horizon, config)
    if reply:
        check_reply(model, config, rows.shape[0], horizon)

    def infer(x: np.ndarray) -> np.ndarray:
        # The passes' outputs are not sent as they are: the forecast's own reply was checked above.
        values = model.infer(x, reply=False).values
        assert values is not None  # series models are regressions
        return values

    if config.strategy is Strategy.DIRECT:
        return _result(config, horizon, *head_to_steps(infer(_inputs(rows, config)), config))
    steps = []
    for _ in range(horizon):
        step = infer(_inputs(rows, config))
        steps.append(step)
        rows = _next_rows(rows, step, config)
    return _result(config, horizon, np.stack(steps, axis=1), None)


async def forecast_async(
    model: ServedModel, history: np.ndarray, horizon: int = 0, reply: bool = True
) -> Forecast:
    """``forecast`` from the event loop: the passes run on the batcher's thread."""
    config = config_of(model)
    rows = check_history(history, config)
    horizon = check_horizon(horizon, config)
    if reply:
        check_reply(model, config, rows.shape[0], horizon)
    infer: Callable[[np.ndarray], Awaitable[np.ndarray]] = _async_values(model)
    if config.strategy is Strategy.DIRECT:
        return _result(config, horizon, *head_to_steps(await infer(_inputs(rows, config)), config))
    steps = []
    for _ in range(horizon):
        step = await infer(_inputs(rows, config))
        steps.append(step)
        rows = _next_rows(rows, step, config)
    return _result(config, horizon, np.stack(steps, axis=1), None)


def _async_values(model: ServedModel) -> Callable[[np.ndarray], Awaitable[np.ndarray]]:
    async def infer(x: np.ndarray) -> np.ndarray:
        values = (await model.infer_async(x, reply=False)).values
        assert values is not None
        return values

    return infer


def holdout_scores(
    config: ForecastConfig, values: np.ndarray, y: np.ndarray
) -> tuple[dict[str, float], dict[str, float]]:
    """Holdout metrics of head outputs ``values`` (original units) against windowed ``y`` (n, steps *
    targets): mse/mae/rmse of the point forecast, and for quantile models their coverage."""
    point, quantiles = head_to_steps(values, config)
    actual = y.reshape(point.shape)
    errors = point - actual
    mse = float(np.mean(errors**2))
    metrics = {"mse": mse, "mae": float(np.mean(np.abs(errors))), "rmse": float(np.sqrt(mse))}
    return metrics, ({} if quantiles is None else coverage(actual, quantiles, config.quantiles))
