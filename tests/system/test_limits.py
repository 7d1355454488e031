"""Limits on the real services: past each one the caller gets RESOURCE_EXHAUSTED with a clear message,
and the server goes on serving."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from pathlib import Path

import grpc
import numpy as np
import pytest

from protos.lstm_stack.v1 import scaler_pb2, scaler_pb2_grpc
from service_common import codec
from tests.system.procs import ServiceProcess, scaler_process


def _fit_request(rows: int, scaler_id: str = "") -> scaler_pb2.FitRequest:
    data = np.random.default_rng(1).normal(size=(rows, 4))
    return scaler_pb2.FitRequest(
        scaler_id=scaler_id, spec=scaler_pb2.ScalerSpec(kind=scaler_pb2.MINMAX), data=codec.from_numpy(data)
    )


@pytest.fixture
def small_scaler(tmp_path: Path) -> Iterator[ServiceProcess]:
    service = scaler_process(
        tmp_path / "store", tmp_path / "logs", "--max-message-mb", "1", "--max-concurrent-rpcs", "2"
    )
    service.start()
    try:
        yield service
    finally:
        service.stop()


def test_message_size_limit(small_scaler: ServiceProcess) -> None:
    with small_scaler.channel() as channel:
        stub = scaler_pb2_grpc.ScalerServiceStub(channel)
        # 40,000 x 4 float64 = 1.28 MB > 1 MB.
        with pytest.raises(grpc.RpcError) as info:
            stub.Fit(_fit_request(40_000), timeout=30)
        assert info.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
        assert "larger than max" in info.value.details(), info.value.details()
        # Just under the limit goes through, and the server is fine.
        assert stub.Fit(_fit_request(30_000, "fits"), timeout=30).n_samples_seen == 30_000
        # A reply that would not fit is refused before it is built: INT32 in (0.5 MB), FLOAT64 out (1 MB).
        counts = np.arange(32_000 * 4, dtype=np.int32).reshape(32_000, 4)
        request = scaler_pb2.FitTransformRequest(
            spec=scaler_pb2.ScalerSpec(kind=scaler_pb2.MINMAX), train=codec.from_numpy(counts)
        )
        with pytest.raises(grpc.RpcError) as info:
            stub.FitTransform(request, timeout=30)
        assert info.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
        assert "max message size" in info.value.details()
    assert small_scaler.health() == "SERVING"


def test_concurrent_rpc_limit(small_scaler: ServiceProcess) -> None:
    """Two slow client streams hold both slots; a third call is refused at once, then served again."""
    release = threading.Event()
    results: list[object] = []

    def slow_stream(name: str) -> None:
        def chunks() -> Iterator[scaler_pb2.FitChunk]:
            first = scaler_pb2.FitChunk(scaler_id=name, data=_fit_request(10).data)
            first.spec.kind = scaler_pb2.STANDARD
            yield first
            release.wait(30)

        with small_scaler.channel() as channel:
            try:
                results.append(scaler_pb2_grpc.ScalerServiceStub(channel).FitStream(chunks(), timeout=60))
            except grpc.RpcError as error:
                results.append(error.code())

    holders = [threading.Thread(target=slow_stream, args=(f"slow-{i}",)) for i in range(2)]
    for holder in holders:
        holder.start()
    try:
        time.sleep(1.0)  # both streams are open on the server
        with small_scaler.channel() as channel:
            stub = scaler_pb2_grpc.ScalerServiceStub(channel)
            with pytest.raises(grpc.RpcError) as info:
                stub.ListScalers(scaler_pb2.ListScalersRequest(), timeout=30)
            assert info.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
            assert "Concurrent RPC limit" in info.value.details()
    finally:
        release.set()
        for holder in holders:
            holder.join(timeout=30)
    assert all(isinstance(r, scaler_pb2.ScalerInfo) for r in results), results
    with small_scaler.channel() as channel:
        listed = scaler_pb2_grpc.ScalerServiceStub(channel).ListScalers(
            scaler_pb2.ListScalersRequest(), timeout=30
        )
    assert {s.id for s in listed.scalers} == {"slow-0", "slow-1"}
