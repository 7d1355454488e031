"""The model service end to end over gRPC, with the scaler service fitting every scaler."""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest

from protos.lstm_stack.v1 import model_pb2, scaler_pb2
from service_common import codec
from tests.model_service.conftest import ModelServerHandle
from tests.model_service.helpers import (
    SEED_QUERY,
    dense,
    lstm,
    make_spec,
    outlier_example,
    predict,
    reshape,
    scaler,
    seed_example,
    seed_spec,
    supervised,
    tiny_spec,
    train,
    train_request,
    values,
)
from tests.scaler_service.harness import ScalerServerHandle

SEED_SHAPES = ["(None, 3, 10)", "(None, 3, 2)", "(None, 10)", "(None, 1)"]
# The seed's example 1 is 13 samples, and [50, 60, 70] lies past every training window: the answer is
# an extrapolation, and one training run depends on its initialisation. With this configuration (x MinMax
# per column, y MinMax, 100 epochs, batch 4, shuffled) seeds 0..9 gave, through the services,
# [74.1, 81.9, 79.7, 55.4, 82.4, 82.0, 81.0, 84.5, 20.8, 82.7]: most runs land near 80, a few saturate
# or die. So the test trains the first three seeds (not picked for their results) and asserts their
# MEDIAN is in 70..90: one bad run, e.g. from another CPU's float rounding, cannot fail it, and the
# figure asserted is the typical result rather than a lucky one.
SEED_TRAINING = {"epochs": 100, "batch_size": 4, "shuffle": True}
SEED_EXAMPLE_SEEDS = (0, 1, 2)


def test_validate_spec_reports_the_seed_shapes(model_server: ModelServerHandle) -> None:
    reply = model_server.stub.ValidateSpec(model_pb2.ValidateSpecRequest(spec=seed_spec()), timeout=30)
    assert [layer.output_shape_text for layer in reply.layers] == SEED_SHAPES
    assert [list(layer.output_shape) for layer in reply.layers[:3]] == [[-1, 3, 10], [-1, 3, 2], [-1, 10]]
    assert [layer.kind for layer in reply.layers] == ["lstm", "lstm", "lstm", "head"]
    assert [layer.params for layer in reply.layers] == [480, 104, 520, 11]
    assert reply.total_params == 1115
    assert list(reply.input_shape) == [-1, 3, 1]
    resolved = reply.resolved_spec
    assert [layer.lstm.return_sequences for layer in resolved.layers] == [True, True, False]
    assert resolved.optimizer.name == "adam"
    # The seed's alternative: Reshape instead of return_sequences.
    alternative = make_spec([lstm(10, "relu"), reshape(10, 1), lstm(2, "relu")])
    reply = model_server.stub.ValidateSpec(model_pb2.ValidateSpecRequest(spec=alternative), timeout=30)
    assert [layer.output_shape_text for layer in reply.layers] == [
        "(None, 10)",
        "(None, 10, 1)",
        "(None, 2)",
        "(None, 1)",
    ]


def test_seed_example_predicts_about_80(
    model_server: ModelServerHandle, shared_scaler: ScalerServerHandle
) -> None:
    x, y = seed_example()

    def train_and_predict(seed: int) -> tuple[model_pb2.ModelInfo, float]:
        request = train_request(
            seed_spec(),
            x,
            y,
            seed=seed,
            x_scaling=scaler(scaler_pb2.MINMAX, scaler_pb2.PER_COLUMN),
            y_scaling=scaler(scaler_pb2.MINMAX),
            **SEED_TRAINING,
        )
        events, info = train(model_server.stub, request)
        started = events[0].started
        assert (started.n_train, started.n_validation) == (13, 0)
        assert started.x_scaler.scaler_id == f"{info.id}-x" and started.y_scaler.scaler_id == f"{info.id}-y"
        epochs = [e.epoch for e in events if e.HasField("epoch")]
        assert [e.epoch for e in epochs] == list(range(1, 101))
        assert all(e.loss >= 0 and e.rows_per_second > 0 and "mae" in e.metrics for e in epochs)
        assert epochs[-1].loss < epochs[0].loss
        assert info.state == model_pb2.READY and info.version == 1 and info.epochs_run == 100
        assert info.seed == seed
        assert [layer.output_shape_text for layer in info.layers] == SEED_SHAPES
        prediction = values(predict(model_server.stub, info.id, SEED_QUERY))
        assert prediction.shape == (1, 1) and np.isfinite(prediction).all()
        return info, float(prediction[0, 0])

    # Two at a time (the server's default max_training_jobs): same results as one by one, less wall time.
    with ThreadPoolExecutor(max_workers=2) as pool:
        runs = list(pool.map(train_and_predict, SEED_EXAMPLE_SEEDS))
    predictions = [prediction for _, prediction in runs]
    assert 70 <= float(np.median(predictions)) <= 90, predictions
    info = runs[0][0]
    # The scaler service holds the fitted versions the model refers to.
    fitted = shared_scaler.stub.GetScaler(
        scaler_pb2.GetScalerRequest(scaler_id=info.x_scaler.scaler_id), timeout=10
    )
    assert fitted.version == info.x_scaler.version and fitted.n_samples_seen == 13
    assert list(fitted.statistics.data_max) == [40.0, 50.0, 60.0]  # per column, like the seed's (13, 3) array


