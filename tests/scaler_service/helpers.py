"""Request builders, reference scikit-learn scalers and the seed's data, shared by the scaler tests."""

from __future__ import annotations

from typing import Any

import numpy as np
from sklearn.preprocessing import MaxAbsScaler, MinMaxScaler, RobustScaler, StandardScaler

from demo.seed_examples import EXAMPLE2_X, EXAMPLE2_Y
from protos.lstm_stack.v1 import scaler_pb2
from service_common import codec

KINDS = {
    "minmax": scaler_pb2.MINMAX,
    "standard": scaler_pb2.STANDARD,
    "robust": scaler_pb2.ROBUST,
    "maxabs": scaler_pb2.MAXABS,
}
LAYOUTS = {"per_feature": scaler_pb2.PER_FEATURE, "per_column": scaler_pb2.PER_COLUMN}
PARAMS_MESSAGE = {
    "minmax": scaler_pb2.MinMaxParams,
    "standard": scaler_pb2.StandardParams,
    "robust": scaler_pb2.RobustParams,
    "maxabs": scaler_pb2.MaxAbsParams,
}

# The seed's outlier example (learning-keras.md, "scikit-learn으로 Data Scaling").
SEED_X, SEED_Y = EXAMPLE2_X, EXAMPLE2_Y


def spec(kind: str, layout: str = "", **params: Any) -> scaler_pb2.ScalerSpec:
    message = scaler_pb2.ScalerSpec(kind=KINDS[kind])
    if layout:
        message.layout = LAYOUTS[layout]
    if params:
        getattr(message, kind).CopyFrom(PARAMS_MESSAGE[kind](**params))
    return message


def sklearn_scaler(kind: str, **params: Any) -> Any:
    """The scikit-learn scaler the service should be equivalent to, from proto-style params."""
    if kind == "minmax":
        return MinMaxScaler(
            feature_range=(params.get("feature_min", 0.0), params.get("feature_max", 1.0)),
            clip=params.get("clip", False),
        )
    if kind == "standard":
        return StandardScaler(with_mean=params.get("with_mean", True), with_std=params.get("with_std", True))
    if kind == "robust":
        return RobustScaler(
            quantile_range=(params.get("quantile_min", 25.0), params.get("quantile_max", 75.0)),
            with_centering=params.get("with_centering", True),
            with_scaling=params.get("with_scaling", True),
            unit_variance=params.get("unit_variance", False),
        )
    return MaxAbsScaler()


def sklearn_reference(kind: str, layout: str, train: np.ndarray, **params: Any) -> Any:
    """Fit the reference on the 2-D view the layout prescribes; returns (scaler, to_2d)."""
    scaler = sklearn_scaler(kind, **params)

    def to_2d(data: np.ndarray) -> np.ndarray:
        if data.ndim == 2:
            return data
        if layout == "per_column":
            return data.reshape(data.shape[0], -1)
        return data.reshape(-1, data.shape[-1])

    scaler.fit(to_2d(train))
    return scaler, to_2d


def fit(stub: Any, data: np.ndarray, kind: str = "standard", scaler_id: str = "", **kw: Any) -> Any:
    layout = kw.pop("layout", "")
    return stub.Fit(
        scaler_pb2.FitRequest(
            scaler_id=scaler_id, spec=spec(kind, layout, **kw), data=codec.from_numpy(data)
        ),
        timeout=30,
    )


def transform(
    stub: Any, scaler_id: str, data: np.ndarray, version: int = 0, inverse: bool = False
) -> np.ndarray:
    request = scaler_pb2.TransformRequest(scaler_id=scaler_id, version=version, data=codec.from_numpy(data))
    call = stub.InverseTransform if inverse else stub.Transform
    return codec.to_numpy(call(request, timeout=30).data)


def random_data(shape: tuple[int, ...], seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    # Mixed scales and an offset, so every statistic is non-trivial.
    return rng.normal(size=shape) * np.linspace(1, 1000, shape[-1]) + np.linspace(-50, 50, shape[-1])
