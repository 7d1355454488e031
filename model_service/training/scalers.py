"""The fit-scalers step: a job's scalers are fitted by the scaler service on the training split only."""

from __future__ import annotations

from typing import Any

import numpy as np

from model_service.scaling import AffineScaler, ScalerFitter, ScalerRef

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
