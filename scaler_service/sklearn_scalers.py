"""Scaler domain: specs, scikit-learn scalers, 3-D layouts, statistics, affine form and fingerprints.

Plain Python and numpy only (no grpc, no protos). Every invalid input raises a service_common error
whose message names what was expected and what came.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import math
from collections.abc import Mapping
from dataclasses import dataclass
from enum import StrEnum
from typing import Any

import numpy as np
from sklearn.preprocessing import MaxAbsScaler, MinMaxScaler, RobustScaler, StandardScaler

from service_common.errors import FailedPrecondition, InvalidArgument, echo


class Kind(StrEnum):
    MINMAX = "minmax"
    STANDARD = "standard"
    ROBUST = "robust"
    MAXABS = "maxabs"


class Layout(StrEnum):
    PER_FEATURE = "per_feature"
    PER_COLUMN = "per_column"


@dataclass(frozen=True)
class MinMaxParams:
    feature_min: float = 0.0
    feature_max: float = 1.0
    clip: bool = False


@dataclass(frozen=True)
class StandardParams:
    with_mean: bool = True
    with_std: bool = True


@dataclass(frozen=True)
class RobustParams:
    quantile_min: float = 25.0
    quantile_max: float = 75.0
    with_centering: bool = True
    with_scaling: bool = True
    unit_variance: bool = False


@dataclass(frozen=True)
class MaxAbsParams:
    pass


Params = MinMaxParams | StandardParams | RobustParams | MaxAbsParams

PARAMS_BY_KIND: dict[Kind, type[Params]] = {
    Kind.MINMAX: MinMaxParams,
    Kind.STANDARD: StandardParams,
    Kind.ROBUST: RobustParams,
    Kind.MAXABS: MaxAbsParams,
}
ESTIMATOR_BY_KIND = {
    Kind.MINMAX: MinMaxScaler,
    Kind.STANDARD: StandardScaler,
    Kind.ROBUST: RobustScaler,
    Kind.MAXABS: MaxAbsScaler,
}
# Kinds whose statistics can be accumulated chunk by chunk with partial_fit.
STREAMABLE = frozenset({Kind.MINMAX, Kind.STANDARD, Kind.MAXABS})
FINGERPRINT_DTYPE = "<f8"


@dataclass(frozen=True)
class ScalerSpec:
    kind: Kind
    layout: Layout
    params: Params

    def to_dict(self) -> dict[str, Any]:
        return {
            "kind": self.kind.value,
            "layout": self.layout.value,
            "params": dataclasses.asdict(self.params),
        }


def _choice(enum: type[StrEnum], value: str, what: str) -> Any:
    try:
        return enum(value)
    except ValueError:
        expected = ", ".join(member.value for member in enum)
        raise InvalidArgument(f"{what} {echo(value)} is not known; expected one of {expected}") from None


def make_spec(kind: str, layout: str | None = None, params: Mapping[str, Any] | None = None) -> ScalerSpec:
    """A validated spec; parameters left out take scikit-learn's defaults."""
    if not kind:
        raise InvalidArgument(f"spec.kind is required; expected one of {', '.join(k.value for k in Kind)}")
    checked_kind: Kind = _choice(Kind, kind, "spec.kind")
    checked_layout: Layout = _choice(Layout, layout, "spec.layout") if layout else Layout.PER_FEATURE
    params_cls = PARAMS_BY_KIND[checked_kind]
    given = dict(params or {})
    known = {field.name for field in dataclasses.fields(params_cls)}
    unknown = sorted(set(given) - known)
    if unknown:
        raise InvalidArgument(
            f"spec: {checked_kind.value} takes parameters {sorted(known) or 'none'}, got unknown {unknown}"
        )
    built = params_cls(**given)
    _validate_params(built)
    return ScalerSpec(checked_kind, checked_layout, built)


