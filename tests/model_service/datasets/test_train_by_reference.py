"""Train by reference over gRPC: a stored dataset trains like the same data sent inline, is held while
a job uses it, and bad references get precise statuses (the trainer process does the work)."""

from __future__ import annotations

import threading

import grpc
import numpy as np
import pytest

from protos.lstm_stack.v1 import dataset_pb2, dataset_pb2_grpc, model_pb2, scaler_pb2
from service_common import codec
from tests.model_service.conftest import ModelServerHandle
from tests.model_service.datasets.helpers import series_chunks, supervised_chunks, toy_series, upload
from tests.model_service.datasets.test_dataset_servicer import _wait_until
from tests.model_service.helpers import predict, scaler, status_of, tiny_spec, train, values

INVALID = grpc.StatusCode.INVALID_ARGUMENT
SERIES = toy_series(300, 2, seed=3)
# The module's first Train starts the trainer process (a TensorFlow import): slow on a loaded machine.
TRAIN_TIMEOUT = 600


@pytest.fixture(scope="module")
def datasets(model_server: ModelServerHandle) -> dataset_pb2_grpc.DatasetServiceStub:
    return dataset_pb2_grpc.DatasetServiceStub(model_server.channel)


@pytest.fixture(scope="module")
def series_id(datasets: dataset_pb2_grpc.DatasetServiceStub) -> str:
    return upload(datasets, series_chunks(SERIES, ["load", "temp"], 70)).id


def _request(source: dataset_pb2.DatasetSource, **fields: object) -> model_pb2.TrainRequest:
    request = model_pb2.TrainRequest(spec=tiny_spec(features=2), dataset=source)
    for name, value in {"epochs": 2, "batch_size": 16, "seed": 4, **fields}.items():
        if isinstance(value, scaler_pb2.ScalerSpec):
            getattr(request, name).CopyFrom(value)
        else:
            setattr(request, name, value)
    return request


