"""Each bad input gets its precise status and a message naming expected vs received; the server keeps serving."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import grpc
import numpy as np
import pytest

from protos.lstm_stack.v1 import scaler_pb2, tensor_pb2
from service_common import codec
from tests.scaler_service.harness import ScalerServerHandle, running_scaler_server
from tests.scaler_service.helpers import fit, random_data, spec

INVALID = grpc.StatusCode.INVALID_ARGUMENT
GOOD = codec.from_numpy(np.arange(12.0).reshape(4, 3))


def _raw(dtype: int, shape: list[int], raw: bytes) -> tensor_pb2.Tensor:
    return tensor_pb2.Tensor(dtype=dtype, shape=shape, raw=raw)


def _with_value(value: float) -> tensor_pb2.Tensor:
    data = np.arange(12.0).reshape(4, 3)
    data[1, 2] = value
    return codec.from_numpy(data)


def _fit(data: tensor_pb2.Tensor | None = None, **spec_fields: Any) -> scaler_pb2.FitRequest:
    request = scaler_pb2.FitRequest(
        spec=scaler_pb2.ScalerSpec(**(spec_fields or {"kind": scaler_pb2.STANDARD}))
    )
    if data is not None:
        request.data.CopyFrom(data)
    return request


FIT_CASES = [
    ("dtype unspecified", _fit(_raw(0, [4, 3], bytes(96))), "dtype DTYPE_UNSPECIFIED is not supported; expected one of FLOAT32, FLOAT64, INT32, INT64"),
    ("dtype unknown", _fit(_raw(77, [4, 3], bytes(96))), "dtype 77 is not supported"),
    ("byte length", _fit(_raw(tensor_pb2.FLOAT64, [4, 3], bytes(80))), "shape [4, 3] of FLOAT64 needs 96 bytes, got 80"),
    ("shape missing", _fit(_raw(tensor_pb2.FLOAT64, [], bytes(8))), "data: shape is missing"),
    ("negative dim", _fit(_raw(tensor_pb2.FLOAT64, [-1, 3], b"")), "negative dimension"),
    ("raw and values", _fit(tensor_pb2.Tensor(dtype=1, shape=[1], raw=bytes(4), values=[1.0])), "not both"),
    ("values count", _fit(tensor_pb2.Tensor(shape=[2, 2], values=[1.0, 2.0, 3.0])), "shape [2, 2] holds 4 values but 3 were sent"),
    ("nan", _fit(_with_value(float("nan"))), "data: values must be finite; found nan at index [1, 2]"),
    ("inf", _fit(_with_value(float("-inf"))), "found -inf at index [1, 2]"),
    ("data missing", _fit(None), "data is missing: expected a tensor of shape (samples, features[, ...])"),
    ("no samples", _fit(codec.from_numpy(np.zeros((0, 3)))), "data: standard needs at least 1 sample to fit, got 0"),
    ("zero features", _fit(codec.from_numpy(np.zeros((5, 0)))), "each sample needs at least one feature, got sample shape [0]"),
    ("1-D", _fit(codec.from_numpy(np.zeros(5))), "got 1-D shape [5]"),
    ("4-D", _fit(codec.from_numpy(np.zeros((2, 2, 2, 2)))), "got 4-D shape [2, 2, 2, 2]"),
    ("kind missing", _fit(GOOD, kind=0), "spec.kind is required; expected one of MINMAX, STANDARD, ROBUST, MAXABS"),
    ("kind unknown", _fit(GOOD, kind=42), "spec.kind 42 is not known"),
    ("layout unknown", _fit(GOOD, kind=scaler_pb2.MINMAX, layout=9), "spec.layout 9 is not known"),
    ("params of another kind", _fit(GOOD, kind=scaler_pb2.MINMAX, robust=scaler_pb2.RobustParams()), "spec.kind MINMAX takes spec.minmax parameters, got spec.robust"),
    ("feature_range", _fit(GOOD, kind=scaler_pb2.MINMAX, minmax=scaler_pb2.MinMaxParams(feature_min=2, feature_max=1)), "feature_min < feature_max, got (2, 1)"),
    ("feature_range equal", _fit(GOOD, kind=scaler_pb2.MINMAX, minmax=scaler_pb2.MinMaxParams(feature_max=0)), "got (0, 0)"),
    ("quantile order", _fit(GOOD, kind=scaler_pb2.ROBUST, robust=scaler_pb2.RobustParams(quantile_min=75, quantile_max=25)), "quantile_min < quantile_max, got (75, 25)"),
    ("quantile range", _fit(GOOD, kind=scaler_pb2.ROBUST, robust=scaler_pb2.RobustParams(quantile_max=150)), "percentiles within [0, 100], got (25, 150)"),
    ("int32 wraps", _fit(tensor_pb2.Tensor(dtype=tensor_pb2.INT32, shape=[2, 2], values=[1, 2, 3, 3e9])), "data: dtype INT32 needs whole numbers in -2147483648..2147483647; found 3000000000.0 at index [1, 1]"),
    ("65 dims", _fit(_raw(tensor_pb2.FLOAT64, [1] * 65, bytes(8))), "data: shape [1, 1, "),
    ("range overflows", _fit(codec.from_numpy(np.array([[-1e308], [1e308]]))), "data: the fitted var of column 0 is inf"),
    ("range overflows minmax", _fit(codec.from_numpy(np.array([[-1e308], [1e308]])), kind=scaler_pb2.MINMAX), "the fitted data_range of column 0 is inf"),
]  # fmt: skip


@pytest.mark.parametrize(("request_", "message"), [c[1:] for c in FIT_CASES], ids=[c[0] for c in FIT_CASES])
def test_bad_fit_input(
    scaler_server: ScalerServerHandle, request_: scaler_pb2.FitRequest, message: str
) -> None:
    _expect(lambda: scaler_server.stub.Fit(request_, timeout=10), INVALID, message)
    _still_serving(scaler_server)
    assert not scaler_server.stub.ListScalers(scaler_pb2.ListScalersRequest()).scalers, "nothing was stored"


def test_bad_scaler_id(scaler_server: ScalerServerHandle) -> None:
    request = _fit(GOOD)
    request.scaler_id = "../escape"
    _expect(lambda: scaler_server.stub.Fit(request), INVALID, "scaler id '../escape' is not valid")
    _still_serving(scaler_server)


@pytest.fixture
def fitted(scaler_server: ScalerServerHandle) -> scaler_pb2.ScalerInfo:
    return fit(scaler_server.stub, np.arange(12.0).reshape(4, 3), "minmax", scaler_id="fitted")


def _transform(scaler_id: str = "fitted", version: int = 0, data: Any = GOOD) -> scaler_pb2.TransformRequest:
    return scaler_pb2.TransformRequest(scaler_id=scaler_id, version=version, data=data)


TRANSFORM_CASES = [
    ("unknown id", _transform("nobody"), grpc.StatusCode.NOT_FOUND, "scaler 'nobody' not found"),
    ("unknown version", _transform(version=7), grpc.StatusCode.NOT_FOUND, "scaler 'fitted' has no version 7; it has versions 1"),
    ("id missing", _transform(""), INVALID, "scaler_id is required"),
    ("feature count", _transform(data=codec.from_numpy(np.zeros((2, 4)))), INVALID, "data: expected samples of shape [3] (3 features) as fitted, got data of shape [2, 4]"),
    ("3-D into 2-D fit", _transform(data=codec.from_numpy(np.zeros((2, 1, 3)))), INVALID, "got data of shape [2, 1, 3]"),
    ("nan", _transform(data=_with_value(float("nan"))), INVALID, "values must be finite"),
    ("byte length", _transform(data=_raw(tensor_pb2.FLOAT32, [4, 3], bytes(96))), INVALID, "needs 48 bytes, got 96"),
    ("data missing", scaler_pb2.TransformRequest(scaler_id="fitted"), INVALID, "data is missing"),
]  # fmt: skip


@pytest.mark.parametrize("inverse", [False, True], ids=["transform", "inverse"])
@pytest.mark.parametrize(
    ("request_", "code", "message"), [c[1:] for c in TRANSFORM_CASES], ids=[c[0] for c in TRANSFORM_CASES]
)
def test_bad_transform_input(
    scaler_server: ScalerServerHandle,
    fitted: scaler_pb2.ScalerInfo,
    request_: scaler_pb2.TransformRequest,
    code: grpc.StatusCode,
    message: str,
    inverse: bool,
) -> None:
    call = scaler_server.stub.InverseTransform if inverse else scaler_server.stub.Transform
    _expect(lambda: call(request_, timeout=10), code, message)
    _still_serving(scaler_server)


def test_results_beyond_the_reply_dtype_are_refused_not_sent_as_inf(
    scaler_server: ScalerServerHandle,
) -> None:
    # Fitted on [0, 1] to the range [0, 1e10]: a FLOAT32 3e30 lands beyond float32, a FLOAT64 1e300 beyond float64.
    wide = scaler_pb2.ScalerSpec(kind=scaler_pb2.MINMAX, minmax=scaler_pb2.MinMaxParams(feature_max=1e10))
    request = scaler_pb2.FitRequest(
        scaler_id="stretch", spec=wide, data=codec.from_numpy(np.array([[0.0], [1.0]]))
    )
    scaler_server.stub.Fit(request, timeout=10)
    as_float32 = codec.from_numpy(np.array([[0.5], [3e30]], dtype=np.float32))
    _expect(
        lambda: scaler_server.stub.Transform(_transform("stretch", data=as_float32), timeout=10),
        INVALID,
        "the result (send FLOAT64 data for float64's range): FLOAT32, the request's dtype, holds only values "
        "within ±3.403e+38; found 2.99999",
    )
    as_float64 = codec.from_numpy(np.array([[0.5], [1e300]]))
    _expect(
        lambda: scaler_server.stub.Transform(_transform("stretch", data=as_float64), timeout=10),
        INVALID,
        "data: the transform of 1e+300 at index [1, 0] gives inf: beyond float64's range",
    )
    # FitTransform checks the same before storing anything.
    fit_transform = scaler_pb2.FitTransformRequest(
        scaler_id="stretched", spec=wide, train=request.data, others={"test": as_float32}
    )
    _expect(
        lambda: scaler_server.stub.FitTransform(fit_transform, timeout=10),
        INVALID,
        "FLOAT32, the request's dtype",
    )
    listed = scaler_server.stub.ListScalers(scaler_pb2.ListScalersRequest(scaler_id="stretched")).scalers
    assert not listed
    _still_serving(scaler_server)


def test_ids_must_match_whole_and_are_echoed_short(scaler_server: ScalerServerHandle) -> None:
    stub = scaler_server.stub
    request = _fit(GOOD)
    request.scaler_id = "trailing-newline\n"
    _expect(lambda: stub.Fit(request), INVALID, "scaler id 'trailing-newline\\n' is not valid")
    for call in (
        lambda: stub.GetScaler(scaler_pb2.GetScalerRequest(scaler_id="y" * 10_000)),
        lambda: stub.DeleteScaler(scaler_pb2.DeleteScalerRequest(scaler_id="y" * 10_000)),
        lambda: stub.Transform(_transform("y" * 10_000)),
    ):
        with pytest.raises(grpc.RpcError) as info:
            call()
        assert info.value.code() == INVALID and len(info.value.details()) < 300, info.value.details()[:200]
        assert "…(10000 chars) is not valid" in info.value.details()
    _still_serving(scaler_server)


def test_get_delete_list_errors(scaler_server: ScalerServerHandle, fitted: scaler_pb2.ScalerInfo) -> None:
    stub = scaler_server.stub
    not_found = grpc.StatusCode.NOT_FOUND
    _expect(
        lambda: stub.GetScaler(scaler_pb2.GetScalerRequest(scaler_id="nobody")),
        not_found,
        "'nobody' not found",
    )
    _expect(
        lambda: stub.GetScaler(scaler_pb2.GetScalerRequest(scaler_id="fitted", version=2)),
        not_found,
        "no version 2",
    )
    _expect(
        lambda: stub.DeleteScaler(scaler_pb2.DeleteScalerRequest(scaler_id="nobody")), not_found, "not found"
    )
    _expect(
        lambda: stub.DeleteScaler(scaler_pb2.DeleteScalerRequest(scaler_id="fitted", version=3)),
        not_found,
        "no version 3",
    )
    _expect(lambda: stub.DeleteScaler(scaler_pb2.DeleteScalerRequest()), INVALID, "scaler_id is required")
    _expect(
        lambda: stub.ListScalers(scaler_pb2.ListScalersRequest(page_token="%%%")),
        INVALID,
        "page_token '%%%' is not valid",
    )
    _expect(
        lambda: stub.ListScalers(scaler_pb2.ListScalersRequest(page_size=-1)),
        INVALID,
        "page_size must be >= 0",
    )
    _expect(
        lambda: stub.ListScalers(scaler_pb2.ListScalersRequest(scaler_id="a/b")),
        INVALID,
        "scaler id 'a/b' is not valid",
    )
    _still_serving(scaler_server)
    assert stub.GetScaler(scaler_pb2.GetScalerRequest(scaler_id="fitted")) == fitted


def test_bad_fit_transform_others_store_nothing(scaler_server: ScalerServerHandle) -> None:
    request = scaler_pb2.FitTransformRequest(
        spec=spec("standard"),
        train=codec.from_numpy(random_data((10, 3))),
        others={"test": codec.from_numpy(random_data((4, 2))), "ok": codec.from_numpy(random_data((4, 3)))},
    )
    _expect(
        lambda: scaler_server.stub.FitTransform(request),
        INVALID,
        "others['test']: expected samples of shape [3] (3 features) as fitted, got data of shape [4, 2]",
    )
    bad_train = scaler_pb2.FitTransformRequest(spec=spec("robust"))
    _expect(lambda: scaler_server.stub.FitTransform(bad_train), INVALID, "train is missing")
    _still_serving(scaler_server)
    assert not scaler_server.stub.ListScalers(scaler_pb2.ListScalersRequest()).scalers


def _chunks(*arrays: np.ndarray, kind: str = "standard") -> Iterator[scaler_pb2.FitChunk]:
    for index, array in enumerate(arrays):
        chunk = scaler_pb2.FitChunk(data=codec.from_numpy(array))
        if index == 0:
            chunk.spec.CopyFrom(spec(kind))
        yield chunk


def test_bad_streams(scaler_server: ScalerServerHandle) -> None:
    stub = scaler_server.stub
    rows = np.ones((5, 3))
    _expect(
        lambda: stub.FitStream(_chunks(rows, rows, kind="robust")),
        grpc.StatusCode.FAILED_PRECONDITION,
        "robust cannot be fitted from a stream: its statistics (median and quantiles) need all the training data at once",
    )
    _expect(
        lambda: stub.FitStream(_chunks(rows, rows, np.ones((5, 4)))),
        INVALID,
        "chunk 2 data: expected samples of shape [3] (3 features) as fitted, got data of shape [5, 4]",
    )
    nan_rows = rows.copy()
    nan_rows[4, 0] = np.nan
    _expect(lambda: stub.FitStream(_chunks(rows, nan_rows)), INVALID, "chunk 1 data: values must be finite")
    _expect(lambda: stub.FitStream(iter([])), INVALID, "FitStream received no chunks")
    _expect(
        lambda: stub.FitStream(_chunks(np.zeros((0, 3)))), INVALID, "stream: standard needs at least 1 sample"
    )
    no_spec = iter([scaler_pb2.FitChunk(data=codec.from_numpy(rows))])
    _expect(lambda: stub.FitStream(no_spec), INVALID, "spec.kind is required")
    _still_serving(scaler_server)
    assert not stub.ListScalers(scaler_pb2.ListScalersRequest()).scalers


def test_oversize_messages_are_resource_exhausted(tmp_path: Path) -> None:
    with running_scaler_server(tmp_path / "store", max_message_mb=1) as server:
        too_big = np.zeros((50_000, 3))  # 1.2 MB of float64, above the 1 MB limit
        _expect(lambda: fit(server.stub, too_big), grpc.StatusCode.RESOURCE_EXHAUSTED, "larger than max")
        info = fit(server.stub, np.arange(6.0).reshape(2, 3), "minmax")
        # 0.6 MB of int32 in would be 1.2 MB of float64 out: refused before encoding, with advice.
        ints = codec.from_numpy(np.zeros((50_000, 3), dtype=np.int32))
        _expect(
            lambda: server.stub.Transform(scaler_pb2.TransformRequest(scaler_id=info.id, data=ints)),
            grpc.StatusCode.RESOURCE_EXHAUSTED,
            "above the max message size of 1048576 bytes; send fewer rows per call",
        )
        _still_serving(server)
        assert transform_ok(server, info.id)


def transform_ok(server: ScalerServerHandle, scaler_id: str) -> bool:
    reply = server.stub.Transform(scaler_pb2.TransformRequest(scaler_id=scaler_id, data=GOOD), timeout=10)
    return codec.to_numpy(reply.data).shape == (4, 3)


def _expect(call: Callable[[], Any], code: grpc.StatusCode, message: str) -> None:
    with pytest.raises(grpc.RpcError) as excinfo:
        call()
    error = excinfo.value
    assert error.code() == code, f"{error.code()}: {error.details()}"
    assert message in error.details()


def _still_serving(server: ScalerServerHandle) -> None:
    assert server.health() == "SERVING"
    assert server.health("lstm_stack.v1.ScalerService") == "SERVING"
    info = fit(server.stub, np.arange(6.0).reshape(2, 3), "maxabs", scaler_id="health-probe")
    assert transform_ok(server, info.id)
    server.stub.DeleteScaler(scaler_pb2.DeleteScalerRequest(scaler_id="health-probe"))