@pytest.mark.parametrize("kind", [scaler_pb2.STANDARD, scaler_pb2.ROBUST])
def test_outlier_example_trains_with_scalers_fitted_on_the_training_split(
    model_server: ModelServerHandle, shared_scaler: ScalerServerHandle, kind: int
) -> None:
    x, y = outlier_example()
    request = train_request(
        make_spec([lstm(16, "relu"), dense(8, "relu")], learning_rate=0.01),
        x,
        y,
        epochs=40,
        validation_fraction=0.2,
        x_scaling=scaler(kind, scaler_pb2.PER_COLUMN),
        y_scaling=scaler(kind),
    )
    events, info = train(model_server.stub, request)
    assert (info.n_train, info.n_validation) == (11, 3)
    assert all(e.epoch.HasField("val_loss") for e in events if e.HasField("epoch"))
    assert set(info.holdout_metrics) == {"mse", "mae", "rmse"}
    fitted = shared_scaler.stub.GetScaler(
        scaler_pb2.GetScalerRequest(scaler_id=info.x_scaler.scaler_id), timeout=10
    )
    columns = x.reshape(14, 3)[:11]  # fitted on the first 11 samples only, never the holdout
    center = fitted.statistics.mean if kind == scaler_pb2.STANDARD else fitted.statistics.center
    expected = columns.mean(axis=0) if kind == scaler_pb2.STANDARD else np.median(columns, axis=0)
    np.testing.assert_allclose(list(center), expected)
    assert fitted.n_samples_seen == 11
    # Predictions come back in original units: the outliers' scale, not the scaled one.
    predicted = values(predict(model_server.stub, info.id, x))
    assert predicted.shape == (14, 1) and np.isfinite(predicted).all()
    assert predicted[11, 0] > 1000 > abs(predicted[0, 0])
    # The final event carries the streamed per-epoch history; elapsed time grows epoch by epoch.
    epochs = [e.epoch for e in events if e.HasField("epoch")]
    assert list(info.history) == epochs and info.epochs_run == 40
    elapsed = [e.elapsed_seconds for e in epochs]
    assert elapsed[0] > 0 and all(b > a for a, b in zip(elapsed, elapsed[1:], strict=False))
    # Evaluate scores in original units; on the last 3 samples it reproduces the holdout metrics.
    holdout = model_server.stub.Evaluate(
        model_pb2.EvaluateRequest(model_id=info.id, x=codec.from_numpy(x[11:]), y=codec.from_numpy(y[11:])),
        timeout=30,
    )
    assert holdout.n_samples == 3
    for name in ("mse", "mae", "rmse"):
        assert holdout.metrics[name] == pytest.approx(info.holdout_metrics[name], rel=1e-6)
    errors = predicted[11:, 0] - y[11:]
    assert holdout.metrics["mse"] == pytest.approx(np.mean(errors**2), rel=1e-6)
    assert holdout.metrics["mae"] == pytest.approx(np.mean(np.abs(errors)), rel=1e-6)


