"""Limits on the real services: past each one the caller gets RESOURCE_EXHAUSTED with a clear message,
and the server goes on serving."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import grpc
import numpy as np
import pytest

from protos.lstm_stack.v1 import model_pb2, model_pb2_grpc, scaler_pb2, scaler_pb2_grpc
from service_common import codec
from tests.system import workloads
from tests.system.conftest import MODEL_MAX_TRAINING_JOBS, MODEL_MAX_TRAINING_WORK
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


# ---- model service (the shared stack runs with the limits in tests/system/conftest.py)


def _status(call: Callable[[], object]) -> tuple[grpc.StatusCode, str]:
    with pytest.raises(grpc.RpcError) as info:
        call()
    return info.value.code(), info.value.details() or ""


def test_model_message_size_limit(model_stack: tuple[ServiceProcess, ServiceProcess]) -> None:
    _scaler, model = model_stack
    with model.channel() as channel:
        stub = model_pb2_grpc.ModelServiceStub(channel)
        # 50,000 x 3 float64 = 1.2 MB > MODEL_MAX_MESSAGE_MB.
        too_big = np.ones((50_000, 3, 1))
        code, details = _status(
            lambda: stub.Predict(
                model_pb2.PredictRequest(model_id=workloads.BASE_MODEL, x=codec.from_numpy(too_big)),
                timeout=60,
            )
        )
        assert code == grpc.StatusCode.RESOURCE_EXHAUSTED
        assert "larger than max" in details, details
        assert workloads.predict_seed(channel, workloads.BASE_MODEL).shape == (1, 1)
    assert model.health() == "SERVING"


def test_training_work_ceiling(model_stack: tuple[ServiceProcess, ServiceProcess]) -> None:
    _scaler, model = model_stack
    epochs = MODEL_MAX_TRAINING_WORK // 13 + 1  # the seed data has 13 training rows
    with model.channel() as channel:
        stub = model_pb2_grpc.ModelServiceStub(channel)
        request = workloads.train_request("too-much-work", epochs=epochs)
        code, details = _status(lambda: list(stub.Train(request, timeout=60)))
        assert code == grpc.StatusCode.RESOURCE_EXHAUSTED
        assert f"{epochs} epochs x 13 rows = {epochs * 13}" in details, details
        assert f"max_training_work={MODEL_MAX_TRAINING_WORK}" in details, details
        listed = stub.ListModels(model_pb2.ListModelsRequest(model_id="too-much-work"), timeout=30).models
        assert list(listed) == [], "a refused training must leave nothing behind"
    assert model.health() == "SERVING"


def test_concurrent_training_job_limit(model_stack: tuple[ServiceProcess, ServiceProcess]) -> None:
    """One job holds the only slot; a second Train is refused at once; the slot frees after a cancel."""
    _scaler, model = model_stack
    with model.channel() as channel:
        stub = model_pb2_grpc.ModelServiceStub(channel)
        holder = stub.Train(workloads.train_request("slot-holder", epochs=1000), timeout=120)
        try:
            assert next(holder).HasField("started")
            code, details = _status(
                lambda: list(stub.Train(workloads.train_request("second-job", epochs=1), timeout=60))
            )
            assert code == grpc.StatusCode.RESOURCE_EXHAUSTED
            assert f"max_training_jobs={MODEL_MAX_TRAINING_JOBS}" in details, details
            # Serving goes on while the slot is taken.
            assert workloads.predict_seed(channel, workloads.BASE_MODEL).shape == (1, 1)
        finally:
            holder.cancel()
        # The cancelled job winds down within a batch; then the slot is free again.
        info = workloads.train_when_a_slot_is_free(
            channel, workloads.train_request("after-the-limit", epochs=1)
        )
        assert info.state == model_pb2.READY
        listed = stub.ListModels(model_pb2.ListModelsRequest(model_id="slot-holder"), timeout=30).models
        assert list(listed) == [], "a cancelled training must not be stored"