def _validate_params(params: Params) -> None:
    if isinstance(params, MinMaxParams):
        low, high = params.feature_min, params.feature_max
        if not (math.isfinite(low) and math.isfinite(high)):
            raise InvalidArgument(f"minmax feature_range must be finite numbers, got ({low}, {high})")
        if low >= high:
            raise InvalidArgument(
                f"minmax feature_range needs feature_min < feature_max, got ({low:g}, {high:g})"
            )
    elif isinstance(params, RobustParams):
        low, high = params.quantile_min, params.quantile_max
        if not (math.isfinite(low) and math.isfinite(high)) or not (0 <= low <= 100 and 0 <= high <= 100):
            raise InvalidArgument(
                f"robust quantile_range must be percentiles within [0, 100], got ({low:g}, {high:g})"
            )
        if low >= high:
            raise InvalidArgument(
                f"robust quantile_range needs quantile_min < quantile_max, got ({low:g}, {high:g})"
            )


def build_estimator(spec: ScalerSpec) -> Any:
    """A fresh, unfitted scikit-learn scaler for the spec."""
    p = spec.params
    if isinstance(p, MinMaxParams):
        return MinMaxScaler(feature_range=(p.feature_min, p.feature_max), clip=p.clip)
    if isinstance(p, StandardParams):
        return StandardScaler(with_mean=p.with_mean, with_std=p.with_std)
    if isinstance(p, RobustParams):
        return RobustScaler(
            with_centering=p.with_centering,
            with_scaling=p.with_scaling,
            quantile_range=(p.quantile_min, p.quantile_max),
            unit_variance=p.unit_variance,
        )
    return MaxAbsScaler()


# ---- shapes and layouts ------------------------------------------------------------------------


def _shape_text(shape: tuple[int, ...]) -> str:
    return "[" + ", ".join(str(d) for d in shape) + "]"


def check_training_shape(data: np.ndarray, name: str) -> tuple[int, ...]:
    """The sample shape of 2-D (samples, features) or 3-D (samples, timesteps, features) training data."""
    if data.ndim not in (2, 3):
        hint = "; reshape a single series to (samples, 1)" if data.ndim == 1 else ""
        raise InvalidArgument(
            f"{name}: expected a 2-D (samples, features) or 3-D (samples, timesteps, features) array, "
            f"got {data.ndim}-D shape {_shape_text(data.shape)}{hint}"
        )
    sample_shape = tuple(int(d) for d in data.shape[1:])
    if math.prod(sample_shape) == 0:
        raise InvalidArgument(
            f"{name}: each sample needs at least one feature, got sample shape {_shape_text(sample_shape)} "
            f"(data shape {_shape_text(data.shape)})"
        )
    return sample_shape


def check_sample_shape(data: np.ndarray, expected: tuple[int, ...], name: str) -> None:
    if tuple(data.shape[1:]) != expected or data.ndim != len(expected) + 1:
        what = (
            f"{expected[-1]} features"
            if len(expected) == 1
            else f"{expected[0]} timesteps x {expected[1]} features"
        )
        raise InvalidArgument(
            f"{name}: expected samples of shape {_shape_text(expected)} ({what}) as fitted, "
            f"got data of shape {_shape_text(data.shape)}"
        )


def to_columns(data: np.ndarray, layout: Layout) -> np.ndarray:
    """The 2-D matrix the scaler sees: 3-D data pooled per feature, or one column per timestep x feature."""
    if data.ndim == 2:
        return data
    samples, timesteps, features = data.shape
    if layout is Layout.PER_FEATURE:
        return data.reshape(samples * timesteps, features)
    return data.reshape(samples, timesteps * features)


def n_columns_for(sample_shape: tuple[int, ...], layout: Layout) -> int:
    if len(sample_shape) == 1 or layout is Layout.PER_FEATURE:
        return sample_shape[-1]
    return math.prod(sample_shape)


# ---- fingerprint -------------------------------------------------------------------------------


