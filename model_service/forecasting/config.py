"""What a series model forecasts and how its head is laid out; every check of a series request.

Head layout (direct): output[step * targets * q + target * q + k] is quantile k of target ``target`` at
``step`` (q = 1 without quantiles). Recursive models predict one step of every target.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, replace
from enum import StrEnum
from typing import Any

import numpy as np

from model_service.forecasting.windowing import window_count
from model_service.spec import ModelSpec, Task
from service_common.codec import require_finite
from service_common.errors import InvalidArgument

MAX_HORIZON = 1_000  # steps a model is trained for, and a recursive forecast walks
MAX_QUANTILES = 99
MAX_STRIDE = 1_000_000


class Strategy(StrEnum):
    DIRECT = "direct"
    RECURSIVE = "recursive"


@dataclass(frozen=True)
class ForecastConfig:
    window: int
    horizon: int  # steps the head predicts: 1 for recursive
    strategy: Strategy
    input_columns: tuple[int, ...]
    target_columns: tuple[int, ...]
    series_columns: int
    stride: int = 1
    quantiles: tuple[float, ...] = ()
    # Conformalized intervals (forecasting/calibration.py): the share of the training split's windows
    # kept for calibration, and what it measured: per interval pair and (step, target), how far the
    # pair is moved out (negative: in), in original units; empty until calibrated.
    calibration_fraction: float = 0.0
    widening: tuple[float, ...] = ()
    calibration_windows: int = 0
    # The series dataset's column names a model trained by reference read (empty for inline series):
    # a forecast by dataset id reads only a dataset with the same columns in the same order.
    column_names: tuple[str, ...] = ()

    @property
    def targets(self) -> int:
        return len(self.target_columns)

    @property
    def levels(self) -> int:
        """Values per (step, target) in the head: one per quantile, or the point."""
        return len(self.quantiles) or 1

    @property
    def head_outputs(self) -> int:
        return self.horizon * self.targets * self.levels

    @property
    def max_forecast_horizon(self) -> int:
        return self.horizon if self.strategy is Strategy.DIRECT else MAX_HORIZON

    def to_dict(self) -> dict[str, Any]:
        return {
            "window": self.window,
            "horizon": self.horizon,
            "strategy": self.strategy.value,
            "input_columns": list(self.input_columns),
            "target_columns": list(self.target_columns),
            "series_columns": self.series_columns,
            "stride": self.stride,
            "quantiles": list(self.quantiles),
            "calibration_fraction": self.calibration_fraction,
            "widening": list(self.widening),
            "calibration_windows": self.calibration_windows,
            "column_names": list(self.column_names),
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> ForecastConfig:
        return cls(
            window=int(data["window"]),
            horizon=int(data["horizon"]),
            strategy=Strategy(data["strategy"]),
            input_columns=tuple(int(c) for c in data["input_columns"]),
            target_columns=tuple(int(c) for c in data["target_columns"]),
            series_columns=int(data["series_columns"]),
            stride=int(data["stride"]),
            quantiles=tuple(float(q) for q in data["quantiles"]),
            # Absent from versions stored before calibration existed.
            calibration_fraction=float(data.get("calibration_fraction", 0.0)),
            widening=tuple(float(w) for w in data.get("widening", ())),
            calibration_windows=int(data.get("calibration_windows", 0)),
            column_names=tuple(str(c) for c in data.get("column_names", ())),  # absent before it was kept
        )


@dataclass(frozen=True)
class SeriesRequest:
    """A series training request as it came (0 / empty = defaults)."""

    window: int = 0
    target_feature: int = 0
    horizon: int = 0
    strategy: Strategy = Strategy.DIRECT
    target_columns: tuple[int, ...] = ()
    stride: int = 0
    input_columns: tuple[int, ...] = ()
    quantiles: tuple[float, ...] = ()
    calibration_fraction: float = 0.0


def as_rows(series: np.ndarray, name: str = "series") -> np.ndarray:
    """``series`` as (rows, columns) of numbers; (n,) is one column."""
    if series.dtype.kind not in "fiu":
        raise InvalidArgument(f"{name}: expected numbers, got dtype {series.dtype}")
    if series.ndim == 1:
        series = series.reshape(-1, 1)
    if series.ndim != 2:
        shape = "[" + ", ".join(str(d) for d in series.shape) + "]"
        raise InvalidArgument(f"{name} has shape {shape}; expected (n,) or (n, columns)")
    require_finite(series, name)
    return series.astype(np.float64, copy=False)


def _columns(given: Sequence[int], default: Sequence[int], columns: int, what: str) -> tuple[int, ...]:
    chosen = tuple(int(c) for c in given) or tuple(default)
    bad = [c for c in chosen if not 0 <= c < columns]
    if bad:
        raise InvalidArgument(
            f"series.{what} {list(chosen)}: column {bad[0]} is out of range; the series has {columns} "
            f"column(s), 0..{columns - 1}"
        )
    if len(set(chosen)) != len(chosen):
        raise InvalidArgument(f"series.{what} {list(chosen)} names a column twice")
    return chosen


def _quantiles(levels: Sequence[float], strategy: Strategy) -> tuple[float, ...]:
    if not levels:
        return ()
    if strategy is Strategy.RECURSIVE:
        raise InvalidArgument(
            "quantiles need strategy DIRECT: a recursive forecast feeds one value back per step, so its "
            "intervals would ignore the uncertainty of the steps before; train a direct model for intervals"
        )
    if len(levels) > MAX_QUANTILES:
        raise InvalidArgument(f"{len(levels)} quantiles; at most {MAX_QUANTILES} are allowed")
    bad = [q for q in levels if not (math.isfinite(q) and 0.0 < q < 1.0)]
    if bad:
        raise InvalidArgument(f"quantiles must be in (0, 1) exclusive, got {bad[0]}")
    ordered = tuple(sorted(float(q) for q in levels))
    if len(set(ordered)) != len(ordered):
        raise InvalidArgument(f"quantiles {list(levels)} repeat a level")
    if 0.5 not in ordered:
        raise InvalidArgument(f"quantiles {list(levels)} must include 0.5: the median is the point forecast")
    return ordered


def series_config(
    request: SeriesRequest, series: np.ndarray, spec: ModelSpec, declared_outputs: int
) -> tuple[ForecastConfig, ModelSpec]:
    """The checked forecasting config of a series request, and ``spec`` (with defaults) with its head widened
    to the config's outputs; ``declared_outputs`` is head.outputs as the caller sent it (0 = derive).
    InvalidArgument says what was expected and what came."""
    series = as_rows(series)
    columns = series.shape[1]
    if spec.task is not Task.REGRESSION:
        raise InvalidArgument(
            f"series training forecasts numbers: head.task must be REGRESSION, got {spec.task.value}"
        )
    window = request.window or spec.timesteps
    if window != spec.timesteps:
        raise InvalidArgument(
            f"series.window is {window} but the model's input has timesteps={spec.timesteps}; they must match"
        )
    horizon = request.horizon or 1
    if not 1 <= horizon <= MAX_HORIZON:
        raise InvalidArgument(f"series.horizon must be in 1..{MAX_HORIZON} (0 = 1), got {request.horizon}")
    stride = request.stride or 1
    if not 1 <= stride <= MAX_STRIDE:
        raise InvalidArgument(f"series.stride must be in 1..{MAX_STRIDE} (0 = 1), got {request.stride}")
    if request.target_columns and request.target_feature:
        raise InvalidArgument(
            f"set series.target_columns or series.target_feature, not both (got target_feature="
            f"{request.target_feature}, target_columns={list(request.target_columns)})"
        )
    if not 0 <= request.target_feature < columns:
        raise InvalidArgument(
            f"series.target_feature {request.target_feature} is out of range for {columns} feature(s)"
        )
    targets = _columns(request.target_columns, (request.target_feature,), columns, "target_columns")
    inputs = _columns(request.input_columns, range(columns), columns, "input_columns")
    if len(inputs) != spec.features:
        what = f"input_columns {list(inputs)}" if request.input_columns else f"all {columns} column(s)"
        raise InvalidArgument(
            f"series has {columns} column(s) (shape [{series.shape[0]}, {columns}]) and the model reads "
            f"{what}, but the model's input has features={spec.features}; they must match"
        )
    strategy = request.strategy
    if strategy is Strategy.RECURSIVE:
        unpredicted = sorted(set(inputs) - set(targets))
        if unpredicted:
            raise InvalidArgument(
                f"strategy RECURSIVE feeds the model its own predictions, but input column(s) {unpredicted} "
                f"are not among target_columns {list(targets)}; predict every input column or use DIRECT"
            )
    quantiles = _quantiles(request.quantiles, strategy)
    fraction = request.calibration_fraction
    if fraction and not quantiles:
        raise InvalidArgument(
            f"calibration_fraction {fraction:g} calibrates a quantile head's intervals; set quantiles too"
        )
    if not (math.isfinite(fraction) and 0.0 <= fraction < 1.0):
        raise InvalidArgument(f"calibration_fraction must be in [0, 1) (0 = no calibration), got {fraction}")
    step = 1 if strategy is Strategy.RECURSIVE else horizon
    config = ForecastConfig(
        window, step, strategy, inputs, targets, columns, stride, quantiles, calibration_fraction=fraction
    )
    if declared_outputs not in (0, config.head_outputs):
        raise InvalidArgument(
            f"head.outputs is {declared_outputs} but this series model predicts {config.head_outputs} "
            f"value(s) per sample ({step} step(s) x {len(targets)} target(s)"
            + (f" x {len(quantiles)} quantiles)" if quantiles else ")")
            + "; leave head.outputs unset"
        )
    if window_count(series.shape[0], window, step, stride) < 1:
        raise InvalidArgument(
            f"series has {series.shape[0]} rows; a window of {window} and a horizon of {step} need at least "
            f"{window + step} to make one sample"
        )
    return config, replace(spec, head=replace(spec.head, outputs=config.head_outputs))


def check_history(history: np.ndarray, config: ForecastConfig, name: str = "history") -> np.ndarray:
    """A forecast's history as (series, length, columns) float64: (length,), (length, columns) or
    (series, length, columns), with at least a window of rows and the columns the model was trained on."""
    if history.dtype.kind not in "fiu":
        raise InvalidArgument(f"{name}: expected numbers, got dtype {history.dtype}")
    if history.ndim == 1:
        history = history.reshape(1, -1, 1)
    elif history.ndim == 2:
        history = history.reshape(1, *history.shape)
    shape = "[" + ", ".join(str(d) for d in history.shape) + "]"
    if history.ndim != 3:
        raise InvalidArgument(
            f"{name} has shape {shape}; expected (length,), (length, columns) or (series, length, columns)"
        )
    if history.shape[0] == 0:
        raise InvalidArgument(f"{name} holds no series (shape {shape})")
    if history.shape[2] != config.series_columns:
        raise InvalidArgument(
            f"{name} has {history.shape[2]} column(s) (shape {shape}); the model was trained on a series of "
            f"{config.series_columns} column(s)"
        )
    if history.shape[1] < config.window:
        raise InvalidArgument(
            f"{name} has {history.shape[1]} row(s) per series (shape {shape}); the model needs at least one "
            f"window of {config.window}"
        )
    require_finite(history, name)
    return history.astype(np.float64, copy=False)


def check_horizon(requested: int, config: ForecastConfig) -> int:
    horizon = requested or config.horizon
    limit = config.max_forecast_horizon
    if not 1 <= horizon <= limit:
        why = (
            f"this direct model was trained for {config.horizon} step(s)"
            if config.strategy is Strategy.DIRECT
            else f"a recursive forecast walks at most {MAX_HORIZON} steps"
        )
        raise InvalidArgument(f"horizon must be in 1..{limit} (0 = {config.horizon}), got {requested}: {why}")
    return horizon
