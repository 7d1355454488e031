"""Every bad input gets a precise status and a message naming expected vs received; never UNKNOWN."""

from __future__ import annotations

from collections.abc import Callable

import grpc
import numpy as np
import pytest

from protos.lstm_stack.v1 import model_pb2, scaler_pb2, tensor_pb2
from service_common import codec
from tests.model_service.conftest import ModelServerHandle
from tests.model_service.helpers import (
    dense,
    lstm,
    make_spec,
    reshape,
    scaler,
    seed_example,
    status_of,
    tiny_spec,
    train,
    train_request,
)

INVALID = grpc.StatusCode.INVALID_ARGUMENT


@pytest.fixture(scope="module")
def ready_model(model_server: ModelServerHandle) -> str:
    x, y = seed_example()
    return train(model_server.stub, train_request(tiny_spec(), x, y, model_id="ready"))[1].id


@pytest.fixture(scope="module")
def ready_classifier(model_server: ModelServerHandle) -> str:
    x, _ = seed_example()
    y = np.array([0, 1, 2] * 4 + [0])
    spec = make_spec([lstm(4)], task=model_pb2.MULTICLASS, n_classes=3)
    return train(model_server.stub, train_request(spec, x, y, model_id="classes"))[1].id


@pytest.mark.parametrize(
    ("spec", "fragments"),
    [
        (make_spec([lstm(10), lstm(2, return_sequences=False), lstm(4)]), ["layers[2] (lstm)", "(None, 2)"]),
        (make_spec([lstm(10), reshape(3, 4), lstm(2)]), ["layers[1] (reshape)", "(None, 10)", "12 values"]),
        (make_spec([lstm(4, "relux")]), ["unknown activation 'relux'"]),
        (make_spec([lstm(4)], task=model_pb2.MULTICLASS, n_classes=1), ["n_classes >= 2"]),
        (make_spec([lstm(4)], task=model_pb2.TASK_UNSPECIFIED), ["head.task is required"]),
        (make_spec([]), ["no layers"]),
        (make_spec([lstm(-3)]), ["units", "-3"]),
        (make_spec([lstm(4), model_pb2.Layer()]), ["layers[1]: no layer kind set"]),
        (make_spec([lstm(4)], timesteps=0), ["input.timesteps"]),
        (make_spec([lstm(4), dense(3, "softmax2")]), ["layers[1] (dense)"]),
    ],
)
def test_invalid_specs(
    model_server: ModelServerHandle, spec: model_pb2.ModelSpec, fragments: list[str]
) -> None:
    code, details = status_of(
        model_server.stub.ValidateSpec, model_pb2.ValidateSpecRequest(spec=spec), timeout=30
    )
    assert code == INVALID
    for fragment in fragments:
        assert fragment in details
    x, y = seed_example()
    code, train_details = status_of(model_server.stub.Train, train_request(spec, x, y), timeout=30)
    assert (code, train_details) == (INVALID, details)


def train_status(server: ModelServerHandle, request: model_pb2.TrainRequest) -> tuple[grpc.StatusCode, str]:
    return status_of(server.stub.Train, request, timeout=60)


X, Y = seed_example()
NAN_X = X.copy()
NAN_X[2, 1, 0] = np.nan
INF_Y = Y.copy()
INF_Y[4] = np.inf


