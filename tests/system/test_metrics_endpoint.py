"""The Prometheus endpoint of each real service, scraped over HTTP: RPC counts and latency by method and
status code, rows per batch (predict; scaler fit/transform), training jobs running, artifacts stored."""

from __future__ import annotations

import functools
import time

import grpc
import numpy as np
import pytest

from protos.lstm_stack.v1 import model_pb2, model_pb2_grpc, scaler_pb2, scaler_pb2_grpc
from service_common import codec
from tests.system import workloads
from tests.system.procs import ServiceProcess

Samples = dict[tuple[str, frozenset[tuple[str, str]]], float]
SCALER_SERVICE = "lstm_stack.v1.ScalerService"
MODEL_SERVICE = "lstm_stack.v1.ModelService"
JOBS_RUNNING = "lstm_training_jobs_running"


def value(samples: Samples, name: str, **labels: str) -> float:
    return samples.get((name, frozenset(labels.items())), 0.0)


def handled(samples: Samples, service: str, method: str, code: str) -> float:
    labels = {"grpc_service": service, "grpc_method": method, "grpc_code": code}
    return value(samples, "grpc_server_handled_total", **labels)


def handled_since(before: Samples, after: Samples, service: str, method: str, code: str) -> float:
    return handled(after, service, method, code) - handled(before, service, method, code)


def latency_count(samples: Samples, service: str, method: str, code: str) -> float:
    labels = {"grpc_service": service, "grpc_method": method, "grpc_code": code}
    return value(samples, "grpc_server_handling_seconds_count", **labels)


def gained(before: Samples, after: Samples, name: str, **labels: str) -> float:
    return value(after, name, **labels) - value(before, name, **labels)


def _wait_for(service: ServiceProcess, name: str, expected: float, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while (current := value(service.scrape(), name)) != expected:
        assert time.monotonic() < deadline, f"{name} stayed {current}, expected {expected}"
        time.sleep(0.1)


def test_scaler_endpoint_counts_rpcs_by_method_and_code_and_stored_scalers(
    model_stack: tuple[ServiceProcess, ServiceProcess],
) -> None:
    scaler, _model = model_stack
    before = scaler.scrape()
    with scaler.channel() as channel:
        stub = scaler_pb2_grpc.ScalerServiceStub(channel)
        data = codec.from_numpy(np.arange(12, dtype=np.float64).reshape(4, 3))
        for _ in range(2):
            stub.Fit(
                scaler_pb2.FitRequest(
                    scaler_id="metrics", spec=scaler_pb2.ScalerSpec(kind=scaler_pb2.MINMAX), data=data
                ),
                timeout=30,
            )
        stub.Transform(scaler_pb2.TransformRequest(scaler_id="metrics", data=data), timeout=30)
        stub.InverseTransform(scaler_pb2.TransformRequest(scaler_id="metrics", data=data), timeout=30)
        with pytest.raises(grpc.RpcError) as bad:  # 2 features for a 3-feature scaler: no rows counted
            two_features = codec.from_numpy(np.ones((5, 2)))
            stub.Transform(scaler_pb2.TransformRequest(scaler_id="metrics", data=two_features), timeout=30)
        assert bad.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        with pytest.raises(grpc.RpcError) as info:
            stub.GetScaler(scaler_pb2.GetScalerRequest(scaler_id="no-such-scaler"), timeout=30)
        assert info.value.code() == grpc.StatusCode.NOT_FOUND
        listed = workloads.list_scalers(channel)
    after = scaler.scrape()

    delta = functools.partial(handled_since, before, after, SCALER_SERVICE)

    assert delta("Fit", "OK") == 2
    assert delta("GetScaler", "NOT_FOUND") == 1
    assert delta("GetScaler", "OK") == 0
    # The latency histogram has one observation per RPC, under the same labels.
    for method, code in (("Fit", "OK"), ("GetScaler", "NOT_FOUND")):
        assert latency_count(after, SCALER_SERVICE, method, code) == handled(
            after, SCALER_SERVICE, method, code
        )
    # The ListScalers above is counted once it has finished: it shows in the next scrape.
    assert handled(scaler.scrape(), SCALER_SERVICE, "ListScalers", "OK") >= 1
    assert value(after, "lstm_artifacts_stored", kind="scaler") == len(listed)
    assert gained(before, after, "lstm_artifacts_stored", kind="scaler") == 2
    # Rows per call handed to the scalers, by operation; only calls whose data was valid.
    for operation, calls in (("fit", 2), ("transform", 1), ("inverse_transform", 1)):
        assert gained(before, after, "lstm_batch_rows_count", operation=operation) == calls
        assert gained(before, after, "lstm_batch_rows_sum", operation=operation) == 4 * calls


def test_model_endpoint_counts_rpcs_batches_training_jobs_and_stored_models(
    model_stack: tuple[ServiceProcess, ServiceProcess],
) -> None:
    _scaler, model = model_stack
    before = model.scrape()
    assert value(before, JOBS_RUNNING) == 0
    with model.channel() as channel:
        stub = model_pb2_grpc.ModelServiceStub(channel)
        # Long enough (1000 epochs) to be still running when scraped, then cancelled.
        long_run = stub.Train(workloads.train_request("metrics-long", epochs=1000), timeout=120)
        for event in long_run:
            if event.HasField("epoch"):
                break
        running = value(model.scrape(), JOBS_RUNNING)
        long_run.cancel()
        assert running == 1
        _wait_for(model, JOBS_RUNNING, 0)

        workloads.train_when_a_slot_is_free(channel, workloads.train_request("metrics", epochs=2))
        batch = np.random.default_rng(0).uniform(1, 70, size=(32, 3, 1))
        stub.Predict(model_pb2.PredictRequest(model_id="metrics", x=codec.from_numpy(batch)), timeout=60)
        with pytest.raises(grpc.RpcError) as info:
            stub.GetModel(model_pb2.GetModelRequest(model_id="no-such-model"), timeout=30)
        assert info.value.code() == grpc.StatusCode.NOT_FOUND
        listed = workloads.list_models(channel)
    after = model.scrape()

    delta = functools.partial(handled_since, before, after, MODEL_SERVICE)

    assert delta("Train", "OK") == 1
    assert delta("Train", "CANCELLED") == 1
    assert delta("Predict", "OK") == 1
    assert delta("GetModel", "NOT_FOUND") == 1
    assert latency_count(after, MODEL_SERVICE, "Predict", "OK") == handled(
        after, MODEL_SERVICE, "Predict", "OK"
    )
    # The 32-row request went through the adaptive batcher as (part of) predict batches.
    assert gained(before, after, "lstm_batch_rows_count", operation="predict") >= 1
    assert gained(before, after, "lstm_batch_rows_sum", operation="predict") >= 32
    assert value(after, JOBS_RUNNING) == 0
    # Only the finished training is stored: the cancelled one never is.
    ready = [m for m in listed if m.state == model_pb2.READY]
    assert value(after, "lstm_artifacts_stored", kind="model") == len(ready)
    assert gained(before, after, "lstm_artifacts_stored", kind="model") == 1
    assert any(name == "process_resident_memory_bytes" for name, _ in after)
