"""Open Inference Protocol tensors <-> numpy.

Separate from service_common.codec because the wire format is the protocol's: a datatype string
("FP32"), an int64 shape, and the data either as one ``raw_input_contents`` entry (row-major,
little-endian) or in the typed ``contents`` field matching the datatype. Outputs are always raw, because
the reference Python client reads only ``raw_output_contents``.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import numpy as np

from service_common.codec import MAX_RANK
from service_common.errors import InvalidArgument, echo

# Numeric datatypes of the protocol -> little-endian numpy dtype. BYTES and BF16 have no numpy equivalent
# we could serve, so they are rejected with the list below.
NUMPY_DTYPES: dict[str, np.dtype] = {
    "BOOL": np.dtype("?"),
    "UINT8": np.dtype("u1"),
    "UINT16": np.dtype("<u2"),
    "UINT32": np.dtype("<u4"),
    "UINT64": np.dtype("<u8"),
    "INT8": np.dtype("i1"),
    "INT16": np.dtype("<i2"),
    "INT32": np.dtype("<i4"),
    "INT64": np.dtype("<i8"),
    "FP16": np.dtype("<f2"),
    "FP32": np.dtype("<f4"),
    "FP64": np.dtype("<f8"),
}
DATATYPES_BY_NUMPY: dict[str, str] = {dt.str: name for name, dt in NUMPY_DTYPES.items()}

# Protocol datatype -> name of Triton's model-configuration DataType (TYPE_<datatype>, but BYTES is
# TYPE_STRING), for ModelConfig.
CONFIG_DATATYPES: dict[str, str] = {
    **{name: f"TYPE_{name}" for name in (*NUMPY_DTYPES, "BF16")},
    "BYTES": "TYPE_STRING",
}

# Which InferTensorContents field carries each datatype (FP16 has none: raw only, as in the spec).
CONTENTS_FIELDS: dict[str, str] = {
    "BOOL": "bool_contents",
    "UINT8": "uint_contents",
    "UINT16": "uint_contents",
    "UINT32": "uint_contents",
    "UINT64": "uint64_contents",
    "INT8": "int_contents",
    "INT16": "int_contents",
    "INT32": "int_contents",
    "INT64": "int64_contents",
    "FP32": "fp32_contents",
    "FP64": "fp64_contents",
}
_ALL_CONTENTS_FIELDS = (
    "bool_contents",
    "int_contents",
    "int64_contents",
    "uint_contents",
    "uint64_contents",
    "fp32_contents",
    "fp64_contents",
    "bytes_contents",
)


def check_shape(shape: Sequence[int], name: str) -> tuple[int, ...]:
    if len(shape) > MAX_RANK:  # before numpy (64 at most) or a message sees it
        raise InvalidArgument(
            f"input {echo(name)}: shape {echo(shape)} has {len(shape)} dimensions; at most {MAX_RANK} "
            "are accepted"
        )
    dims = tuple(int(d) for d in shape)
    if not dims:
        raise InvalidArgument(f"input {echo(name)}: shape is missing")
    if any(d < 0 for d in dims):
        raise InvalidArgument(f"input {echo(name)}: shape {list(dims)} has a negative dimension")
    return dims


def dtype_of(datatype: str, name: str, allowed: Sequence[str] | None = None) -> np.dtype:
    accepted = list(allowed) if allowed is not None else list(NUMPY_DTYPES)
    if datatype not in accepted or datatype not in NUMPY_DTYPES:
        raise InvalidArgument(
            f"input {echo(name)}: datatype {echo(datatype, quote=False) if datatype else '(empty)'} is not "
            "supported; expected one of "
            f"{', '.join(accepted)}"
        )
    return NUMPY_DTYPES[datatype]


def decode_raw(raw: bytes, datatype: str, shape: Sequence[int], name: str) -> np.ndarray:
    """One raw_input_contents entry -> array (read-only view on the bytes, native byte order)."""
    dtype = dtype_of(datatype, name)
    dims = check_shape(shape, name)
    expected = math.prod(dims) * dtype.itemsize
    if len(raw) != expected:
        raise InvalidArgument(
            f"input {echo(name)}: shape {list(dims)} of {datatype} needs {expected} bytes, got {len(raw)}"
        )
    array = np.frombuffer(raw, dtype=dtype).reshape(dims)
    return array.astype(dtype.newbyteorder("="), copy=False)


def decode_contents(contents: Any, datatype: str, shape: Sequence[int], name: str) -> np.ndarray:
    """Typed InferTensorContents -> array; only the field matching the datatype may be set."""
    dtype = dtype_of(datatype, name)
    dims = check_shape(shape, name)
    field = CONTENTS_FIELDS.get(datatype)
    if field is None:
        raise InvalidArgument(
            f"input {echo(name)}: datatype {datatype} can only be sent in raw_input_contents"
        )
    stray = [f for f in _ALL_CONTENTS_FIELDS if f != field and len(getattr(contents, f))]
    if stray:
        raise InvalidArgument(
            f"input {echo(name)}: datatype {datatype} expects {field}, got {', '.join(stray)}"
        )
    values = getattr(contents, field)
    expected = math.prod(dims)
    if len(values) != expected:
        raise InvalidArgument(
            f"input {echo(name)}: shape {list(dims)} holds {expected} elements, got {len(values)} in {field}"
        )
    if dtype.kind in "iu":
        info = np.iinfo(dtype)
        if expected and (min(values) < info.min or max(values) > info.max):
            raise InvalidArgument(f"input {echo(name)}: a value in {field} is out of range for {datatype}")
    return np.asarray(values, dtype=dtype.newbyteorder("=")).reshape(dims)


def encode_raw(array: np.ndarray) -> tuple[str, list[int], bytes]:
    """Array -> (datatype, shape, little-endian row-major bytes) for raw_output_contents."""
    little = np.ascontiguousarray(array, dtype=array.dtype.newbyteorder("<"))
    datatype = DATATYPES_BY_NUMPY.get(little.dtype.str)
    if datatype is None:
        raise InvalidArgument(f"cannot encode dtype {array.dtype} as a protocol datatype")
    return datatype, list(little.shape), little.tobytes()
