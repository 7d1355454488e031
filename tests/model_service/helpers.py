"""Data, specs and small RPC helpers for the model service tests."""

from __future__ import annotations

import grpc
import numpy as np

from demo.seed_examples import example1_windows, example2_windows
from protos.lstm_stack.v1 import model_pb2, model_pb2_grpc, scaler_pb2
from service_common import codec

SEED_QUERY = np.array([[50.0, 60.0, 70.0]]).reshape(1, 3, 1)


def seed_example() -> tuple[np.ndarray, np.ndarray]:
    """The seed's example 1: windows (13, 3, 1) -> y [4..13, 50, 60, 70]."""
    return example1_windows()


def outlier_example() -> tuple[np.ndarray, np.ndarray]:
    """The seed's example 2: (14, 3, 1) with outliers in the tens of thousands -> y."""
    return example2_windows()


def lstm(units: int, activation: str = "", return_sequences: bool | None = None) -> model_pb2.Layer:
    layer = model_pb2.LstmLayer(units=units, activation=activation)
    if return_sequences is not None:
        layer.return_sequences = return_sequences
    return model_pb2.Layer(lstm=layer)


def dense(units: int, activation: str = "") -> model_pb2.Layer:
    return model_pb2.Layer(dense=model_pb2.DenseLayer(units=units, activation=activation))


def reshape(*target: int) -> model_pb2.Layer:
    return model_pb2.Layer(reshape=model_pb2.ReshapeLayer(target_shape=list(target)))


def dropout(rate: float) -> model_pb2.Layer:
    return model_pb2.Layer(dropout=model_pb2.DropoutLayer(rate=rate))


def make_spec(
    layers: list[model_pb2.Layer],
    timesteps: int = 3,
    features: int = 1,
    task: int = model_pb2.REGRESSION,
    n_classes: int = 0,
    outputs: int = 0,
    learning_rate: float = 0.0,
) -> model_pb2.ModelSpec:
    return model_pb2.ModelSpec(
        input=model_pb2.InputShape(timesteps=timesteps, features=features),
        layers=layers,
        head=model_pb2.Head(task=task, n_classes=n_classes, outputs=outputs),
        optimizer=model_pb2.Optimizer(learning_rate=learning_rate),
    )


def seed_spec(learning_rate: float = 0.01) -> model_pb2.ModelSpec:
    """The seed's stack: LSTM(10, relu) -> LSTM(2, relu) -> LSTM(10, relu), return_sequences derived."""
    return make_spec([lstm(10, "relu"), lstm(2, "relu"), lstm(10, "relu")], learning_rate=learning_rate)


def tiny_spec(units: int = 4, **kwargs: object) -> model_pb2.ModelSpec:
    return make_spec([lstm(units)], **kwargs)  # type: ignore[arg-type]


def scaler(
    kind: int = scaler_pb2.MINMAX, layout: int = scaler_pb2.LAYOUT_UNSPECIFIED
) -> scaler_pb2.ScalerSpec:
    return scaler_pb2.ScalerSpec(kind=kind, layout=layout)


def supervised(x: np.ndarray, y: np.ndarray) -> model_pb2.SupervisedData:
    return model_pb2.SupervisedData(x=codec.from_numpy(x), y=codec.from_numpy(y))


def train_request(
    spec: model_pb2.ModelSpec, x: np.ndarray, y: np.ndarray, **fields: object
) -> model_pb2.TrainRequest:
    request = model_pb2.TrainRequest(spec=spec, supervised=supervised(x, y))
    for name, value in {"epochs": 2, "batch_size": 4, "seed": 1, **fields}.items():
        if isinstance(value, scaler_pb2.ScalerSpec | model_pb2.EarlyStopping):
            getattr(request, name).CopyFrom(value)
        else:
            setattr(request, name, value)
    return request


def train(
    stub: model_pb2_grpc.ModelServiceStub, request: model_pb2.TrainRequest, timeout: float = 120
) -> tuple[list[model_pb2.TrainEvent], model_pb2.ModelInfo]:
    events = list(stub.Train(request, timeout=timeout))
    assert events and events[-1].HasField("done"), f"Train ended without a done event: {events[-1:]}"
    return events, events[-1].done


def predict(
    stub: model_pb2_grpc.ModelServiceStub, model_id: str, x: np.ndarray, version: int = 0
) -> model_pb2.PredictResponse:
    return stub.Predict(
        model_pb2.PredictRequest(model_id=model_id, version=version, x=codec.from_numpy(x)), timeout=30
    )


def values(response: model_pb2.PredictResponse) -> np.ndarray:
    return codec.to_numpy(response.values)


def status_of(call: object, *args: object, **kwargs: object) -> tuple[grpc.StatusCode, str]:
    """Run a unary call (or drain a stream) expected to fail; its status code and details."""
    try:
        result = call(*args, **kwargs)  # type: ignore[operator]
        if hasattr(result, "__iter__") and not hasattr(result, "ListFields"):
            list(result)
    except grpc.RpcError as exc:
        return exc.code(), exc.details() or ""
    raise AssertionError("the call succeeded but was expected to fail")
