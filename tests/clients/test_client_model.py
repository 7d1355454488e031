"""The Python client against real in-process scaler and model services."""

from __future__ import annotations

import time

import grpc
import numpy as np
import pytest
from lstm_stack_client import LstmStackClient, LstmStackError, TrainingCancelled, model_spec, scaler_spec

from demo.seed_examples import EXAMPLE1_X, EXAMPLE1_Y
from demo.walkthrough import EXAMPLE1_LAYERS
from protos.lstm_stack.v1 import model_pb2

X = EXAMPLE1_X.reshape(13, 3, 1)
TINY = model_spec("lstm:4", timesteps=3, features=1, learning_rate=0.01)


def test_validate_reports_the_seed_shape_flow(client: LstmStackClient) -> None:
    report = client.model.validate(model_spec(EXAMPLE1_LAYERS, timesteps=3, features=1))
    assert [layer.output_shape_text for layer in report.layers[:3]] == [
        "(None, 3, 10)",
        "(None, 3, 2)",
        "(None, 10)",
    ]
    assert [list(layer.output_shape) for layer in report.layers[:3]] == [[-1, 3, 10], [-1, 3, 2], [-1, 10]]
    assert [layer.return_sequences for layer in report.layers[:3]] == [True, True, False]
    assert report.total_params == sum(layer.params for layer in report.layers)


def test_validate_rejects_an_impossible_spec(client: LstmStackClient) -> None:
    with pytest.raises(LstmStackError) as caught:
        client.model.validate(model_spec("lstm:4:noseq,lstm:4", timesteps=3))
    assert caught.value.code == grpc.StatusCode.INVALID_ARGUMENT
    assert caught.value.attempts == 1


def test_train_predict_evaluate_describe_delete(client: LstmStackClient) -> None:
    run = client.model.train(
        TINY, X, EXAMPLE1_Y, model_id="tiny", epochs=3, seed=1, validation_fraction=0.2,
        x_scaling=scaler_spec("minmax"), y_scaling="minmax",
    )  # fmt: skip
    kinds = [event.WhichOneof("event") for event in run]
    assert kinds == ["started", "epoch", "epoch", "epoch", "done"]
    model = run.result()
    assert (model.id, model.version, model.state) == ("tiny", 1, model_pb2.READY)
    assert run.started is not None and run.started.n_train + run.started.n_validation == 13
    assert [e.epoch for e in run.epochs] == [1, 2, 3] and all(e.HasField("val_loss") for e in run.epochs)
    assert model.x_scaler.scaler_id and model.y_scaler.scaler_id
    # The scalers the model service fitted are real versions in the scaler service.
    assert (
        client.scaler.get(model.x_scaler.scaler_id, version=model.x_scaler.version).n_samples_seen
        == run.started.n_train
    )

    prediction = client.model.predict("tiny", X[:4])
    assert prediction.values is not None and prediction.values.shape == (4, 1)
    assert prediction.values.dtype.kind == "f" and np.isfinite(prediction.values).all()
    assert (prediction.model_id, prediction.version) == ("tiny", 1)
    one = client.model.predict("tiny", [50, 60, 70])  # one window, 1-D
    assert one.values is not None and one.values.shape == (1, 1)

    evaluation = client.model.evaluate("tiny", X, EXAMPLE1_Y)
    assert evaluation.n_samples == 13
    assert {"mse", "mae", "rmse"} <= set(evaluation.metrics)
    assert evaluation.metrics["rmse"] == pytest.approx(np.sqrt(evaluation.metrics["mse"]))

    assert client.model.get("tiny").version == 1
    assert [(m.id, m.version) for m in client.model.list("tiny")] == [("tiny", 1)]
    assert client.model.delete("tiny") == [1]
    with pytest.raises(LstmStackError) as caught:
        client.model.predict("tiny", X[:1])
    assert caught.value.code == grpc.StatusCode.NOT_FOUND


def test_train_on_a_raw_series(client: LstmStackClient) -> None:
    model = client.model.train(TINY, series=np.arange(1.0, 21.0), window=3, epochs=2, seed=1).result()
    assert model.n_train + model.n_validation == 17
    assert client.model.predict(model.id, [18, 19, 20]).values is not None
    client.model.delete(model.id)


def test_binary_task_returns_probabilities_and_labels(client: LstmStackClient) -> None:
    spec = model_spec("lstm:4", timesteps=3, features=1, task="binary")
    labels = (EXAMPLE1_Y > 20).astype(np.int64)
    model = client.model.train(spec, X, labels, epochs=2, seed=1).result()
    prediction = client.model.predict(model.id, X)
    assert prediction.values is None
    assert prediction.probabilities is not None and prediction.probabilities.shape == (13, 1)
    assert ((prediction.probabilities >= 0) & (prediction.probabilities <= 1)).all()
    assert prediction.labels is not None and set(prediction.labels.tolist()) <= {0, 1}
    client.model.delete(model.id)


def test_cancelled_training_leaves_no_model(client: LstmStackClient) -> None:
    run = client.model.train(TINY, X, EXAMPLE1_Y, model_id="cancel-me", epochs=5000, seed=1)
    for event in run:
        if event.WhichOneof("event") == "epoch":
            run.cancel()
    assert run.cancelled and run.model is None and len(run.epochs) >= 1
    with pytest.raises(TrainingCancelled):
        run.result()
    # The service stops the job within a batch; poll briefly rather than assume it is instant.
    deadline = time.monotonic() + 20
    while client.model.list("cancel-me") and time.monotonic() < deadline:
        time.sleep(0.2)
    assert client.model.list("cancel-me") == []
    with pytest.raises(LstmStackError) as caught:
        client.model.get("cancel-me")
    assert caught.value.code == grpc.StatusCode.NOT_FOUND


def test_wrong_input_shape_is_invalid_argument(client: LstmStackClient) -> None:
    model = client.model.train(TINY, X, EXAMPLE1_Y, epochs=1, seed=1).result()
    with pytest.raises(LstmStackError) as caught:
        client.model.predict(model.id, np.ones((2, 5, 1)))
    assert caught.value.code == grpc.StatusCode.INVALID_ARGUMENT
    client.model.delete(model.id)


def test_both_services_report_serving(client: LstmStackClient) -> None:
    client.wait_until_serving(timeout=10)
    assert client.model.health() == "SERVING"