def test_a_series_dataset_trains_as_the_same_series_sent_inline(
    model_server: ModelServerHandle, series_id: str
) -> None:
    common = {
        "validation_fraction": 0.2,
        "x_scaling": scaler(scaler_pb2.MINMAX),
        "y_scaling": scaler(scaler_pb2.MINMAX),
    }
    by_reference = _request(
        dataset_pb2.DatasetSource(dataset_id=series_id, target_columns=["temp"]), **common
    )
    events, done = train(model_server.stub, by_reference, TRAIN_TIMEOUT)
    inline = _request(dataset_pb2.DatasetSource(), **common)
    inline.series.CopyFrom(model_pb2.SeriesData(series=codec.from_numpy(SERIES), window=3, target_feature=1))
    _, inline_done = train(model_server.stub, inline, TRAIN_TIMEOUT)

    assert done.dataset_id == series_id and inline_done.dataset_id == ""
    assert (done.n_train, done.n_validation) == (inline_done.n_train, inline_done.n_validation) == (238, 59)
    assert events[0].started.x_scaler.scaler_id and events[0].started.y_scaler.scaler_id
    # Same windows, same time-ordered holdout, same fits (a streamed minmax is exact), same batches.
    assert done.holdout_metrics["mse"] == pytest.approx(inline_done.holdout_metrics["mse"], rel=1e-3)
    probe = np.stack([SERIES[i : i + 3] for i in (0, 100, 290)]).astype(np.float64)
    np.testing.assert_allclose(
        values(predict(model_server.stub, done.id, probe)),
        values(predict(model_server.stub, inline_done.id, probe)),
        rtol=1e-4,
        atol=1e-4,
    )
    info = model_server.stub.GetModel(model_pb2.GetModelRequest(model_id=done.id), timeout=10)
    assert info.dataset_id == series_id
    # It forecasts as the inline model does: the same windows, read from a history of the dataset's
    # columns or from the dataset's own tail.
    assert info.forecast == inline_done.forecast and list(info.forecast.target_columns) == [1]
    by_history = model_server.stub.Forecast(
        model_pb2.ForecastRequest(model_id=done.id, history=codec.from_numpy(SERIES)), timeout=30
    )
    by_tail = model_server.stub.Forecast(
        model_pb2.ForecastRequest(model_id=done.id, dataset_id=series_id), timeout=30
    )
    inline_forecast = model_server.stub.Forecast(
        model_pb2.ForecastRequest(model_id=inline_done.id, history=codec.from_numpy(SERIES)), timeout=30
    )
    assert codec.to_numpy(by_history.point).shape == (1, 1, 1)
    np.testing.assert_array_equal(codec.to_numpy(by_tail.point), codec.to_numpy(by_history.point))
    np.testing.assert_allclose(
        codec.to_numpy(by_history.point), codec.to_numpy(inline_forecast.point), rtol=1e-4, atol=1e-4
    )
    # The same numbers under other column names are not the series the model was trained on.
    renamed = upload(
        dataset_pb2_grpc.DatasetServiceStub(model_server.channel), series_chunks(SERIES, ["temp", "load"], 70)
    )
    code, message = status_of(
        model_server.stub.Forecast,
        model_pb2.ForecastRequest(model_id=done.id, dataset_id=renamed.id),
        timeout=30,
    )
    assert code == INVALID and "['temp', 'load']" in message and "['load', 'temp']" in message, message
    backtest = model_server.stub.Backtest(
        model_pb2.BacktestRequest(model_id=done.id, series=codec.from_numpy(SERIES), windows=3), timeout=60
    )
    assert list(backtest)[-1].summary.windows == 3
    # Retrained on the rows before the origin, windowed as the dataset was: the target is column 1.
    retrained = model_server.stub.Backtest(
        model_pb2.BacktestRequest(model_id=done.id, series=codec.from_numpy(SERIES), windows=1, retrain=True),
        timeout=TRAIN_TIMEOUT,
    )
    window = next(e.window for e in retrained if e.HasField("window"))
    assert window.model_id.startswith("backtest-") and window.origin == 299
    np.testing.assert_array_equal(codec.to_numpy(window.actual), SERIES[299:, [1]])
    assert np.isfinite(codec.to_numpy(window.forecast)).all()


def test_a_supervised_dataset_trains_with_shuffling_and_a_robust_scaler_within_the_limit(
    model_server: ModelServerHandle, datasets: dataset_pb2_grpc.DatasetServiceStub
) -> None:
    rng = np.random.default_rng(8)
    x = rng.normal(size=(200, 3, 1))
    y = (x.sum(axis=(1, 2)) > 0).astype(np.int64)
    dataset_id = upload(datasets, supervised_chunks(x, y, 64)).id
    request = _request(
        dataset_pb2.DatasetSource(dataset_id=dataset_id),
        validation_fraction=0.25,
        shuffle=True,
        x_scaling=scaler(scaler_pb2.ROBUST),
    )
    request.spec.CopyFrom(tiny_spec(task=model_pb2.BINARY))
    events, done = train(model_server.stub, request, TRAIN_TIMEOUT)
    assert (done.n_train, done.n_validation, done.dataset_id) == (150, 50, dataset_id)
    assert set(done.holdout_metrics) == {"accuracy", "log_loss"}
    assert sum(1 for e in events if e.HasField("epoch")) == 2
    # Pre-made samples say nothing of the series they came from: no forecast, and the status says why.
    code, details = status_of(
        model_server.stub.Forecast,
        model_pb2.ForecastRequest(model_id=done.id, history=codec.from_numpy(np.zeros((5, 1)))),
        timeout=30,
    )
    assert code == grpc.StatusCode.FAILED_PRECONDITION
    assert f"stored dataset {dataset_id} of pre-made (x, y) samples" in details, details


