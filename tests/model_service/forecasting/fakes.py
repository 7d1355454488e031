"""A stand-in for the compiled predictor: a known function of the window, so forecasts can be checked
exactly while going through the real ServedModel (scalers, batcher, unscaling)."""

from __future__ import annotations

from collections.abc import Callable

import numpy as np

from model_service.affine_scalers import AffineScaler
from model_service.forecasting.config import ForecastConfig
from model_service.records import ModelRecord
from model_service.serving import ServedModel, ServingOptions
from model_service.spec import Head, Lstm, ModelSpec, Task, with_defaults


class FunctionPredictor:
    def __init__(self, function: Callable[[np.ndarray], np.ndarray]) -> None:
        self._function = function
        self.calls = 0

    def __call__(self, x: np.ndarray) -> np.ndarray:
        self.calls += 1
        return self._function(x.astype(np.float64)).astype(np.float32)

    def warm(self) -> None:
        pass

    def close(self) -> None:
        pass


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
    predictor = FunctionPredictor(function)
    return ServedModel(record, predictor, ServingOptions(max_batch_size=8)), predictor  # type: ignore[arg-type]
