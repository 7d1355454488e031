"""The fit-scalers step: a job's scalers are fitted by the scaler service on the training split only.

One path for both kinds of job: the scaler service only fits (Fit, or FitStream for a dataset too
large to send at once) and hands back the fitted version's affine form; the job transforms its data
locally with that form (AffineScaler.transform), the very form serving applies to every request. So
training and serving cannot skew by construction, and the data crosses the wire once, not three times
(out, back transformed, and transformed again here to compare).

No probe of the service's own transform: a mismatch between it and the affine form would not show in
this model (trained and served with the same form); it would only mean clients of the scaler service's
Transform RPC saw other numbers. That equality is pinned where the form is made, for every kind and
layout (tests/scaler_service/test_sklearn_scalers.py, tests/model_service/test_affine_scalers.py), not paid for with a
round trip per job.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

import numpy as np

from model_service.affine_scalers import AffineScaler, ScalerFitter, ScalerRef
from service_common.errors import FailedPrecondition


def fit_scaler(
    fitter: ScalerFitter,
    scaler_id: str,
    spec: Any,
    train: np.ndarray,
    holdout: np.ndarray,
    fitted: list[ScalerRef],
) -> tuple[AffineScaler, np.ndarray, np.ndarray]:
    """Fit on ``train`` through the scaler service; ``train`` and ``holdout`` transformed with that fit.

    The new version goes into ``fitted`` as soon as it exists, so a job that fails later deletes it.
    """
    scaler = fitter.fit(scaler_id, spec, train)
    fitted.append(scaler.ref)
    transformed_holdout = scaler.transform(holdout) if holdout.shape[0] else holdout[:0].astype(np.float64)
    return scaler, scaler.transform(train), transformed_holdout


def fit_scaler_streamed(
    fitter: ScalerFitter,
    scaler_id: str,
    spec: Any,
    chunks: Callable[[], Iterator[np.ndarray]],
    split_bytes: int,
    in_memory_limit: int,
    fitted: list[ScalerRef],
) -> AffineScaler:
    """Fit on a training split read chunk by chunk (``chunks()`` yields it in order, float64).

    Streamed (FitStream, partial_fit) when the kind allows; a kind that needs all the data at once
    (robust: median and quantiles) gets it in one Fit call only when the split (``split_bytes``) is
    within ``in_memory_limit``, else FailedPrecondition. The job applies the returned affine form block
    by block.
    """
    if fitter.streams(spec):
        scaler = fitter.fit_stream(scaler_id, spec, chunks())
    else:
        if split_bytes > in_memory_limit:
            raise FailedPrecondition(
                f"scaler {scaler_id!r}: this kind (robust) has no partial_fit, so it needs the whole training "
                f"split in memory: {split_bytes / 2**20:.1f} MiB, above the limit "
                f"dataset_in_memory_fit_mb={in_memory_limit / 2**20:.0f}; use minmax, standard or maxabs "
                "(fitted from a stream), or train on a smaller dataset"
            )
        scaler = fitter.fit(scaler_id, spec, np.concatenate(list(chunks())))
    fitted.append(scaler.ref)
    return scaler