def test_binary_task_predicts_probabilities_and_labels(model_server: ModelServerHandle) -> None:
    rng = np.random.default_rng(0)
    x = rng.normal(size=(160, 5, 2))
    y = (x[:, :, 0].sum(axis=1) > 0).astype(np.int64)
    spec = make_spec([lstm(8)], timesteps=5, features=2, task=model_pb2.BINARY, learning_rate=0.01)
    _, info = train(
        model_server.stub, train_request(spec, x, y, epochs=15, batch_size=16, validation_fraction=0.25)
    )
    assert set(info.holdout_metrics) == {"accuracy", "log_loss"}
    assert info.holdout_metrics["accuracy"] >= 0.75
    reply = predict(model_server.stub, info.id, x[:20])
    probabilities = codec.to_numpy(reply.probabilities)
    labels = codec.to_numpy(reply.labels)
    assert probabilities.shape == (20, 1) and labels.shape == (20,) and labels.dtype == np.int64
    assert ((probabilities >= 0) & (probabilities <= 1)).all()
    assert labels.tolist() == (probabilities[:, 0] >= 0.5).astype(int).tolist()
    assert not reply.HasField("values")
    metrics = model_server.stub.Evaluate(
        model_pb2.EvaluateRequest(model_id=info.id, x=codec.from_numpy(x[120:]), y=codec.from_numpy(y[120:])),
        timeout=30,
    ).metrics
    assert metrics["accuracy"] == pytest.approx(info.holdout_metrics["accuracy"])
    assert metrics["log_loss"] == pytest.approx(info.holdout_metrics["log_loss"], rel=1e-4)
    # The same figures computed here from Predict's probabilities.
    p = codec.to_numpy(predict(model_server.stub, info.id, x[120:]).probabilities)[:, 0]
    truth = y[120:]
    assert metrics["accuracy"] == pytest.approx(np.mean((p >= 0.5) == truth))
    log_loss = -np.mean(truth * np.log(p) + (1 - truth) * np.log(1 - p))
    assert metrics["log_loss"] == pytest.approx(log_loss, rel=1e-4)


def test_multiclass_task_probabilities_sum_to_one(model_server: ModelServerHandle) -> None:
    rng = np.random.default_rng(1)
    x = rng.uniform(-1, 1, size=(180, 4, 1))
    y = np.digitize(x.mean(axis=(1, 2)), [-0.2, 0.2])  # three classes by the window's mean
    spec = make_spec(
        [lstm(12), dense(8, "relu")], timesteps=4, task=model_pb2.MULTICLASS, n_classes=3, learning_rate=0.01
    )
    _, info = train(
        model_server.stub, train_request(spec, x, y, epochs=15, batch_size=16, validation_fraction=0.2)
    )
    assert info.holdout_metrics["accuracy"] > 0.5  # chance is 1/3
    reply = predict(model_server.stub, info.id, x[:30, :, 0])  # (batch, timesteps) works when features == 1
    probabilities = codec.to_numpy(reply.probabilities)
    assert probabilities.shape == (30, 3)
    assert ((probabilities >= 0) & (probabilities <= 1)).all()
    np.testing.assert_allclose(probabilities.sum(axis=1), 1.0, atol=1e-5)
    assert codec.to_numpy(reply.labels).tolist() == probabilities.argmax(axis=1).tolist()


def test_series_training_makes_windows(model_server: ModelServerHandle) -> None:
    series = np.arange(1.0, 31.0)
    request = model_pb2.TrainRequest(
        spec=tiny_spec(),
        series=model_pb2.SeriesData(series=codec.from_numpy(series), window=3),
        epochs=2,
        validation_fraction=0.1,
    )
    events, info = train(model_server.stub, request)
    assert (events[0].started.n_train, events[0].started.n_validation) == (24, 3)
    assert not info.HasField("x_scaler")
    # The windows are the seed's: [1, 2, 3] -> 4, ... Training on them directly, with the same seed,
    # gives the very same model.
    x = np.stack([series[i : i + 3] for i in range(27)]).reshape(27, 3, 1)
    same = model_pb2.TrainRequest(
        spec=tiny_spec(), supervised=supervised(x, series[3:]), epochs=2, validation_fraction=0.1
    )
    _, twin = train(model_server.stub, same)
    np.testing.assert_allclose(
        values(predict(model_server.stub, twin.id, x)),
        values(predict(model_server.stub, info.id, x)),
        rtol=1e-6,
    )
    assert twin.holdout_metrics == pytest.approx(info.holdout_metrics, rel=1e-6)