@pytest.mark.parametrize(
    ("make_request", "code", "fragments"),
    [
        (
            lambda: train_request(tiny_spec(), X[:, :2], Y),
            INVALID,
            ["x has shape [13, 2, 1]", "(samples, 3, 1)"],
        ),
        (lambda: train_request(tiny_spec(), np.ones((13, 3, 2)), Y), INVALID, ["[13, 3, 2]", "features=1"]),
        (lambda: train_request(tiny_spec(), NAN_X, Y), INVALID, ["finite", "nan", "[2, 1, 0]"]),
        (lambda: train_request(tiny_spec(), X, INF_Y), INVALID, ["y: values must be finite", "inf"]),
        (lambda: train_request(tiny_spec(), X[:0], Y[:0]), INVALID, ["x is empty"]),
        (lambda: train_request(tiny_spec(), X, Y[:12]), INVALID, ["x has 13 samples but y has 12"]),
        (
            lambda: train_request(
                make_spec([lstm(4)], task=model_pb2.MULTICLASS, n_classes=3), X, np.arange(13) % 4
            ),
            INVALID,
            ["y[3] = 3 is out of range", "0..2"],
        ),
        (
            lambda: train_request(make_spec([lstm(4)], task=model_pb2.BINARY), X, np.arange(13) % 3),
            INVALID,
            ["y[2] = 2 is out of range", "{0, 1}"],
        ),
        (
            lambda: train_request(tiny_spec(), X, Y, epochs=100_000),
            INVALID,
            ["epochs must be in 1..10000", "100000"],
        ),
        (lambda: train_request(tiny_spec(), X, Y, epochs=-1), INVALID, ["epochs", "-1"]),
        (
            lambda: train_request(tiny_spec(), X, Y, batch_size=10_000_000),
            INVALID,
            ["batch_size", "10000000"],
        ),
        (lambda: train_request(tiny_spec(), X, Y, validation_fraction=1.5), INVALID, ["validation_fraction"]),
        (
            lambda: train_request(
                make_spec([lstm(4)], task=model_pb2.BINARY), X, np.arange(13) % 2, y_scaling=scaler()
            ),
            INVALID,
            ["y_scaling is for REGRESSION only"],
        ),
        (
            lambda: train_request(
                tiny_spec(), X, Y, x_scaling=scaler_pb2.ScalerSpec(kind=scaler_pb2.ROBUST, minmax={})
            ),
            INVALID,
            ["scaler service rejected scaler", "minmax"],
        ),
        (lambda: model_pb2.TrainRequest(spec=tiny_spec(), epochs=1), INVALID, ["training data is missing"]),
        (
            lambda: model_pb2.TrainRequest(
                spec=tiny_spec(), supervised=model_pb2.SupervisedData(x=codec.from_numpy(X))
            ),
            INVALID,
            ["supervised.y is required"],
        ),
        (
            lambda: train_request(tiny_spec(), X, Y, model_id="../etc"),
            INVALID,
            ["model id '../etc' is not valid"],
        ),
        (
            lambda: train_request(tiny_spec(), np.zeros((20_001, 3, 1)), np.zeros(20_001), epochs=10_000),
            grpc.StatusCode.RESOURCE_EXHAUSTED,
            ["max_training_work"],
        ),
        (
            lambda: train_request(tiny_spec(), X, np.where(np.arange(13) == 5, 1e300, Y)),
            INVALID,
            ["y: the model's float32 holds only values within ±3.403e+38; found 1e+300 at index [5, 0]"],
        ),
        (
            lambda: train_request(tiny_spec(), np.where(X > 50, 1e39, X), Y),
            INVALID,
            ["x: the model's float32 holds only values within", "found 1e+39"],
        ),
        (
            # 2000 timesteps through a wide Dense: a batch of 32 rows alone needs gigabytes.
            lambda: train_request(
                make_spec([lstm(8, return_sequences=True), dense(1024, "relu"), lstm(4)], timesteps=2000),
                np.zeros((40, 2000, 1)),
                np.zeros(40),
                batch_size=32,
            ),
            grpc.StatusCode.RESOURCE_EXHAUSTED,
            [
                "training with batch_size 32 needs an estimated",
                "above the budget memory_budget_mb=2048",
                "use batch_size",
            ],
        ),
    ],
)
def test_bad_training_requests(
    model_server: ModelServerHandle,
    make_request: Callable[[], model_pb2.TrainRequest],
    code: grpc.StatusCode,
    fragments: list[str],
) -> None:
    got, details = train_status(model_server, make_request())
    assert got == code, details
    for fragment in fragments:
        assert fragment in details, details


def test_bad_tensor_bytes(model_server: ModelServerHandle) -> None:
    broken = tensor_pb2.Tensor(dtype=tensor_pb2.FLOAT64, shape=[13, 3, 1], raw=b"\0" * 10)
    request = model_pb2.TrainRequest(
        spec=tiny_spec(), supervised=model_pb2.SupervisedData(x=broken, y=codec.from_numpy(Y))
    )
    code, details = train_status(model_server, request)
    assert code == INVALID and "needs 312 bytes, got 10" in details


def predict_status(
    server: ModelServerHandle, model_id: str, x: np.ndarray, version: int = 0
) -> tuple[grpc.StatusCode, str]:
    request = model_pb2.PredictRequest(model_id=model_id, version=version, x=codec.from_numpy(x))
    return status_of(server.stub.Predict, request, timeout=30)


@pytest.mark.parametrize(
    ("x", "fragments"),
    [
        (np.ones((2, 4, 1)), ["x has shape [2, 4, 1]", "(batch, 3, 1)"]),
        (np.ones((2, 3, 5)), ["x has shape [2, 3, 5]", "features=1"]),
        (np.ones(3), ["x has shape [3]"]),
        (np.full((1, 3, 1), np.nan), ["finite"]),
        (np.array([[[1.0], [np.inf], [1.0]]]), ["finite", "inf"]),
        (np.ones((0, 3, 1)), ["x is empty"]),
        (
            np.array([[[1.0], [1e300], [1.0]]]),
            ["x: the model's float32 holds only values", "found 1e+300 at index [0, 1, 0]"],
        ),
        (np.ones((1, 3, 1, 1, 1)), ["x has shape [1, 3, 1, 1, 1]; the model expects (batch, 3, 1)"]),
    ],
)
def test_bad_predict_input(
    model_server: ModelServerHandle, ready_model: str, x: np.ndarray, fragments: list[str]
) -> None:
    code, details = predict_status(model_server, ready_model, x)
    assert code == INVALID, details
    for fragment in fragments:
        assert fragment in details


