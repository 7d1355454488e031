"""The one numpy <-> proto Tensor codec: dtype + shape + row-major little-endian bytes."""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np

from protos.lstm_stack.v1 import tensor_pb2
from service_common.errors import InvalidArgument

_PROTO_TO_NUMPY: dict[int, np.dtype] = {
    tensor_pb2.FLOAT32: np.dtype("<f4"),
    tensor_pb2.FLOAT64: np.dtype("<f8"),
    tensor_pb2.INT32: np.dtype("<i4"),
    tensor_pb2.INT64: np.dtype("<i8"),
}
_NUMPY_TO_PROTO: dict[str, int] = {dt.str: code for code, dt in _PROTO_TO_NUMPY.items()}
SUPPORTED = ", ".join(tensor_pb2.DType.Name(c) for c in _PROTO_TO_NUMPY)


# No message can carry more elements; bounding the non-zero dimensions also keeps an empty tensor of
# shape (0, 2**62) from overflowing numpy's size arithmetic.
MAX_ELEMENTS = 2**31 - 1


def _check_shape(shape: Sequence[int], name: str) -> tuple[int, ...]:
    if any(d < 0 for d in shape):
        raise InvalidArgument(f"{name}: shape {list(shape)} has a negative dimension")
    if math.prod(d for d in shape if d > 0) > MAX_ELEMENTS:
        raise InvalidArgument(
            f"{name}: shape {list(shape)} is too large; at most {MAX_ELEMENTS} elements (ignoring "
            "zero-length dimensions) are accepted"
        )
    return tuple(int(d) for d in shape)


def to_numpy(tensor: tensor_pb2.Tensor, name: str = "tensor") -> np.ndarray:
    """Decode a Tensor, checking dtype and that the bytes match the shape. Returns native-endian data."""
    # Read the bytes field once: every access copies the whole payload out of the message.
    raw = tensor.raw
    has_raw = len(raw) > 0
    has_values = len(tensor.values) > 0
    if has_raw and has_values:
        raise InvalidArgument(f"{name}: set either raw bytes or values, not both")
    if has_values:
        dtype_code = tensor.dtype or tensor_pb2.FLOAT64
        if dtype_code not in _PROTO_TO_NUMPY:
            raise InvalidArgument(f"{name}: unknown dtype {tensor.dtype}; expected one of {SUPPORTED}")
        values = np.asarray(tensor.values, dtype=np.float64)
        shape = _check_shape(tensor.shape, name) if tensor.shape else (len(values),)
        if math.prod(shape) != len(values):
            raise InvalidArgument(
                f"{name}: shape {list(shape)} holds {math.prod(shape)} values but {len(values)} were sent"
            )
        target = _PROTO_TO_NUMPY[dtype_code]
        if target.kind == "i" and not np.all(np.isfinite(values) & (values == np.round(values))):
            raise InvalidArgument(f"{name}: dtype {tensor_pb2.DType.Name(dtype_code)} needs whole numbers")
        return values.astype(target.newbyteorder("="), copy=False).reshape(shape)
    if tensor.dtype not in _PROTO_TO_NUMPY:
        got = (
            tensor_pb2.DType.Name(tensor.dtype) if tensor.dtype in tensor_pb2.DType.values() else tensor.dtype
        )
        raise InvalidArgument(f"{name}: dtype {got} is not supported; expected one of {SUPPORTED}")
    dtype = _PROTO_TO_NUMPY[tensor.dtype]
    shape = _check_shape(tensor.shape, name)
    if not shape:
        raise InvalidArgument(f"{name}: shape is missing")
    expected = math.prod(shape) * dtype.itemsize
    if len(raw) != expected:
        raise InvalidArgument(
            f"{name}: shape {list(shape)} of {tensor_pb2.DType.Name(tensor.dtype)} needs {expected} bytes, "
            f"got {len(raw)}"
        )
    array = np.frombuffer(raw, dtype=dtype).reshape(shape)
    return array.astype(dtype.newbyteorder("="), copy=False)


def from_numpy(array: np.ndarray) -> tensor_pb2.Tensor:
    """Encode an array as raw little-endian bytes; float16/bool/uint are widened to a supported dtype."""
    array = np.asarray(array)
    if array.dtype.kind == "f" and array.dtype.itemsize < 4:
        array = array.astype(np.float32)
    elif array.dtype.kind in "bu" or (array.dtype.kind == "i" and array.dtype.itemsize < 4):
        array = array.astype(np.int64)
    little = array.astype(array.dtype.newbyteorder("<"), copy=False)
    code = _NUMPY_TO_PROTO.get(little.dtype.str)
    if code is None:
        raise InvalidArgument(f"cannot encode dtype {array.dtype}; supported: {SUPPORTED}")
    return tensor_pb2.Tensor(dtype=code, shape=list(array.shape), raw=np.ascontiguousarray(little).tobytes())


def require_finite(array: np.ndarray, name: str) -> np.ndarray:
    """Reject NaN/inf: fitted and transformed values must be real numbers."""
    if array.dtype.kind == "f" and not np.isfinite(array).all():
        bad = np.argwhere(~np.isfinite(array))[0]
        raise InvalidArgument(
            f"{name}: values must be finite; found {array[tuple(bad)]} at index {bad.tolist()}"
        )
    return array


def to_float_array(tensor: tensor_pb2.Tensor, name: str) -> np.ndarray:
    """Decode a tensor meant to hold real-valued data: any numeric dtype, as float64, finite."""
    return require_finite(to_numpy(tensor, name).astype(np.float64, copy=False), name)


def uses_values(tensor: tensor_pb2.Tensor) -> bool:
    """True when the caller used the JSON-friendly ``values`` form instead of raw bytes."""
    return len(tensor.values) > 0


def from_numpy_values(array: np.ndarray) -> tensor_pb2.Tensor:
    """Encode as FLOAT64 ``values`` + shape: the reply form for callers that sent ``values`` (grpcurl)."""
    array = np.asarray(array, dtype=np.float64)
    return tensor_pb2.Tensor(dtype=tensor_pb2.FLOAT64, shape=list(array.shape), values=array.ravel().tolist())
