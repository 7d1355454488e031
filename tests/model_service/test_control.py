"""Cancel, deadlines, the training-job limit, serving during training, and a scaler service that is down."""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path

import grpc
import numpy as np
import pytest

from demo.services import free_port
from protos.lstm_stack.v1 import model_pb2, scaler_pb2
from service_common import codec
from tests.model_service.conftest import ModelServerHandle, running_model_server
from tests.model_service.helpers import (
    SEED_QUERY,
    predict,
    scaler,
    seed_example,
    status_of,
    tiny_spec,
    train,
    train_request,
    values,
)
from tests.scaler_service.harness import ScalerServerHandle, running_scaler_server


@pytest.fixture(scope="module")
def one_job_server(
    shared_scaler: ScalerServerHandle, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[ModelServerHandle]:
    store = tmp_path_factory.mktemp("one-job-store")
    with running_model_server(store, shared_scaler.address, max_training_jobs=1) as handle:
        yield handle


def slow_request(model_id: str = "", **fields: object) -> model_pb2.TrainRequest:
    """Thousands of epochs over a few hundred rows: runs until cancelled."""
    rng = np.random.default_rng(0)
    x = rng.normal(size=(400, 3, 1))
    return train_request(
        tiny_spec(), x, x.sum(axis=(1, 2)), model_id=model_id, epochs=5000, batch_size=8, **fields
    )


def listed(server: ModelServerHandle) -> list[tuple[str, int, int]]:
    reply = server.stub.ListModels(model_pb2.ListModelsRequest(page_size=1000), timeout=10)
    return [(m.id, m.version, m.state) for m in reply.models]


def wait_until(condition: object, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():  # type: ignore[operator]
        assert time.monotonic() < deadline, "condition not met in time"
        time.sleep(0.05)


def test_cancel_mid_training_leaves_no_model(
    one_job_server: ModelServerHandle, shared_scaler: ScalerServerHandle
) -> None:
    call = one_job_server.stub.Train(slow_request(x_scaling=scaler(scaler_pb2.STANDARD)), timeout=120)
    started = next(call).started
    assert next(call).HasField("epoch")
    assert listed(one_job_server) == [(started.model_id, 1, model_pb2.TRAINING)]
    call.cancel()
    # Stops within a batch; the version vanishes, nothing reaches the disk, the job slot is free again.
    wait_until(lambda: listed(one_job_server) == [])
    assert not (one_job_server.store / "models" / started.model_id).exists()
    code, _ = status_of(
        shared_scaler.stub.GetScaler,
        scaler_pb2.GetScalerRequest(scaler_id=started.x_scaler.scaler_id),
        timeout=10,
    )
    assert code == grpc.StatusCode.NOT_FOUND  # its scaler version was deleted again
    x, y = seed_example()
    wait_until(lambda: _trains(one_job_server, train_request(tiny_spec(), x, y, model_id="after-cancel")))
    one_job_server.stub.DeleteModel(model_pb2.DeleteModelRequest(model_id="after-cancel"), timeout=10)


def _trains(server: ModelServerHandle, request: model_pb2.TrainRequest) -> bool:
    try:
        train(server.stub, request)
    except grpc.RpcError as exc:
        if exc.code() == grpc.StatusCode.RESOURCE_EXHAUSTED:  # the cancelled job is still winding down
            return False
        raise
    return True


def test_deadline_stops_training_and_leaves_no_model(one_job_server: ModelServerHandle) -> None:
    code, _ = status_of(one_job_server.stub.Train, slow_request(model_id="deadline"), timeout=3)
    assert code == grpc.StatusCode.DEADLINE_EXCEEDED
    wait_until(lambda: listed(one_job_server) == [])
    assert not (one_job_server.store / "models" / "deadline").exists()


def test_job_limit_and_serving_while_training(one_job_server: ModelServerHandle) -> None:
    stub = one_job_server.stub
    x, y = seed_example()
    wait_until(lambda: _trains(one_job_server, train_request(tiny_spec(), x, y, model_id="served")))
    before = values(predict(stub, "served", SEED_QUERY))
    call = stub.Train(slow_request(model_id="served"), timeout=120)
    assert next(call).started.version == 2
    try:
        code, details = status_of(stub.Train, train_request(tiny_spec(), x, y), timeout=30)
        assert code == grpc.StatusCode.RESOURCE_EXHAUSTED and "max_training_jobs=1" in details
        # Serving goes on: the ready version answers, the training one is refused precisely.
        for _ in range(20):
            np.testing.assert_array_equal(values(predict(stub, "served", SEED_QUERY)), before)
        code, details = status_of(
            stub.Predict,
            model_pb2.PredictRequest(model_id="served", version=2, x=codec.from_numpy(SEED_QUERY)),
            timeout=10,
        )
        assert code == grpc.StatusCode.FAILED_PRECONDITION and "version 2 is still training" in details
        info = stub.GetModel(model_pb2.GetModelRequest(model_id="served"), timeout=10)
        assert (info.version, info.state) == (2, model_pb2.TRAINING)
        code, _ = status_of(
            stub.DeleteModel, model_pb2.DeleteModelRequest(model_id="served", version=2), timeout=10
        )
        assert code == grpc.StatusCode.FAILED_PRECONDITION
    finally:
        call.cancel()
    wait_until(lambda: listed(one_job_server) == [("served", 1, model_pb2.READY)])


def test_scaler_service_down_is_unavailable_and_the_model_service_stays_up(tmp_path: Path) -> None:
    x, y = seed_example()
    with (
        running_scaler_server(tmp_path / "scaler") as scaler_handle,
        running_model_server(tmp_path / "model", scaler_handle.address, scaler_timeout_seconds=5) as model,
    ):
        _, info = train(model.stub, train_request(tiny_spec(), x, y, x_scaling=scaler(), y_scaling=scaler()))
        scaler_handle.server.stop(0)  # the scaler service goes away
        code, details = status_of(
            model.stub.Train, train_request(tiny_spec(), x, y, x_scaling=scaler()), timeout=30
        )
        assert code == grpc.StatusCode.UNAVAILABLE
        assert scaler_handle.address in details
        # The model service answers everything that does not need the scaler service.
        assert values(predict(model.stub, info.id, SEED_QUERY)).shape == (1, 1)  # cached affine form
        assert train(model.stub, train_request(tiny_spec(), x, y))[1].version == 1
        assert len(listed(model)) == 2
    # Nothing listening at all.
    with running_model_server(
        tmp_path / "alone", f"127.0.0.1:{free_port()}", scaler_timeout_seconds=5
    ) as model:
        code, _ = status_of(
            model.stub.Train, train_request(tiny_spec(), x, y, x_scaling=scaler()), timeout=30
        )
        assert code == grpc.StatusCode.UNAVAILABLE
        assert (
            model.stub.ValidateSpec(model_pb2.ValidateSpecRequest(spec=tiny_spec()), timeout=30).total_params
            > 0
        )
