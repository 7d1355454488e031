"""The scaling domain on its own: specs, layouts, statistics, affine form, fingerprints, streaming."""

from __future__ import annotations

import numpy as np
import pytest

from scaler_service import sklearn_scalers
from scaler_service.sklearn_scalers import Kind, Layout, MinMaxParams, RobustParams, StandardParams
from service_common.errors import FailedPrecondition, InvalidArgument
from tests.scaler_service.helpers import random_data, sklearn_reference

ALL_KINDS = [k.value for k in Kind]


def test_make_spec_fills_defaults() -> None:
    assert sklearn_scalers.make_spec("minmax").params == MinMaxParams(0.0, 1.0, False)
    assert sklearn_scalers.make_spec("standard").params == StandardParams(True, True)
    assert sklearn_scalers.make_spec(
        "robust", "per_column", {"unit_variance": True}
    ) == sklearn_scalers.ScalerSpec(
        Kind.ROBUST, Layout.PER_COLUMN, RobustParams(25.0, 75.0, True, True, True)
    )
    assert sklearn_scalers.make_spec("maxabs").layout is Layout.PER_FEATURE


@pytest.mark.parametrize(
    ("kind", "layout", "params", "message"),
    [
        ("", None, {}, "spec.kind is required"),
        ("zscore", None, {}, "spec.kind 'zscore' is not known"),
        ("minmax", "diagonal", {}, "spec.layout 'diagonal' is not known"),
        ("minmax", None, {"feature_min": 1.0, "feature_max": 1.0}, "feature_min < feature_max, got (1, 1)"),
        ("minmax", None, {"feature_min": float("nan")}, "must be finite"),
        ("robust", None, {"quantile_min": 80.0, "quantile_max": 20.0}, "quantile_min < quantile_max"),
        ("robust", None, {"quantile_max": 101.0}, "within [0, 100], got (25, 101)"),
        ("robust", None, {"quantile_min": -1.0}, "within [0, 100]"),
        ("standard", None, {"clip": True}, "got unknown ['clip']"),
    ],
)
def test_make_spec_rejects(kind: str, layout: str | None, params: dict, message: str) -> None:
    with pytest.raises(InvalidArgument) as excinfo:
        sklearn_scalers.make_spec(kind, layout, params)
    assert message in str(excinfo.value)


