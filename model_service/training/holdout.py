"""The score-holdout step: the time-ordered holdout scored through the serving path (the version's own
serving graph, before it is published), in original units."""

from __future__ import annotations

import math
from collections.abc import Iterable
from dataclasses import replace

import numpy as np

from model_service.forecasting import calibration
from model_service.forecasting.forecaster import holdout_scores
from model_service.forecasting.quantiles import sorted_levels
from model_service.records import ModelRecord
from model_service.serving import ServingOptions, graph_scorer


def score_holdout(
    record: ModelRecord, graph: bytes, serving: ServingOptions, x: np.ndarray, y: np.ndarray
) -> tuple[dict[str, float], dict[str, float]]:
    """Metrics of the version (its serving ``graph``) on the raw-unit holdout (x, y), and a quantile model's coverage there;
    empty when there is no holdout."""
    if not x.shape[0]:
        return {}, {}
    scorer = graph_scorer(record, graph, serving)
    try:
        if record.forecast is None:
            return scorer.evaluate(x, y), {}
        values = scorer.infer(x, reply=False).values
        assert values is not None  # series models are regressions
        return holdout_scores(record.forecast, values, y)
    finally:
        scorer.close("the holdout is scored")


def score_holdout_blocks(
    record: ModelRecord,
    graph: bytes,
    serving: ServingOptions,
    blocks: Iterable[tuple[np.ndarray, np.ndarray]],
) -> dict[str, float]:
    """The metrics of score_holdout over a holdout read block by block: every metric but rmse is a
    mean over samples, so the blocks' figures are combined weighted by their samples."""
    scorer = graph_scorer(record, graph, serving)
    totals: dict[str, float] = {}
    n = 0
    try:
        for x, y in blocks:
            rows = int(x.shape[0])
            for name, value in scorer.evaluate(x, y).items():
                totals[name] = totals.get(name, 0.0) + value * rows
            n += rows
    finally:
        scorer.close("the holdout is scored")
    if not n:
        return {}
    metrics = {name: total / n for name, total in totals.items()}
    if "mse" in metrics:
        metrics["rmse"] = math.sqrt(metrics["mse"])
    return metrics


def calibrate(
    record: ModelRecord, graph: bytes, serving: ServingOptions, x: np.ndarray, y: np.ndarray
) -> ModelRecord:
    """``record`` with its quantile intervals calibrated (forecasting/calibration.py) on raw-unit
    calibration windows (x, y) the model was not fitted on, scored through the serving path."""
    config = record.forecast
    assert config is not None and config.quantiles and not config.widening
    scorer = graph_scorer(record, graph, serving)
    try:
        values = scorer.infer(x, reply=False).values
    finally:
        scorer.close("the calibration slice is scored")
    assert values is not None  # series models are regressions
    quantiles = sorted_levels(values, config.levels)
    return replace(record, forecast=calibration.calibrated(config, y.reshape(quantiles.shape[:2]), quantiles))