def test_early_stopping_ends_training_and_the_events_say_so(model_server: ModelServerHandle) -> None:
    x, y = seed_example()
    # Nothing counts as an improvement after the first epoch (min_delta is enormous): stop after 1 + patience.
    request = train_request(
        tiny_spec(),
        x,
        y,
        epochs=50,
        validation_fraction=0.2,
        early_stopping=model_pb2.EarlyStopping(patience=2, min_delta=1e9),
    )
    events, info = train(model_server.stub, request)
    epochs = [e.epoch for e in events if e.HasField("epoch")]
    assert [e.epoch for e in epochs] == [1, 2, 3] and all(e.epochs == 50 for e in epochs)
    assert info.epochs_run == 3 and len(info.history) == 3


def test_versions_list_paging_get_and_delete(model_server: ModelServerHandle) -> None:
    stub = model_server.stub
    x, y = seed_example()
    infos = [train(stub, train_request(tiny_spec(), x, y, model_id="paged", seed=s))[1] for s in (1, 2, 3)]
    assert [i.version for i in infos] == [1, 2, 3]
    assert stub.GetModel(model_pb2.GetModelRequest(model_id="paged"), timeout=10).version == 3
    got = stub.GetModel(model_pb2.GetModelRequest(model_id="paged", version=2), timeout=10)
    assert (
        got.seed == 2
        and got.state == model_pb2.READY
        and len(got.history) == 2
        and got.created_at.endswith("Z")
    )
    assert predict(stub, "paged", SEED_QUERY).version == 3
    assert predict(stub, "paged", SEED_QUERY, version=1).version == 1

    seen, token = [], ""
    while True:
        page = stub.ListModels(
            model_pb2.ListModelsRequest(model_id="paged", page_size=2, page_token=token), timeout=10
        )
        seen.extend((m.id, m.version) for m in page.models)
        token = page.next_page_token
        if not token:
            break
    assert seen == [("paged", 1), ("paged", 2), ("paged", 3)]

    deleted = stub.DeleteModel(model_pb2.DeleteModelRequest(model_id="paged", version=3), timeout=10)
    assert list(deleted.deleted_versions) == [3]
    assert predict(stub, "paged", SEED_QUERY).version == 2  # latest ready is now 2
    # Numbers are never reused: the next training is version 4.
    assert train(stub, train_request(tiny_spec(), x, y, model_id="paged"))[1].version == 4
    deleted = stub.DeleteModel(model_pb2.DeleteModelRequest(model_id="paged"), timeout=10)
    assert list(deleted.deleted_versions) == [1, 2, 4]
    assert not (model_server.store / "models" / "paged").exists()


def test_same_seed_same_predictions(model_server: ModelServerHandle) -> None:
    x, y = seed_example()
    fields = {"epochs": 5, "shuffle": True, "x_scaling": scaler(), "y_scaling": scaler(scaler_pb2.STANDARD)}
    spec = make_spec([lstm(8, "relu"), dropout_layer(), lstm(4)])
    runs = [train(model_server.stub, train_request(spec, x, y, seed=seed, **fields))[1] for seed in (5, 5, 6)]
    first, second, other = (values(predict(model_server.stub, info.id, x)) for info in runs)
    np.testing.assert_allclose(first, second, rtol=1e-5, atol=1e-5)
    assert not np.allclose(first, other, rtol=1e-5, atol=1e-5)


def dropout_layer() -> model_pb2.Layer:
    return model_pb2.Layer(dropout=model_pb2.DropoutLayer(rate=0.2))


def test_json_callers_get_values_back(model_server: ModelServerHandle) -> None:
    x, y = seed_example()
    _, info = train(model_server.stub, train_request(tiny_spec(), x, y))
    request = model_pb2.PredictRequest(model_id=info.id)
    request.x.values.extend([50.0, 60.0, 70.0])
    request.x.shape.extend([1, 3])
    reply = model_server.stub.Predict(request, timeout=10)
    assert len(reply.values.values) == 1 and not reply.values.raw and list(reply.values.shape) == [1, 1]
