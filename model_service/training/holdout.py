"""The score-holdout step: the time-ordered holdout scored through the serving path, in original units."""

from __future__ import annotations

import keras
import numpy as np

from model_service.forecasting.forecaster import holdout_scores
from model_service.records import ModelRecord
from model_service.serving import ServedModel, ServingOptions, predictor_for


def score_holdout(
    record: ModelRecord, model: keras.Model, serving: ServingOptions, x: np.ndarray, y: np.ndarray
) -> tuple[dict[str, float], dict[str, float]]:
    """Metrics of ``model`` on the raw-unit holdout (x, y), and a quantile model's coverage there;
    empty when there is no holdout."""
    if not x.shape[0]:
        return {}, {}
    predictor = predictor_for(record, model, serving)
    # Raw units in, original units out, unbatched; chunked as served, but not counted against the
    # budget again: the job's reservation covers the scoring.
    scorer = ServedModel(
        record,
        predictor,
        ServingOptions(
            max_batch_size=1,
            jit_compile=serving.jit_compile,
            flat_call=serving.flat_call,
            admission=serving.admission.untracked() if serving.admission else None,
        ),
    )
    try:
        if record.forecast is None:
            return scorer.evaluate(x, y), {}
        values = scorer.infer(x, reply=False).values
        assert values is not None  # series models are regressions
        return holdout_scores(record.forecast, values, y)
    finally:
        scorer.close("the holdout is scored")
