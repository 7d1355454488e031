"""The fit-scalers step: a job's scalers are fitted by the scaler service on the training split only."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

import numpy as np

from model_service.scaling import AffineScaler, ScalerFitter, ScalerRef
from service_common.errors import FailedPrecondition

# The affine form the scaler service reports must reproduce its own transform to this tolerance.
AFFINE_RTOL = 1e-6
AFFINE_ATOL = 1e-9


def fit_scaler(
    fitter: ScalerFitter,
    scaler_id: str,
    spec: Any,
    train: np.ndarray,
    holdout: np.ndarray,
    fitted: list[ScalerRef],
) -> tuple[AffineScaler, np.ndarray, np.ndarray]:
    """Fit on ``train`` through the scaler service, transform ``train`` and ``holdout`` with that fit.

    The new version goes into ``fitted`` as soon as it exists, so a job that fails later deletes it.
    """
    outcome = fitter.fit_transform(
        scaler_id, spec, train, {"validation": holdout} if holdout.shape[0] else {}
    )
    fitted.append(outcome.scaler.ref)
    # Serving applies the cached affine form locally: it must reproduce the service's transform.
    if not np.allclose(outcome.scaler.transform(train), outcome.train, rtol=AFFINE_RTOL, atol=AFFINE_ATOL):
        raise RuntimeError(
            f"scaler {outcome.scaler.ref.scaler_id} v{outcome.scaler.ref.version}: its affine form does "
            "not reproduce its transform; refusing to cache it"
        )
    return outcome.scaler, outcome.train, outcome.others.get("validation", holdout[:0])


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
    within ``in_memory_limit``, else FailedPrecondition. Nothing is transformed by the service: the job
    applies the returned affine form block by block.
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