@pytest.mark.parametrize(
    ("source", "spec_features", "code", "expected"),
    [
        (
            dataset_pb2.DatasetSource(dataset_id="ds-" + "0" * 32),
            2,
            grpc.StatusCode.NOT_FOUND,
            "upload it first",
        ),
        (dataset_pb2.DatasetSource(dataset_id="nope"), 2, INVALID, "expected 'ds-' and 32 hex digits"),
        (None, 2, INVALID, "dataset.window is 5 but the model's input has timesteps=3"),
        (
            dataset_pb2.DatasetSource(target_columns=["pressure"]),
            2,
            INVALID,
            "'pressure', which is not a column",
        ),
        (dataset_pb2.DatasetSource(input_columns=["load"]), 2, INVALID, "the model's input has features=2"),
        (dataset_pb2.DatasetSource(stride=-1), 2, INVALID, "must be >= 0"),
        (dataset_pb2.DatasetSource(), 3, INVALID, "the model's input has features=3"),
    ],
)
def test_bad_references_are_refused_before_any_job(
    model_server: ModelServerHandle,
    series_id: str,
    source: dataset_pb2.DatasetSource | None,
    spec_features: int,
    code: grpc.StatusCode,
    expected: str,
) -> None:
    source = source or dataset_pb2.DatasetSource(window=5)
    if not source.dataset_id:
        source.dataset_id = series_id
    request = _request(source)
    request.spec.CopyFrom(tiny_spec(features=spec_features))
    got, details = status_of(model_server.stub.Train, request, timeout=TRAIN_TIMEOUT)
    assert (got, expected in details) == (code, True), details
    listed = model_server.stub.ListModels(model_pb2.ListModelsRequest(page_size=1000), timeout=10)
    assert all(m.state == model_pb2.READY for m in listed.models)  # no job was left behind


def test_a_window_longer_than_the_series_is_invalid_argument(
    model_server: ModelServerHandle, datasets: dataset_pb2_grpc.DatasetServiceStub
) -> None:
    short = upload(datasets, series_chunks(np.arange(8.0).reshape(4, 2), ["load", "temp"], 4)).id
    request = _request(dataset_pb2.DatasetSource(dataset_id=short, window=5))
    request.spec.CopyFrom(tiny_spec(timesteps=5, features=2))
    code, details = status_of(model_server.stub.Train, request, timeout=TRAIN_TIMEOUT)
    assert (
        code == INVALID
        and "has 4 rows; a window of 5 followed by 1 target row(s) needs at least 6" in details
    )


def test_a_dataset_in_use_by_a_training_job_cannot_be_deleted(
    model_server: ModelServerHandle, datasets: dataset_pb2_grpc.DatasetServiceStub
) -> None:
    dataset_id = upload(datasets, series_chunks(toy_series(400, 2, seed=11), ["load", "temp"], 100)).id
    request = _request(dataset_pb2.DatasetSource(dataset_id=dataset_id), epochs=5000, batch_size=8)
    call = model_server.stub.Train(request, timeout=TRAIN_TIMEOUT)
    started = threading.Event()

    def drain() -> None:
        try:
            for event in call:
                if event.HasField("started"):
                    started.set()
        except grpc.RpcError:
            pass

    reader = threading.Thread(target=drain, daemon=True)
    reader.start()
    try:
        assert started.wait(TRAIN_TIMEOUT), "the job did not start"
        get = dataset_pb2.GetDatasetRequest(dataset_id=dataset_id)
        assert datasets.GetDataset(get, timeout=10).in_use
        code, details = status_of(
            datasets.DeleteDataset, dataset_pb2.DeleteDatasetRequest(dataset_id=dataset_id), timeout=10
        )
        assert code == grpc.StatusCode.FAILED_PRECONDITION and "in use by 1 running job" in details
    finally:
        call.cancel()
        reader.join(30)
    _wait_until(lambda: not datasets.GetDataset(get, timeout=10).in_use, "the cancelled job to let go", 60)
    datasets.DeleteDataset(dataset_pb2.DeleteDatasetRequest(dataset_id=dataset_id), timeout=10)
    code, _ = status_of(datasets.GetDataset, get, timeout=10)
    assert code == grpc.StatusCode.NOT_FOUND
