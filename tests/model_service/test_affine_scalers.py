"""The cached affine form (model_service/affine_scalers.py) reproduces the scaler service's own transforms."""

from __future__ import annotations

import numpy as np
import pytest

from model_service.affine_scalers import PER_COLUMN, PER_FEATURE, AffineScaler, ScalerRef
from scaler_service import sklearn_scalers as fitting


def affine_of(kind: str, layout: str, data: np.ndarray, **params: object) -> tuple[AffineScaler, object]:
    fitted = fitting.fit(fitting.make_spec(kind, layout, params), data)
    scale, offset = fitted.affine()
    clip = None
    if kind == "minmax" and params.get("clip"):
        clip = (float(params.get("feature_min", 0.0)), float(params.get("feature_max", 1.0)))
    return AffineScaler(ScalerRef("s", 1), layout, fitted.sample_shape, scale, offset, clip), fitted


@pytest.mark.parametrize("kind", ["minmax", "standard", "robust", "maxabs"])
@pytest.mark.parametrize("layout", [PER_FEATURE, PER_COLUMN])
def test_affine_form_matches_the_fitted_scaler_on_3d_data(kind: str, layout: str) -> None:
    rng = np.random.default_rng(0)
    train = rng.normal(5, 3, size=(20, 4, 2))
    test = rng.normal(5, 6, size=(7, 4, 2))
    affine, fitted = affine_of(kind, layout, train)
    np.testing.assert_allclose(affine.transform(test), fitted.transform(test), rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(affine.inverse_transform(affine.transform(test)), test, rtol=1e-10)


def test_affine_form_on_2d_targets_and_minmax_clip() -> None:
    y = np.arange(10.0).reshape(5, 2)
    affine, fitted = affine_of("minmax", PER_FEATURE, y, clip=True, feature_min=-1.0, feature_max=1.0)
    outside = np.array([[100.0, -100.0]])
    np.testing.assert_allclose(affine.transform(outside), fitted.transform(outside))
    assert affine.transform(outside).tolist() == [[1.0, -1.0]]


def test_affine_scaler_round_trips_through_its_dict() -> None:
    affine, _ = affine_of("standard", PER_COLUMN, np.arange(24.0).reshape(4, 3, 2))
    again = AffineScaler.from_dict(affine.to_dict())
    assert again.ref == affine.ref and again.layout == affine.layout and again.sample_shape == (3, 2)
    np.testing.assert_array_equal(again.scale, affine.scale)
    np.testing.assert_array_equal(again.offset, affine.offset)
