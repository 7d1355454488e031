"""Rolling-origin backtests: where the origins go, and each window's scores against naive baselines.

A window with origin o forecasts series[o : o+horizon] from series[:o] only: its history is cut at
the origin before the model sees it, and its baselines and MASE scale read nothing past o either.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from model_service.forecasting.config import ForecastConfig, as_rows, check_horizon
from model_service.forecasting.forecaster import config_of, forecast_async
from model_service.serving import ServedModel
from service_common.errors import InvalidArgument

MAX_WINDOWS = 1_000


@dataclass(frozen=True)
class BacktestWindow:
    index: int
    origin: int
    metrics: dict[str, float]
    forecast: np.ndarray  # (horizon, targets), original units
    actual: np.ndarray
    lower: np.ndarray | None  # quantile models: the lowest and highest quantile
    upper: np.ndarray | None
    model_id: str
    model_version: int


def origins(rows: int, config: ForecastConfig, windows: int, origin_step: int, horizon: int) -> list[int]:
    """k origins ``origin_step`` apart (0 = the horizon), the last forecast ending at the last row."""
    if not 1 <= windows <= MAX_WINDOWS:
        raise InvalidArgument(f"windows must be in 1..{MAX_WINDOWS}, got {windows}")
    if origin_step < 0:
        raise InvalidArgument(f"origin_step must be >= 0 (0 = the horizon, {horizon}), got {origin_step}")
    step = origin_step or horizon
    last = rows - horizon
    first = last - (windows - 1) * step
    if first < config.window:
        raise InvalidArgument(
            f"series has {rows} rows: {windows} window(s) {step} apart with a horizon of {horizon} start the "
            f"first forecast at row {first}, but it needs a history of at least one window ({config.window} "
            f"rows); send at least {rows + config.window - first} rows, fewer windows or a smaller origin_step"
        )
    return [first + j * step for j in range(windows)]


def _mae(error: np.ndarray) -> float:
    return float(np.mean(np.abs(error)))


def scores(
    history: np.ndarray,
    actual: np.ndarray,
    forecast: np.ndarray,
    lower: np.ndarray | None = None,
    upper: np.ndarray | None = None,
    season_length: int = 0,
) -> dict[str, float]:
    """One window's figures. ``history`` (origin, targets) is everything before the origin; ``actual``
    and ``forecast`` are (horizon, targets). MASE divides by the in-sample MAE of the naive last-value
    forecast (Hyndman and Koehler, 2006); sMAPE is in percent, 0 where actual and forecast are both 0."""
    error = forecast - actual
    mse = float(np.mean(error**2))
    result = {"mae": _mae(error), "rmse": float(np.sqrt(mse))}
    scale = _mae(np.diff(history, axis=0)) if history.shape[0] > 1 else float("nan")
    result["mase"] = result["mae"] / scale if scale > 0 else float("nan")
    denominator = np.abs(actual) + np.abs(forecast)
    ratio = np.divide(2 * np.abs(error), denominator, out=np.zeros_like(denominator), where=denominator > 0)
    result["smape"] = float(100 * np.mean(ratio))
    result["naive_mae"] = _mae(history[-1] - actual)
    if season_length > 0 and history.shape[0] >= season_length:
        horizon = actual.shape[0]
        season = history[-season_length:]
        repeated = np.concatenate([season] * (horizon // season_length + 1))[:horizon]
        result["seasonal_naive_mae"] = _mae(repeated - actual)
    if lower is not None and upper is not None:
        result["coverage"] = float(np.mean((actual >= lower) & (actual <= upper)))
    return result


def aggregate(windows: list[dict[str, float]]) -> dict[str, float]:
    """Each metric's mean over the windows that have it (NaN ones skipped)."""
    names = sorted({name for metrics in windows for name in metrics})
    result = {}
    for name in names:
        values = [m[name] for m in windows if name in m and np.isfinite(m[name])]
        if values:
            result[name] = float(np.mean(values))
    return result


def check_series(series: np.ndarray, config: ForecastConfig) -> np.ndarray:
    rows = as_rows(series)
    if rows.shape[1] != config.series_columns:
        raise InvalidArgument(
            f"series has {rows.shape[1]} column(s) (shape [{rows.shape[0]}, {rows.shape[1]}]); the model was "
            f"trained on a series of {config.series_columns} column(s)"
        )
    return rows


@dataclass(frozen=True)
class BacktestPlan:
    rows: np.ndarray  # the whole series, (n, columns), raw units
    origins: list[int]
    horizon: int
    season_length: int


def plan(
    model: ServedModel,
    series: np.ndarray,
    windows: int,
    origin_step: int = 0,
    horizon: int = 0,
    season_length: int = 0,
) -> BacktestPlan:
    """Every check of a backtest request against ``model``, before any forecast or training."""
    config = config_of(model)
    rows = check_series(series, config)
    horizon = check_horizon(horizon, config)
    if season_length < 0:
        raise InvalidArgument(f"season_length must be >= 0 (0 = no seasonal baseline), got {season_length}")
    return BacktestPlan(
        rows, origins(rows.shape[0], config, windows, origin_step, horizon), horizon, season_length
    )


async def score(model: ServedModel, plan: BacktestPlan, indices: list[int]) -> list[BacktestWindow]:
    """Windows ``indices`` of ``plan`` forecast by ``model`` in one batched call: each window's history
    is rows[origin - window : origin], and only its actual values are read past the origin."""
    config = config_of(model)
    starts = [plan.origins[i] for i in indices]
    histories = np.stack([plan.rows[o - config.window : o] for o in starts])
    # Each window travels in an event of its own: no reply holds this batch of forecasts whole.
    result = await forecast_async(model, histories, plan.horizon, reply=False)
    targets = list(config.target_columns)
    out = []
    for k, (index, origin) in enumerate(zip(indices, starts, strict=True)):
        actual = plan.rows[origin : origin + plan.horizon][:, targets]
        lower = upper = None
        if result.quantiles is not None:
            lower, upper = result.quantiles[k, ..., 0], result.quantiles[k, ..., -1]
        metrics = scores(
            plan.rows[:origin, targets], actual, result.point[k], lower, upper, plan.season_length
        )
        out.append(
            BacktestWindow(
                index, origin, metrics, result.point[k], actual, lower, upper, model.model_id, model.version
            )
        )
    return out


async def run(
    model: ServedModel,
    series: np.ndarray,
    windows: int,
    origin_step: int = 0,
    horizon: int = 0,
    season_length: int = 0,
) -> list[BacktestWindow]:
    """Every window of a rolling-origin backtest of ``model`` on ``series`` (raw units), one model for all."""
    chosen = plan(model, series, windows, origin_step, horizon, season_length)
    return await score(model, chosen, list(range(len(chosen.origins))))