class Fingerprint:
    """sha256 over the training values as little-endian float64, then dtype and shape.

    Hashing canonical float64 bytes row by row makes the digest independent of the wire dtype and
    of how a stream was chunked: the same data fitted in one call or streamed fingerprints alike.
    """

    def __init__(self) -> None:
        self._hash = hashlib.sha256()
        self._rows = 0

    def update(self, data: np.ndarray) -> None:
        self._hash.update(np.ascontiguousarray(data, dtype=FINGERPRINT_DTYPE).data)
        self._rows += data.shape[0]

    def hexdigest(self, sample_shape: tuple[int, ...]) -> str:
        final = self._hash.copy()
        trailer = {"dtype": FINGERPRINT_DTYPE, "shape": [self._rows, *sample_shape]}
        final.update(json.dumps(trailer, sort_keys=True).encode())
        return final.hexdigest()


# ---- fitted scalers ----------------------------------------------------------------------------


@dataclass(frozen=True)
class Statistics:
    """The fitted statistics by name (data_min, mean, scale, ...); names a kind lacks are absent."""

    values: dict[str, tuple[float, ...]]


@dataclass(frozen=True)
class FittedScaler:
    """An immutable fitted scaler: its spec, the sample shape it accepts and the sklearn estimator."""

    spec: ScalerSpec
    sample_shape: tuple[int, ...]
    n_samples_seen: int
    fingerprint: str
    estimator: Any

    @property
    def n_columns(self) -> int:
        return n_columns_for(self.sample_shape, self.spec.layout)

    def transform(self, data: np.ndarray, name: str = "data") -> np.ndarray:
        return self._apply(data, name, inverse=False)

    def inverse_transform(self, data: np.ndarray, name: str = "data") -> np.ndarray:
        return self._apply(data, name, inverse=True)

    def _apply(self, data: np.ndarray, name: str, inverse: bool) -> np.ndarray:
        check_sample_shape(data, self.sample_shape, name)
        columns = to_columns(data, self.spec.layout)
        if columns.shape[0] == 0:
            return np.empty(data.shape, dtype=np.float64)
        method = self.estimator.inverse_transform if inverse else self.estimator.transform
        with np.errstate(over="ignore", invalid="ignore"):
            out = np.asarray(method(columns), dtype=np.float64).reshape(data.shape)
        if not np.isfinite(out).all():
            # Finite data in, inf out: float64 overflowed (1e308 data, a scale above 1).
            index = tuple(int(i) for i in np.argwhere(~np.isfinite(out))[0])
            raise InvalidArgument(
                f"{name}: the {'inverse ' if inverse else ''}transform of {data[index]!s} at index "
                f"{list(index)} gives {out[index]!s}: beyond float64's range"
            )
        return out

    def statistics(self) -> Statistics:
        est = self.estimator
        names_by_kind = {
            Kind.MINMAX: ("data_min_", "data_max_", "data_range_", "scale_"),
            Kind.STANDARD: ("mean_", "var_", "scale_"),
            Kind.ROBUST: ("center_", "scale_"),
            Kind.MAXABS: ("max_abs_", "scale_"),
        }
        values: dict[str, tuple[float, ...]] = {}
        for attribute in names_by_kind[self.spec.kind]:
            found = getattr(est, attribute, None)
            # scikit-learn leaves e.g. mean_ None when with_mean and with_std are both off.
            if found is not None:
                values[attribute.rstrip("_")] = tuple(float(v) for v in np.ravel(found))
        return Statistics(values)

    def require_finite_statistics(self, name: str) -> FittedScaler:
        """Refuse a fit whose statistics overflowed float64 (finite data spanning more than its range:
        a variance or range of inf makes a scaler that maps everything to one value)."""
        for statistic, values in self.statistics().values.items():
            for column, value in enumerate(values):
                if not math.isfinite(value):
                    raise InvalidArgument(
                        f"{name}: the fitted {statistic} of column {column} is {value}: the data's spread is "
                        "beyond float64's range; divide it by a power of ten first"
                    )
        return self

    def affine(self) -> tuple[np.ndarray, np.ndarray]:
        """(scale, offset) per column with transform(x) == x * scale + offset (before any minmax clip)."""
        est = self.estimator
        ones = np.ones(self.n_columns)
        if self.spec.kind is Kind.MINMAX:
            return np.asarray(est.scale_, dtype=np.float64), np.asarray(est.min_, dtype=np.float64)
        if self.spec.kind is Kind.MAXABS:
            return 1.0 / est.scale_, np.zeros(self.n_columns)
        if self.spec.kind is Kind.STANDARD:
            params = self.spec.params
            assert isinstance(params, StandardParams)
            divisor = est.scale_ if params.with_std else ones
            center = est.mean_ if params.with_mean else np.zeros(self.n_columns)
        else:
            params = self.spec.params
            assert isinstance(params, RobustParams)
            divisor = est.scale_ if params.with_scaling else ones
            center = est.center_ if params.with_centering else np.zeros(self.n_columns)
        return 1.0 / divisor, -center / divisor


