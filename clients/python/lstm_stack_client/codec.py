"""The one numpy <-> proto Tensor codec: dtype + shape + row-major little-endian bytes.

The client and both services use this module (service_common.codec re-exports it), so what the client
sends and what the services read are decoded by the same code.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np

from protos.lstm_stack.v1 import tensor_pb2

from .errors import InvalidArgument, echo

_PROTO_TO_NUMPY: dict[tensor_pb2.DType.ValueType, np.dtype] = {
    tensor_pb2.FLOAT32: np.dtype("<f4"),
    tensor_pb2.FLOAT64: np.dtype("<f8"),
    tensor_pb2.INT32: np.dtype("<i4"),
    tensor_pb2.INT64: np.dtype("<i8"),
}
_NUMPY_TO_PROTO: dict[str, tensor_pb2.DType.ValueType] = {
    dt.str: code for code, dt in _PROTO_TO_NUMPY.items()
}
SUPPORTED = ", ".join(tensor_pb2.DType.Name(c) for c in _PROTO_TO_NUMPY)


# No message can carry more elements; bounding the non-zero dimensions also keeps an empty tensor of
# shape (0, 2**62) from overflowing numpy's size arithmetic.
MAX_ELEMENTS = 2**31 - 1
# Every tensor field of both services has 1 to 3 dimensions, and the services refuse other shapes with
# messages naming the one they expect. This bound comes first, for what they never get to see: numpy
# refuses arrays of more than 64 dimensions with an error of its own, and messages repeat shapes.
MAX_RANK = 8


def _check_shape(shape: Sequence[int], name: str) -> tuple[int, ...]:
    # The rank first: every later message repeats the shape.
    if len(shape) > MAX_RANK:
        raise InvalidArgument(
            f"{name}: shape {echo(shape)} has {len(shape)} dimensions; at most {MAX_RANK} are accepted "
            "(every tensor of this API has 1 to 3)"
        )
    if any(d < 0 for d in shape):
        raise InvalidArgument(f"{name}: shape {list(shape)} has a negative dimension")
    if math.prod(d for d in shape if d > 0) > MAX_ELEMENTS:
        raise InvalidArgument(
            f"{name}: shape {list(shape)} is too large; at most {MAX_ELEMENTS} elements (ignoring "
            "zero-length dimensions) are accepted"
        )
    return tuple(int(d) for d in shape)


def require_representable(
    array: np.ndarray, dtype: np.dtype | type, name: str, dtype_name: str = ""
) -> np.ndarray:
    """Refuse values ``dtype`` cannot hold, before anything narrows them to it: for a float dtype,
    finite numbers beyond its range (float64 1e300 would become inf in float32); for an integer dtype,
    anything but whole numbers within its range (3e9 would wrap around in int32). NaN and inf are left
    to require_finite when the target is a float. ``dtype_name`` names the dtype in the message."""
    target = np.dtype(dtype)
    if array.size == 0 or array.dtype.kind not in "fiu":
        return array
    label = dtype_name or target.name
    if target.kind == "f":
        if array.dtype.kind != "f" or array.dtype.itemsize <= target.itemsize:
            return array  # a narrower or equal float, or an integer: within range (rounded, as floats are)
        limit = float(np.finfo(target).max)
        with np.errstate(invalid="ignore"):
            ok = ~np.isfinite(array) | (np.abs(array) <= limit)
        expected = f"holds only values within ±{limit:.4g}"
    else:
        info = np.iinfo(target)
        if array.dtype.kind in "iu":
            if np.can_cast(array.dtype, target):
                return array
            ok = (array >= info.min) & (array <= info.max)
        else:
            # float(info.max) of int64 rounds up to 2**63, so the bound is "below max + 1"; NaN fails both.
            with np.errstate(invalid="ignore"):
                ok = (array >= float(info.min)) & (array < float(info.max) + 1) & (array == np.floor(array))
        expected = f"needs whole numbers in {info.min}..{info.max}"
    if ok.all():
        return array
    index = [int(i) for i in np.argwhere(~ok)[0]]
    raise InvalidArgument(f"{name}: {label} {expected}; found {array[tuple(index)]!s} at index {index}")


def to_numpy(tensor: tensor_pb2.Tensor, name: str = "tensor") -> np.ndarray:
    """Decode a Tensor, checking dtype, rank (at most MAX_RANK) and that the bytes match the shape.
    Returns native-endian data."""
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
        shape = _check_shape(tensor.shape, name) if tensor.shape else (len(tensor.values),)
        values = np.asarray(tensor.values, dtype=np.float64)
        if math.prod(shape) != len(values):
            raise InvalidArgument(
                f"{name}: shape {list(shape)} holds {math.prod(shape)} values but {len(values)} were sent"
            )
        target = _PROTO_TO_NUMPY[dtype_code]
        values = values.reshape(shape)
        # Before astype, which would wrap integers around and turn big floats into inf.
        require_representable(values, target, name, f"dtype {tensor_pb2.DType.Name(dtype_code)}")
        return values.astype(target.newbyteorder("="), copy=False)
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
