"""The point forecast of a quantile model for the calls that want one value per output: Predict,
Evaluate and the Open Inference Protocol's ``values``.

A quantile head has horizon x targets x levels outputs; those calls answer with its median (quantile
0.5) per (step, target), so their ``values`` are (batch, horizon * targets) as for a point model, and
Evaluate scores that median against y of the same width. A head without a 0.5 level has no point
forecast: those calls are refused and Forecast (which returns every quantile) is the way to read it.
"""

from __future__ import annotations

from dataclasses import replace

import numpy as np

from model_service import input_checks
from model_service.forecasting.config import ForecastConfig
from model_service.forecasting.quantiles import sorted_levels
from model_service.serving import Prediction, ServedModel, score
from service_common.errors import FailedPrecondition


def quantile_config(model: ServedModel) -> ForecastConfig | None:
    """The model's forecasting config when its head is a quantile head, else None."""
    config = model.record.forecast
    return config if config is not None and config.quantiles else None


def check_point(model: ServedModel) -> ForecastConfig | None:
    """The quantile config of ``model`` (None for a point model); FailedPrecondition when its
    quantiles have no median to answer with."""
    config = quantile_config(model)
    if config is not None and 0.5 not in config.quantiles:
        levels = ", ".join(f"{q:g}" for q in config.quantiles)
        raise FailedPrecondition(
            f"model {model.model_id!r} v{model.version} has a quantile head with levels [{levels}] and no 0.5 "
            "level, so it has no point forecast for Predict, Evaluate or the 'values' output; Forecast "
            "returns its quantiles (and the inference protocol's 'forecast_quantiles' output)"
        )
    return config


def median_values(values: np.ndarray, config: ForecastConfig) -> np.ndarray:
    """Quantile head outputs (batch, horizon * targets * levels), original units -> the median of each
    (step, target), (batch, horizon * targets), after the levels are sorted (no crossing)."""
    return sorted_levels(values, config.levels)[..., config.quantiles.index(0.5)]


def point_prediction(model: ServedModel, prediction: Prediction) -> Prediction:
    """``prediction`` with a quantile head's values replaced by their median; as it is otherwise."""
    config = check_point(model)
    if config is None or prediction.values is None:
        return prediction
    return replace(prediction, values=median_values(prediction.values, config))


def point_outputs(model: ServedModel) -> int:
    """Values per sample in a point answer: the head's outputs, or horizon x targets for a quantile head."""
    config = quantile_config(model)
    return model.signature.outputs if config is None else config.horizon * config.targets


def evaluate(model: ServedModel, x: np.ndarray, y: np.ndarray) -> dict[str, float]:
    """ServedModel.evaluate, scoring a quantile model's median against y of (samples, horizon *
    targets) values (blocking: from a worker thread)."""
    config = check_point(model)
    if config is None:
        return model.evaluate(x, y)
    spec = model.record.spec
    x = input_checks.model_input(x, spec.timesteps, spec.features, what="samples")
    point_spec = replace(spec, head=replace(spec.head, outputs=point_outputs(model)))
    y = input_checks.targets(y, x.shape[0], point_spec)
    return score(model.task, y, point_prediction(model, model.infer(x, reply=False)))
