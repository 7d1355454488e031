"""FitStream: partial_fit chunk by chunk equals a one-shot fit."""

from __future__ import annotations

import threading
from collections.abc import Iterator

import grpc
import numpy as np
import pytest

from protos.lstm_stack.v1 import scaler_pb2
from service_common import codec
from tests.scaler_service.harness import ScalerServerHandle
from tests.scaler_service.helpers import fit, random_data, spec, transform


def _stream(data: np.ndarray, kind: str, layout: str = "", chunks: int = 10, scaler_id: str = "") -> Iterator:
    # The first chunk carries only the spec; data follows in the next ones.
    yield scaler_pb2.FitChunk(scaler_id=scaler_id, spec=spec(kind, layout))
    for part in np.array_split(data, chunks):
        yield scaler_pb2.FitChunk(data=codec.from_numpy(part))


@pytest.mark.parametrize("kind", ["minmax", "standard", "maxabs"])
@pytest.mark.parametrize(
    ("layout", "shape"), [("", (3000, 3)), ("per_feature", (600, 4, 2)), ("per_column", (600, 4, 2))]
)
def test_streamed_fit_equals_one_shot(
    scaler_server: ScalerServerHandle, kind: str, layout: str, shape: tuple[int, ...]
) -> None:
    data = random_data(shape, seed=21)
    streamed = scaler_server.stub.FitStream(_stream(data, kind, layout), timeout=30)
    whole = fit(scaler_server.stub, data, kind, layout=layout)
    assert streamed.n_samples_seen == whole.n_samples_seen == shape[0]
    assert list(streamed.sample_shape) == list(shape[1:]) and streamed.n_columns == whole.n_columns
    assert streamed.fingerprint == whole.fingerprint  # independent of chunking
    for name in ("data_min", "data_max", "mean", "var", "scale", "max_abs"):
        np.testing.assert_allclose(
            getattr(streamed.statistics, name), getattr(whole.statistics, name), rtol=1e-12, atol=1e-12
        )
    probe = random_data((9, *shape[1:]), seed=22)
    np.testing.assert_allclose(
        transform(scaler_server.stub, streamed.id, probe),
        transform(scaler_server.stub, whole.id, probe),
        rtol=1e-12,
        atol=1e-12,
    )


def test_stream_adds_a_version_to_a_named_scaler(scaler_server: ScalerServerHandle) -> None:
    data = random_data((100, 2))
    fit(scaler_server.stub, data, "standard", scaler_id="streamed")
    info = scaler_server.stub.FitStream(_stream(data, "standard", scaler_id="streamed", chunks=3))
    assert (info.id, info.version) == ("streamed", 2)


def test_stream_accepts_mixed_wire_dtypes(scaler_server: ScalerServerHandle) -> None:
    ints = np.arange(60, dtype=np.int32).reshape(20, 3)

    def chunks() -> Iterator[scaler_pb2.FitChunk]:
        yield scaler_pb2.FitChunk(spec=spec("minmax"), data=codec.from_numpy(ints[:10]))
        yield scaler_pb2.FitChunk(data=codec.from_numpy(ints[10:].astype(np.float32)))

    info = scaler_server.stub.FitStream(chunks())
    assert list(info.statistics.data_min) == [0, 1, 2] and list(info.statistics.data_max) == [57, 58, 59]
    assert info.fingerprint == fit(scaler_server.stub, ints.astype(np.float64), "minmax").fingerprint


def test_a_client_that_abandons_the_stream_leaves_no_version(scaler_server: ScalerServerHandle) -> None:
    sent_two = threading.Event()
    hold = threading.Event()
    data = random_data((100, 3))

    def chunks() -> Iterator[scaler_pb2.FitChunk]:
        yield scaler_pb2.FitChunk(scaler_id="abandoned", spec=spec("standard"))
        yield scaler_pb2.FitChunk(data=codec.from_numpy(data[:50]))
        sent_two.set()
        hold.wait(10)  # never sends the rest: the client gives up instead
        yield scaler_pb2.FitChunk(data=codec.from_numpy(data[50:]))

    call = scaler_server.stub.FitStream.future(chunks(), timeout=30)
    assert sent_two.wait(10)
    call.cancel()
    hold.set()
    with pytest.raises(grpc.FutureCancelledError):
        call.result()
    listed = scaler_server.stub.ListScalers(scaler_pb2.ListScalersRequest(scaler_id="abandoned"), timeout=10)
    assert list(listed.scalers) == []
    # The service still fits, and the id starts at version 1: nothing was reserved for the abandoned stream.
    info = scaler_server.stub.FitStream(
        _stream(data, "standard", scaler_id="abandoned", chunks=2), timeout=30
    )
    assert (info.id, info.version, info.n_samples_seen) == ("abandoned", 1, 100)
