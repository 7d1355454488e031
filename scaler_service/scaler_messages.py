"""Proto <-> domain conversions for the scaler service (specs, infos, tensors)."""

from __future__ import annotations

import dataclasses
from typing import Any

import numpy as np
from google.protobuf.message import Message

from protos.lstm_stack.v1 import scaler_pb2, tensor_pb2
from scaler_service.scaler_registry import ScalerVersion
from scaler_service.sklearn_scalers import Kind, Layout, ScalerSpec, make_spec
from service_common import codec
from service_common.errors import InvalidArgument, ResourceExhausted

KIND_FROM_PROTO: dict[scaler_pb2.ScalerKind.ValueType, Kind] = {
    scaler_pb2.MINMAX: Kind.MINMAX,
    scaler_pb2.STANDARD: Kind.STANDARD,
    scaler_pb2.ROBUST: Kind.ROBUST,
    scaler_pb2.MAXABS: Kind.MAXABS,
}
KIND_TO_PROTO = {kind: code for code, kind in KIND_FROM_PROTO.items()}
LAYOUT_FROM_PROTO: dict[int, Layout] = {
    scaler_pb2.LAYOUT_UNSPECIFIED: Layout.PER_FEATURE,
    scaler_pb2.PER_FEATURE: Layout.PER_FEATURE,
    scaler_pb2.PER_COLUMN: Layout.PER_COLUMN,
}
LAYOUT_TO_PROTO = {Layout.PER_FEATURE: scaler_pb2.PER_FEATURE, Layout.PER_COLUMN: scaler_pb2.PER_COLUMN}
PARAMS_MESSAGE = {
    Kind.MINMAX: scaler_pb2.MinMaxParams,
    Kind.STANDARD: scaler_pb2.StandardParams,
    Kind.ROBUST: scaler_pb2.RobustParams,
    Kind.MAXABS: scaler_pb2.MaxAbsParams,
}
KIND_NAMES = ", ".join(scaler_pb2.ScalerKind.Name(code) for code in KIND_FROM_PROTO)
# Room for everything in a reply besides the tensors' bytes.
REPLY_OVERHEAD_BYTES = 64 * 1024


def _enum_name(enum: Any, value: int) -> str:
    return enum.Name(value) if value in enum.values() else str(value)


def spec_from_proto(spec: scaler_pb2.ScalerSpec) -> ScalerSpec:
    if spec.kind == scaler_pb2.SCALER_KIND_UNSPECIFIED:
        raise InvalidArgument(f"spec.kind is required; expected one of {KIND_NAMES}")
    if spec.kind not in KIND_FROM_PROTO:
        raise InvalidArgument(f"spec.kind {spec.kind} is not known; expected one of {KIND_NAMES}")
    if spec.layout not in LAYOUT_FROM_PROTO:
        raise InvalidArgument(
            f"spec.layout {_enum_name(scaler_pb2.Layout, spec.layout)} is not known; "
            "expected PER_FEATURE or PER_COLUMN"
        )
    kind = KIND_FROM_PROTO[spec.kind]
    params: dict[str, Any] = {}
    which = spec.WhichOneof("params")
    if which is not None:
        if which != kind.value:
            raise InvalidArgument(
                f"spec.kind {scaler_pb2.ScalerKind.Name(spec.kind)} takes spec.{kind.value} parameters, "
                f"got spec.{which}"
            )
        # Only fields the caller set: unset optional ones take the documented defaults.
        params = {field.name: value for field, value in getattr(spec, which).ListFields()}
    return make_spec(kind.value, LAYOUT_FROM_PROTO[spec.layout].value, params)


def spec_to_proto(spec: ScalerSpec) -> scaler_pb2.ScalerSpec:
    params: Message = PARAMS_MESSAGE[spec.kind](**dataclasses.asdict(spec.params))
    message = scaler_pb2.ScalerSpec(kind=KIND_TO_PROTO[spec.kind], layout=LAYOUT_TO_PROTO[spec.layout])
    getattr(message, spec.kind.value).CopyFrom(params)
    return message


def info_to_proto(record: ScalerVersion) -> scaler_pb2.ScalerInfo:
    fitted = record.fitted
    scale, offset = fitted.affine()
    return scaler_pb2.ScalerInfo(
        id=record.scaler_id,
        version=record.version,
        spec=spec_to_proto(fitted.spec),
        layout=LAYOUT_TO_PROTO[fitted.spec.layout],
        sample_shape=list(fitted.sample_shape),
        n_columns=fitted.n_columns,
        n_samples_seen=fitted.n_samples_seen,
        statistics=scaler_pb2.FittedStatistics(**fitted.statistics().values),
        affine=scaler_pb2.AffineForm(scale=scale.tolist(), offset=offset.tolist()),
        fingerprint=fitted.fingerprint,
        created_at=record.created_at_text,
    )


def decode_data(message: Message, field: str, name: str | None = None) -> np.ndarray:
    """A required tensor field as finite float64 data."""
    label = name or field
    if not message.HasField(field):
        raise InvalidArgument(f"{label} is missing: expected a tensor of shape (samples, features[, ...])")
    return codec.to_float_array(getattr(message, field), label)


def reply_dtype(request_tensor: tensor_pb2.Tensor) -> type[np.floating]:
    """FLOAT32 in, FLOAT32 out (as scikit-learn does); anything else comes back FLOAT64."""
    if not codec.uses_values(request_tensor) and request_tensor.dtype == tensor_pb2.FLOAT32:
        return np.float32
    return np.float64


def check_reply_size(arrays: list[tuple[np.ndarray, type[np.floating]]], limit: int) -> None:
    """Refuse, before anything is stored or encoded, a reply that would not fit the message limit or
    whose values its dtype cannot hold (FLOAT32 in, FLOAT32 out: a transform can leave float32's range)."""
    for array, dtype in arrays:
        codec.require_representable(
            array,
            dtype,
            "the result (send FLOAT64 data for float64's range)",
            "FLOAT32, the request's dtype,",
        )
    needed = sum(array.size * np.dtype(dtype).itemsize for array, dtype in arrays) + REPLY_OVERHEAD_BYTES
    if needed > limit:
        raise ResourceExhausted(
            f"the reply would need about {needed} bytes, above the max message size of {limit} bytes; "
            "send fewer rows per call (or raise --max-message-mb)"
        )


def encode_like(array: np.ndarray, request_tensor: tensor_pb2.Tensor) -> tensor_pb2.Tensor:
    """Reply in the form the caller used: ``values`` for JSON callers, raw bytes otherwise."""
    if codec.uses_values(request_tensor):
        return codec.from_numpy_values(array)
    return codec.from_numpy(array.astype(reply_dtype(request_tensor), copy=False))
