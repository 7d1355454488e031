"""A stand-in for a version's serving graph session: a known function of the window (float32, as the
model computes), its outputs unscaled by the y scaler as the graph does, so forecasts can be checked
exactly while going through the real ServedModel (batcher, admission, timing)."""

from __future__ import annotations

from collections.abc import Callable

import numpy as np

from model_service.affine_scalers import AffineScaler
from model_service.forecasting.config import ForecastConfig
from model_service.records import ModelRecord
from model_service.serving import ServedModel, ServingOptions
from model_service.spec import Head, Lstm, ModelSpec, Task, with_defaults


class FunctionPredictor:
    def __init__(
        self, function: Callable[[np.ndarray], np.ndarray], y_scaler: AffineScaler | None, levels: int
    ) -> None:
        self._function = function
        self._y_scaler = y_scaler
        self._levels = levels
        self.calls = 0

    def run(self, x: np.ndarray) -> np.ndarray:
        self.calls += 1
        values = self._function(x.astype(np.float64)).astype(np.float32).astype(np.float64)
        if self._y_scaler is None:
            return values
        # Every level of a value is unscaled as that value (the graph's quantile head does the same).
        n, levels = values.shape[0], self._levels
        per_level = values.reshape(n, -1, levels).transpose(0, 2, 1).reshape(n * levels, -1)
        unscaled = self._y_scaler.inverse_transform(per_level)
        return unscaled.reshape(n, levels, -1).transpose(0, 2, 1).reshape(n, -1)


def served(
    config: ForecastConfig,
    function: Callable[[np.ndarray], np.ndarray],
    y_scaler: AffineScaler | None = None,
) -> tuple[ServedModel, FunctionPredictor]:
    spec = with_defaults(
        ModelSpec(
            config.window,
            len(config.input_columns),
            (Lstm(2),),
            Head(Task.REGRESSION, config.head_outputs),
        )
    )
    record = ModelRecord("fake", 1, spec, 0, "now", y_scaler=y_scaler, forecast=config)
    predictor = FunctionPredictor(function, y_scaler, config.levels)
    model = ServedModel(record, lambda: b"", ServingOptions(max_batch_size=8))
    model._session = predictor  # type: ignore[assignment]
    return model, predictor