def test_unknown_models_and_versions(model_server: ModelServerHandle, ready_model: str) -> None:
    stub = model_server.stub
    not_found = grpc.StatusCode.NOT_FOUND
    assert predict_status(model_server, "nobody", X)[0] == not_found
    code, details = predict_status(model_server, ready_model, X, version=9)
    assert code == not_found and "has no version 9; it has versions 1" in details
    assert status_of(stub.GetModel, model_pb2.GetModelRequest(model_id="nobody"), timeout=10)[0] == not_found
    assert (
        status_of(stub.GetModel, model_pb2.GetModelRequest(model_id=ready_model, version=5), timeout=10)[0]
        == not_found
    )
    assert (
        status_of(stub.DeleteModel, model_pb2.DeleteModelRequest(model_id="nobody"), timeout=10)[0]
        == not_found
    )
    evaluate = model_pb2.EvaluateRequest(model_id="nobody", x=codec.from_numpy(X), y=codec.from_numpy(Y))
    assert status_of(stub.Evaluate, evaluate, timeout=10)[0] == not_found
    assert predict_status(model_server, "", X)[0] == INVALID


def test_bad_evaluate_input(model_server: ModelServerHandle, ready_model: str, ready_classifier: str) -> None:
    stub = model_server.stub

    def evaluate(model_id: str, x: np.ndarray, y: np.ndarray) -> tuple[grpc.StatusCode, str]:
        request = model_pb2.EvaluateRequest(model_id=model_id, x=codec.from_numpy(x), y=codec.from_numpy(y))
        return status_of(stub.Evaluate, request, timeout=30)

    assert evaluate(ready_model, X, Y[:5]) == (
        INVALID,
        "x has 13 samples but y has 5 (shape [5]); they must match",
    )
    code, details = evaluate(ready_classifier, X, np.full(13, 7))
    assert code == INVALID and "y[0] = 7 is out of range" in details
    code, details = evaluate(ready_model, X[:, :2], Y)
    assert code == INVALID and "[13, 2, 1]" in details
    reply = stub.Evaluate(
        model_pb2.EvaluateRequest(model_id=ready_model, x=codec.from_numpy(X), y=codec.from_numpy(Y))
    )
    assert set(reply.metrics) == {"mse", "mae", "rmse"} and reply.n_samples == 13


def test_bad_list_and_delete_requests(model_server: ModelServerHandle) -> None:
    stub = model_server.stub
    code, details = status_of(stub.ListModels, model_pb2.ListModelsRequest(page_token="garbage!"), timeout=10)
    assert code == INVALID and "page_token" in details
    assert status_of(stub.ListModels, model_pb2.ListModelsRequest(page_size=-1), timeout=10)[0] == INVALID
    assert status_of(stub.DeleteModel, model_pb2.DeleteModelRequest(model_id=""), timeout=10)[0] == INVALID


def test_missing_tensors(model_server: ModelServerHandle, ready_model: str) -> None:
    code, details = status_of(
        model_server.stub.Predict, model_pb2.PredictRequest(model_id=ready_model), timeout=10
    )
    assert (code, details) == (INVALID, "x is required")
    bad_dtype = model_pb2.PredictRequest(
        model_id=ready_model, x=tensor_pb2.Tensor(shape=[1, 3], raw=b"\0" * 24)
    )
    code, details = status_of(model_server.stub.Predict, bad_dtype, timeout=10)
    assert code == INVALID and "dtype" in details


def test_series_checks(model_server: ModelServerHandle) -> None:
    request = model_pb2.TrainRequest(
        spec=tiny_spec(), series=model_pb2.SeriesData(series=codec.from_numpy(np.arange(3.0)), window=3)
    )
    code, details = train_status(model_server, request)
    assert code == INVALID and "series has 3 rows" in details and "need at least 4" in details
    request.series.CopyFrom(model_pb2.SeriesData(series=codec.from_numpy(np.arange(30.0)), window=5))
    code, details = train_status(model_server, request)
    assert code == INVALID and "window is 5 but the model's input has timesteps=3" in details


def test_the_service_still_answers_after_all_that(model_server: ModelServerHandle, ready_model: str) -> None:
    reply = model_server.stub.Predict(
        model_pb2.PredictRequest(model_id=ready_model, x=codec.from_numpy(X)), timeout=10
    )
    assert codec.to_numpy(reply.values).shape == (13, 1)
    listed = model_server.stub.ListModels(model_pb2.ListModelsRequest(page_size=1000), timeout=10).models
    # Nothing a refused request reserved is left behind: only the two fixtures' models exist.
    assert sorted((m.id, m.state) for m in listed) == [
        ("classes", model_pb2.READY),
        ("ready", model_pb2.READY),
    ]
