"""The one tensor codec: round trips, the JSON values form, and every malformed tensor refused precisely."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from protos.lstm_stack.v1 import tensor_pb2
from service_common import codec
from service_common.errors import InvalidArgument

WIRE_DTYPES = [np.float32, np.float64, np.int32, np.int64]


@pytest.mark.parametrize("dtype", WIRE_DTYPES)
def test_round_trip_keeps_dtype_shape_and_values(dtype: type) -> None:
    array = (np.arange(24).reshape(2, 3, 4) - 7).astype(dtype)
    tensor = codec.from_numpy(array)
    assert len(tensor.raw) == array.nbytes and list(tensor.shape) == [2, 3, 4] and not tensor.values
    back = codec.to_numpy(tensor)
    assert back.dtype == array.dtype
    np.testing.assert_array_equal(back, array)


@settings(max_examples=50, deadline=None)
@given(
    hnp.arrays(st.sampled_from(WIRE_DTYPES), hnp.array_shapes(min_dims=1, max_dims=4, min_side=0, max_side=5))
)
def test_round_trip_property(array: np.ndarray) -> None:
    back = codec.to_numpy(codec.from_numpy(array))
    assert back.shape == array.shape and back.dtype == array.dtype
    np.testing.assert_array_equal(back, array)


def test_wire_bytes_are_little_endian_row_major() -> None:
    tensor = codec.from_numpy(np.array([[1, 2], [3, 4]], dtype=">i4")[:, ::-1])  # big-endian, non-contiguous
    assert tensor.dtype == tensor_pb2.INT32
    assert tensor.raw == np.array([2, 1, 4, 3], dtype="<i4").tobytes()
    np.testing.assert_array_equal(codec.to_numpy(tensor), [[2, 1], [4, 3]])


def test_narrow_types_are_widened() -> None:
    assert codec.from_numpy(np.ones(2, dtype=np.float16)).dtype == tensor_pb2.FLOAT32
    assert codec.from_numpy(np.ones(2, dtype=bool)).dtype == tensor_pb2.INT64
    assert codec.from_numpy(np.ones(2, dtype=np.uint8)).dtype == tensor_pb2.INT64
    with pytest.raises(InvalidArgument, match="cannot encode dtype complex128"):
        codec.from_numpy(np.ones(2, dtype=complex))


def test_values_form_for_json_callers() -> None:
    flat = codec.to_numpy(tensor_pb2.Tensor(values=[1.5, 2.5, 3.5]))
    assert flat.dtype == np.float64 and flat.shape == (3,)
    shaped = codec.to_numpy(tensor_pb2.Tensor(shape=[2, 2], values=[1, 2, 3, 4], dtype=tensor_pb2.INT32))
    assert shaped.dtype == np.int32 and shaped.tolist() == [[1, 2], [3, 4]]
    assert codec.uses_values(tensor_pb2.Tensor(values=[1.0])) and not codec.uses_values(
        codec.from_numpy(flat)
    )
    reply = codec.from_numpy_values(np.array([[1, 2]], dtype=np.int32))
    assert (reply.dtype, list(reply.shape), list(reply.values), reply.raw) == (
        tensor_pb2.FLOAT64,
        [1, 2],
        [1, 2],
        b"",
    )


@pytest.mark.parametrize(
    ("tensor", "message"),
    [
        (tensor_pb2.Tensor(shape=[2], raw=bytes(16)), "t: dtype DTYPE_UNSPECIFIED is not supported; expected one of FLOAT32, FLOAT64, INT32, INT64"),
        (tensor_pb2.Tensor(dtype=9, shape=[2], raw=bytes(16)), "t: dtype 9 is not supported"),
        (tensor_pb2.Tensor(dtype=tensor_pb2.FLOAT64, shape=[2, 3], raw=bytes(40)), "t: shape [2, 3] of FLOAT64 needs 48 bytes, got 40"),
        (tensor_pb2.Tensor(dtype=tensor_pb2.INT32, shape=[3], raw=bytes(16)), "needs 12 bytes, got 16"),
        (tensor_pb2.Tensor(dtype=tensor_pb2.FLOAT64, raw=bytes(8)), "t: shape is missing"),
        (tensor_pb2.Tensor(dtype=tensor_pb2.FLOAT64, shape=[2, -1], raw=bytes(8)), "shape [2, -1] has a negative dimension"),
        (tensor_pb2.Tensor(dtype=tensor_pb2.FLOAT64, shape=[1], raw=bytes(8), values=[1.0]), "set either raw bytes or values, not both"),
        (tensor_pb2.Tensor(shape=[2, 2], values=[1.0]), "shape [2, 2] holds 4 values but 1 were sent"),
        (tensor_pb2.Tensor(dtype=tensor_pb2.INT64, values=[1.5]), "dtype INT64 needs whole numbers"),
        (tensor_pb2.Tensor(dtype=12, values=[1.0]), "unknown dtype 12"),
    ],
)  # fmt: skip
def test_malformed_tensors_are_refused(tensor: tensor_pb2.Tensor, message: str) -> None:
    with pytest.raises(InvalidArgument) as excinfo:
        codec.to_numpy(tensor, "t")
    assert message in str(excinfo.value)


def test_to_float_array_requires_finite_values() -> None:
    data = np.array([[1.0, 2.0], [np.inf, 4.0]])
    with pytest.raises(InvalidArgument, match=r"x: values must be finite; found inf at index \[1, 0\]"):
        codec.to_float_array(codec.from_numpy(data), "x")
    with pytest.raises(InvalidArgument, match="found nan"):
        codec.to_float_array(tensor_pb2.Tensor(values=[1.0, float("nan")]), "x")
    ints = codec.to_float_array(codec.from_numpy(np.array([1, 2], dtype=np.int32)), "x")
    assert ints.dtype == np.float64 and ints.tolist() == [1.0, 2.0]
    # Integers cannot hold NaN, so require_finite passes them through untouched.
    assert codec.require_finite(np.array([1, 2]), "x").tolist() == [1, 2]
