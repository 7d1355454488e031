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


@pytest.mark.parametrize("rank", [codec.MAX_RANK + 1, 65, 1000])
@pytest.mark.parametrize("form", ["raw", "values"])
def test_tensors_of_more_dimensions_than_any_field_needs_are_refused_before_numpy(
    rank: int, form: str
) -> None:
    # numpy's own limit (64) would surface as "maximum supported dimension" and an INTERNAL status.
    if form == "raw":
        tensor = tensor_pb2.Tensor(dtype=tensor_pb2.FLOAT64, shape=[1] * rank, raw=bytes(8))
    else:
        tensor = tensor_pb2.Tensor(shape=[1] * rank, values=[1.0])
    with pytest.raises(InvalidArgument) as excinfo:
        codec.to_numpy(tensor, "x")
    message = str(excinfo.value)
    assert f"has {rank} dimensions; at most {codec.MAX_RANK} are accepted" in message
    assert len(message) < 300, message


def test_the_largest_accepted_rank_decodes() -> None:
    shape = [1] * codec.MAX_RANK
    decoded = codec.to_numpy(tensor_pb2.Tensor(dtype=tensor_pb2.FLOAT32, shape=shape, raw=bytes(4)))
    assert decoded.ndim == len(shape)


@pytest.mark.parametrize(
    ("dtype", "value"),
    [
        (tensor_pb2.INT32, 3e9),
        (tensor_pb2.INT32, -(2.0**31) - 1),
        (tensor_pb2.INT32, 2.0**31),
        (tensor_pb2.INT64, 2.0**63),  # float(2**63 - 1) rounds up to this
        (tensor_pb2.INT64, -1e19),
        (tensor_pb2.INT64, float("inf")),
        (tensor_pb2.INT32, float("nan")),
    ],
)
def test_integer_values_outside_their_dtype_are_refused_not_wrapped(dtype: int, value: float) -> None:
    tensor = tensor_pb2.Tensor(dtype=dtype, shape=[2], values=[1.0, value])
    name = tensor_pb2.DType.Name(dtype)
    with pytest.raises(
        InvalidArgument, match=rf"x: dtype {name} needs whole numbers in .*; found .* at index \[1\]"
    ):
        codec.to_numpy(tensor, "x")


def test_integer_values_at_their_dtype_bounds_are_kept_exactly() -> None:
    low, high = -(2**31), 2**31 - 1
    got = codec.to_numpy(tensor_pb2.Tensor(dtype=tensor_pb2.INT32, values=[low, high]), "x")
    assert got.dtype == np.int32 and got.tolist() == [low, high]
    got = codec.to_numpy(tensor_pb2.Tensor(dtype=tensor_pb2.INT64, values=[-(2.0**63), 2.0**62]), "x")
    assert got.tolist() == [-(2**63), 2**62]


def test_float32_values_beyond_its_range_are_refused_not_turned_into_inf() -> None:
    with pytest.raises(
        InvalidArgument, match=r"x: dtype FLOAT32 holds only values within ±3\.403e\+38; found 1e\+300"
    ):
        codec.to_numpy(tensor_pb2.Tensor(dtype=tensor_pb2.FLOAT32, values=[1.0, 1e300]), "x")
    edge = codec.to_numpy(tensor_pb2.Tensor(dtype=tensor_pb2.FLOAT32, values=[3.4e38, -3.4e38]), "x")
    assert np.isfinite(edge).all()
    # NaN and inf are for require_finite, which names them as such.
    with pytest.raises(InvalidArgument, match="values must be finite; found inf"):
        codec.to_float_array(tensor_pb2.Tensor(dtype=tensor_pb2.FLOAT32, values=[np.inf]), "x")


@pytest.mark.parametrize(
    ("array", "dtype", "fragment"),
    [
        (np.array([[1.0, 1e300]]), np.float32, "found 1e+300 at index [0, 1]"),
        (np.array([3e9]), np.int32, "found 3000000000.0 at index [0]"),
        (np.array([0.5]), np.int64, "needs whole numbers"),
        (np.array([2**40], dtype=np.int64), np.int32, "found 1099511627776 at index [0]"),
    ],
)
def test_require_representable_refuses_before_a_narrowing(
    array: np.ndarray, dtype: type, fragment: str
) -> None:
    with pytest.raises(InvalidArgument) as excinfo:
        codec.require_representable(array, dtype, "x")
    assert fragment in str(excinfo.value)


def test_require_representable_passes_what_fits() -> None:
    for array, dtype in [
        (np.array([3.4e38, np.nan]), np.float32),  # NaN is require_finite's business
        (np.array([1e300]), np.float64),
        (np.array([2**62], dtype=np.int64), np.float32),
        (np.array([7.0, -2.0]), np.int32),
        (np.array([], dtype=np.float64), np.int32),
    ]:
        assert codec.require_representable(array, dtype, "x") is array


@settings(max_examples=200, deadline=None)
@given(
    dtype=st.sampled_from([tensor_pb2.INT32, tensor_pb2.INT64, tensor_pb2.FLOAT32]),
    values=st.lists(
        st.one_of(st.floats(allow_nan=False, allow_infinity=False), st.integers(-(2**64), 2**64).map(float)),
        min_size=1,
        max_size=8,
    ),
)
def test_values_are_decoded_exactly_or_refused(dtype: int, values: list[float]) -> None:
    """Never wrapped around, rounded to an integer or turned into inf on the way in."""
    tensor = tensor_pb2.Tensor(dtype=dtype, values=values)
    try:
        decoded = codec.to_numpy(tensor, "x")
    except InvalidArgument:
        return
    if dtype == tensor_pb2.FLOAT32:
        assert np.isfinite(decoded).all()
        np.testing.assert_allclose(decoded, np.float32(values), rtol=1e-7)
    else:
        assert [int(v) for v in decoded] == [int(v) for v in values] and all(v == int(v) for v in values)