@pytest.mark.parametrize("kind", ALL_KINDS)
@pytest.mark.parametrize(
    ("layout", "shape"), [("per_feature", (40, 3)), ("per_feature", (20, 4, 3)), ("per_column", (20, 4, 3))]
)
def test_fit_matches_sklearn_and_affine_form(kind: str, layout: str, shape: tuple[int, ...]) -> None:
    train, other = random_data(shape, seed=1), random_data(shape, seed=2)
    fitted = sklearn_scalers.fit(sklearn_scalers.make_spec(kind, layout), train)
    reference, to_2d = sklearn_reference(kind, layout, train)
    expected = reference.transform(to_2d(other)).reshape(other.shape)
    np.testing.assert_allclose(fitted.transform(other), expected, rtol=1e-12, atol=1e-12)
    scale, offset = fitted.affine()
    assert scale.shape == offset.shape == (fitted.n_columns,)
    np.testing.assert_allclose(to_2d(other) * scale + offset, to_2d(expected), rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(
        fitted.inverse_transform(fitted.transform(other)), other, rtol=1e-12, atol=1e-9
    )


def test_layouts_pool_or_split_columns() -> None:
    data = random_data((10, 4, 3))
    per_feature = sklearn_scalers.fit(sklearn_scalers.make_spec("minmax", "per_feature"), data)
    per_column = sklearn_scalers.fit(sklearn_scalers.make_spec("minmax", "per_column"), data)
    assert (per_feature.n_columns, per_column.n_columns) == (3, 12)
    assert per_feature.sample_shape == per_column.sample_shape == (4, 3)
    np.testing.assert_array_equal(per_feature.statistics().values["data_min"], data.min(axis=(0, 1)))
    np.testing.assert_array_equal(per_column.statistics().values["data_min"], data.min(axis=0).ravel())


@pytest.mark.parametrize(
    ("kind", "params", "names"),
    [
        ("minmax", {}, {"data_min", "data_max", "data_range", "scale"}),
        ("standard", {}, {"mean", "var", "scale"}),
        ("standard", {"with_mean": False, "with_std": False}, set()),
        ("standard", {"with_std": False}, {"mean"}),
        ("robust", {}, {"center", "scale"}),
        ("robust", {"with_centering": False}, {"scale"}),
        ("maxabs", {}, {"max_abs", "scale"}),
    ],
)
def test_statistics_only_name_what_the_kind_has(kind: str, params: dict, names: set[str]) -> None:
    fitted = sklearn_scalers.fit(sklearn_scalers.make_spec(kind, None, params), random_data((30, 2)))
    assert set(fitted.statistics().values) == names
    reference, _ = sklearn_reference(kind, "per_feature", random_data((30, 2)), **params)
    x = random_data((5, 2), seed=9)
    scale, offset = fitted.affine()
    np.testing.assert_allclose(x * scale + offset, reference.transform(x), rtol=1e-12, atol=1e-12)


def test_minmax_clip_is_applied_on_transform_only() -> None:
    fitted = sklearn_scalers.fit(
        sklearn_scalers.make_spec("minmax", None, {"clip": True}), np.array([[0.0], [10.0]])
    )
    np.testing.assert_array_equal(fitted.transform(np.array([[-5.0], [5.0], [20.0]])), [[0.0], [0.5], [1.0]])


def test_fingerprint_depends_on_values_and_shape_not_on_chunking() -> None:
    data = random_data((100, 3))
    whole = sklearn_scalers.fit(sklearn_scalers.make_spec("minmax"), data).fingerprint
    stream = sklearn_scalers.StreamingFit(sklearn_scalers.make_spec("minmax"))
    for chunk in np.array_split(data, 7):
        stream.add(chunk, "chunk")
    assert stream.finish().fingerprint == whole
    assert (
        sklearn_scalers.fit(sklearn_scalers.make_spec("standard"), data).fingerprint == whole
    )  # the data, not the spec
    changed = data.copy()
    changed[50, 1] += 1e-9
    assert sklearn_scalers.fit(sklearn_scalers.make_spec("minmax"), changed).fingerprint != whole
    assert (
        sklearn_scalers.fit(sklearn_scalers.make_spec("minmax"), data.reshape(100, 3, 1)).fingerprint != whole
    )


@pytest.mark.parametrize("kind", ["minmax", "standard", "maxabs"])
@pytest.mark.parametrize("layout", ["per_feature", "per_column"])
def test_streaming_fit_equals_one_shot(kind: str, layout: str) -> None:
    data = random_data((500, 2, 3), seed=4)
    spec = sklearn_scalers.make_spec(kind, layout)
    stream = sklearn_scalers.StreamingFit(spec)
    for chunk in np.array_split(data, 9):
        stream.add(chunk, "chunk")
    streamed, whole = stream.finish(), sklearn_scalers.fit(spec, data)
    assert streamed.n_samples_seen == whole.n_samples_seen == 500
    probe = random_data((7, 2, 3), seed=5)
    np.testing.assert_allclose(streamed.transform(probe), whole.transform(probe), rtol=1e-12, atol=1e-12)


def test_robust_cannot_stream() -> None:
    with pytest.raises(FailedPrecondition, match="need all the training data at once"):
        sklearn_scalers.StreamingFit(sklearn_scalers.make_spec("robust"))


def test_stream_chunks_must_agree_on_sample_shape() -> None:
    stream = sklearn_scalers.StreamingFit(sklearn_scalers.make_spec("standard"))
    stream.add(np.zeros((4, 3)), "chunk 0 data")
    with pytest.raises(
        InvalidArgument, match=r"chunk 1 data: expected samples of shape \[3\] \(3 features\)"
    ):
        stream.add(np.zeros((4, 2)), "chunk 1 data")


def test_stream_without_rows_is_refused() -> None:
    stream = sklearn_scalers.StreamingFit(sklearn_scalers.make_spec("standard"))
    with pytest.raises(InvalidArgument, match="no chunk carried data"):
        stream.finish()
    stream.add(np.zeros((0, 3)), "chunk 0 data")
    with pytest.raises(InvalidArgument, match="needs at least 1 sample to fit, got 0"):
        stream.finish()


@pytest.mark.parametrize(
    ("shape", "message"),
    [
        ((5,), "got 1-D shape [5]; reshape a single series to (samples, 1)"),
        ((2, 2, 2, 2), "got 4-D shape [2, 2, 2, 2]"),
        ((5, 0), "at least one feature, got sample shape [0]"),
        ((5, 0, 3), "at least one feature, got sample shape [0, 3]"),
        ((0, 3), "needs at least 1 sample to fit, got 0"),
    ],
)
def test_fit_rejects_bad_shapes(shape: tuple[int, ...], message: str) -> None:
    with pytest.raises(InvalidArgument) as excinfo:
        sklearn_scalers.fit(sklearn_scalers.make_spec("standard"), np.zeros(shape))
    assert message in str(excinfo.value)


def test_transform_requires_the_fitted_sample_shape() -> None:
    fitted = sklearn_scalers.fit(sklearn_scalers.make_spec("standard"), np.zeros((4, 3, 2)))
    with pytest.raises(
        InvalidArgument, match=r"expected samples of shape \[3, 2\] \(3 timesteps x 2 features\)"
    ):
        fitted.transform(np.zeros((4, 6)))
    assert fitted.transform(np.zeros((0, 3, 2))).shape == (0, 3, 2)


def test_single_sample_fits_every_kind() -> None:
    row = np.array([[3.0, -2.0]])
    for kind in ALL_KINDS:
        fitted = sklearn_scalers.fit(sklearn_scalers.make_spec(kind), row)
        assert np.isfinite(fitted.transform(row)).all()