def _check_enough_samples(kind: Kind, n_samples: int, name: str) -> None:
    # Every kind fits on a single sample, as scikit-learn does (a constant column gets scale 1).
    if n_samples < 1:
        raise InvalidArgument(f"{name}: {kind.value} needs at least 1 sample to fit, got {n_samples}")


def fit(spec: ScalerSpec, data: np.ndarray, name: str = "data") -> FittedScaler:
    """Fit a new scaler on finite float64 training data of shape (samples, features[, ...])."""
    sample_shape = check_training_shape(data, name)
    _check_enough_samples(spec.kind, data.shape[0], name)
    estimator = build_estimator(spec)
    estimator.fit(to_columns(data, spec.layout))
    fingerprint = Fingerprint()
    fingerprint.update(data)
    fitted = FittedScaler(
        spec, sample_shape, int(data.shape[0]), fingerprint.hexdigest(sample_shape), estimator
    )
    return fitted.require_finite_statistics(name)


class StreamingFit:
    """Fits chunk by chunk with partial_fit; memory is one chunk, whatever the number of rows."""

    def __init__(self, spec: ScalerSpec) -> None:
        if spec.kind not in STREAMABLE:
            raise FailedPrecondition(
                f"{spec.kind.value} cannot be fitted from a stream: its statistics (median and quantiles) "
                "need all the training data at once, and a streamed fit only ever holds one chunk; "
                f"send the data in one Fit or FitTransform call, or stream with one of "
                f"{', '.join(sorted(k.value for k in STREAMABLE))}"
            )
        self.spec = spec
        self._estimator = build_estimator(spec)
        self._fingerprint = Fingerprint()
        self._sample_shape: tuple[int, ...] | None = None
        self._n_samples = 0

    def add(self, chunk: np.ndarray, name: str) -> None:
        if self._sample_shape is None:
            self._sample_shape = check_training_shape(chunk, name)
        else:
            check_sample_shape(chunk, self._sample_shape, name)
        if chunk.shape[0] == 0:
            return
        self._estimator.partial_fit(to_columns(chunk, self.spec.layout))
        self._fingerprint.update(chunk)
        self._n_samples += int(chunk.shape[0])

    def finish(self) -> FittedScaler:
        if self._sample_shape is None:
            raise InvalidArgument(
                f"stream: {self.spec.kind.value} needs at least 1 sample to fit, but no chunk carried data"
            )
        _check_enough_samples(self.spec.kind, self._n_samples, "stream")
        return FittedScaler(
            self.spec,
            self._sample_shape,
            self._n_samples,
            self._fingerprint.hexdigest(self._sample_shape),
            self._estimator,
        ).require_finite_statistics("stream")
