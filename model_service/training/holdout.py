"""The score-holdout step: the time-ordered holdout scored through the serving path, in original units."""

from __future__ import annotations

import keras
import numpy as np

from model_service.records import ModelRecord
from model_service.serving import ServedModel, ServingOptions, predictor_for


def score_holdout(
    record: ModelRecord, model: keras.Model, serving: ServingOptions, x: np.ndarray, y: np.ndarray
) -> dict[str, float]:
    """Metrics of ``model`` on the raw-unit holdout (x, y); empty when there is no holdout."""
    if not x.shape[0]:
        return {}
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
        return scorer.evaluate(x, y)
    finally:
        scorer.close("the holdout is scored")
