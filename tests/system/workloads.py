"""Tiny, fast requests for the model service: the seed's first example, small enough to train in ~1 s."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

import grpc
import numpy as np

from demo.seed_examples import example1_windows
from protos.lstm_stack.v1 import model_pb2, model_pb2_grpc, scaler_pb2, scaler_pb2_grpc
from service_common import codec

# Trained once per session by the model_stack fixture (tests/system/conftest.py).
BASE_MODEL = "base"


def seed_windows() -> tuple[np.ndarray, np.ndarray]:
    """The seed's example 1: x (13, 3, 1) windows, y (13,)."""
    return example1_windows()


def tiny_spec(units: int = 4) -> model_pb2.ModelSpec:
    return model_pb2.ModelSpec(
        input=model_pb2.InputShape(timesteps=3, features=1),
        layers=[model_pb2.Layer(lstm=model_pb2.LstmLayer(units=units, activation="relu"))],
        head=model_pb2.Head(task=model_pb2.REGRESSION, outputs=1),
    )


def train_request(
    model_id: str = "", epochs: int = 2, scaled: bool = True, seed: int = 1
) -> model_pb2.TrainRequest:
    x, y = seed_windows()
    request = model_pb2.TrainRequest(
        model_id=model_id,
        spec=tiny_spec(),
        supervised=model_pb2.SupervisedData(x=codec.from_numpy(x), y=codec.from_numpy(y)),
        epochs=epochs,
        batch_size=4,
        seed=seed,
    )
    if scaled:
        request.x_scaling.CopyFrom(scaler_pb2.ScalerSpec(kind=scaler_pb2.MINMAX))
        request.y_scaling.CopyFrom(scaler_pb2.ScalerSpec(kind=scaler_pb2.MINMAX))
    return request


def train(
    channel: grpc.Channel,
    request: model_pb2.TrainRequest,
    timeout: float = 120,
    wait_for_ready: bool = False,
    on_event: Callable[[model_pb2.TrainEvent], None] | None = None,
) -> model_pb2.ModelInfo:
    """Run Train to the end; returns the final ModelInfo."""
    done = None
    stub = model_pb2_grpc.ModelServiceStub(channel)
    for event in stub.Train(request, timeout=timeout, wait_for_ready=wait_for_ready):
        if on_event is not None:
            on_event(event)
        if event.HasField("done"):
            done = event.done
    assert done is not None, "Train ended without a final event"
    return done


def predict_seed(channel: grpc.Channel, model_id: str, version: int = 0, timeout: float = 60) -> np.ndarray:
    x = np.array([[50.0, 60.0, 70.0]]).reshape(1, 3, 1)
    reply = model_pb2_grpc.ModelServiceStub(channel).Predict(
        model_pb2.PredictRequest(model_id=model_id, version=version, x=codec.from_numpy(x)), timeout=timeout
    )
    return codec.to_numpy(reply.values)


def train_when_a_slot_is_free(
    channel: grpc.Channel, request: model_pb2.TrainRequest, timeout: float = 60
) -> model_pb2.ModelInfo:
    """Train, retrying while the service answers RESOURCE_EXHAUSTED (a cancelled job still winding down
    holds its max_training_jobs slot for a moment)."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            return train(channel, request)
        except grpc.RpcError as error:
            if error.code() != grpc.StatusCode.RESOURCE_EXHAUSTED or time.monotonic() > deadline:
                raise
            time.sleep(0.2)


def _every_page(list_call: Any, request_type: Any, field: str) -> list[Any]:
    """Follow page tokens to the end (a page holds at most a thousand)."""
    found: list[Any] = []
    token = ""
    while True:
        reply = list_call(request_type(page_size=1000, page_token=token), timeout=30)
        found.extend(getattr(reply, field))
        token = reply.next_page_token
        if not token:
            return found


def list_scalers(channel: grpc.Channel) -> list[scaler_pb2.ScalerInfo]:
    """Every scaler version."""
    stub = scaler_pb2_grpc.ScalerServiceStub(channel)
    return _every_page(stub.ListScalers, scaler_pb2.ListScalersRequest, "scalers")


def list_models(channel: grpc.Channel) -> list[model_pb2.ModelInfo]:
    """Every model version."""
    stub = model_pb2_grpc.ModelServiceStub(channel)
    return _every_page(stub.ListModels, model_pb2.ListModelsRequest, "models")
