"""Forecast and Backtest through the model service (trained models, real RPCs): forecasts of noiseless
series, intervals on known noise, streamed backtests, and a precise status for every bad input."""

from __future__ import annotations

from typing import Any

import grpc
import numpy as np
import pytest

from protos.inference import grpc_service_pb2 as pb
from protos.inference import grpc_service_pb2_grpc as oip_grpc
from protos.lstm_stack.v1 import dataset_pb2_grpc, model_pb2, scaler_pb2
from service_common import codec
from tests.model_service.conftest import ModelServerHandle
from tests.model_service.datasets.helpers import series_chunks, supervised_chunks, upload
from tests.model_service.helpers import lstm, make_spec, scaler, seed_example, status_of, train, train_request
from tests.scaler_service.harness import ScalerServerHandle

PERIOD = 8
SEASONAL = 50 + 10 * np.sin(2 * np.pi * np.arange(96.0) / PERIOD)


def series_request(
    series: np.ndarray, window: int, epochs: int, quantiles: tuple[float, ...] = (), **fields: Any
) -> model_pb2.TrainRequest:
    columns = 1 if series.ndim == 1 else series.shape[1]
    request = model_pb2.TrainRequest(
        spec=make_spec([lstm(16)], timesteps=window, features=columns, learning_rate=0.05),
        series=model_pb2.SeriesData(series=codec.from_numpy(series), window=window, **fields),
        epochs=epochs,
        batch_size=16,
        seed=3,
        validation_fraction=0.2,
        quantiles=list(quantiles),
    )
    request.x_scaling.CopyFrom(scaler())
    request.y_scaling.CopyFrom(scaler())
    return request


@pytest.fixture(scope="module")
def direct(model_server: ModelServerHandle) -> model_pb2.ModelInfo:
    request = series_request(SEASONAL, PERIOD, 40, horizon=4)
    return train(model_server.stub, request, timeout=300)[1]


@pytest.fixture(scope="module")
def recursive(model_server: ModelServerHandle) -> model_pb2.ModelInfo:
    request = series_request(SEASONAL, PERIOD, 40, strategy=model_pb2.RECURSIVE)
    return train(model_server.stub, request, timeout=300)[1]


NOISE_SD = 1.0
NOISY = (
    20 + 5 * np.sin(2 * np.pi * np.arange(400.0) / PERIOD) + np.random.default_rng(5).normal(0, NOISE_SD, 400)
)


@pytest.fixture(scope="module")
def quantile(model_server: ModelServerHandle) -> model_pb2.ModelInfo:
    request = series_request(NOISY, PERIOD, 15, (0.1, 0.5, 0.9), horizon=2)
    return train(model_server.stub, request, timeout=300)[1]


def forecast(
    stub: object, model_id: str, history: np.ndarray, horizon: int = 0
) -> model_pb2.ForecastResponse:
    request = model_pb2.ForecastRequest(model_id=model_id, history=codec.from_numpy(history), horizon=horizon)
    return stub.Forecast(request, timeout=30)  # type: ignore[attr-defined, no-any-return]


def test_a_direct_model_forecasts_a_noiseless_seasonal_series(
    model_server: ModelServerHandle, direct: model_pb2.ModelInfo
) -> None:
    assert direct.forecast.horizon == 4 and direct.spec.head.outputs == 4
    response = forecast(model_server.stub, direct.id, SEASONAL[:80])
    point = codec.to_numpy(response.point)
    assert point.shape == (1, 4, 1) and response.horizon == 4 and list(response.target_columns) == [0]
    # within 5% of the amplitude at every step
    np.testing.assert_allclose(point[0, :, 0], SEASONAL[80:84], atol=0.5)
    assert not response.HasField("quantile_values")


def test_a_recursive_model_walks_further_than_it_was_trained(
    model_server: ModelServerHandle, recursive: model_pb2.ModelInfo
) -> None:
    assert recursive.forecast.strategy == model_pb2.RECURSIVE and recursive.forecast.horizon == 1
    response = forecast(model_server.stub, recursive.id, SEASONAL[:80], horizon=PERIOD)
    point = codec.to_numpy(response.point)[0, :, 0]
    np.testing.assert_allclose(point, SEASONAL[80:88], atol=1.0)


def test_many_series_are_forecast_in_one_call(
    model_server: ModelServerHandle, direct: model_pb2.ModelInfo
) -> None:
    histories = np.stack([SEASONAL[o : o + 40] for o in (0, 3, 5)])[..., None]
    point = codec.to_numpy(forecast(model_server.stub, direct.id, histories, horizon=2).point)
    assert point.shape == (3, 2, 1)
    np.testing.assert_allclose(point[:, :, 0], [SEASONAL[o + 40 : o + 42] for o in (0, 3, 5)], atol=0.5)


def test_quantiles_are_ordered_and_cover_about_their_share(
    model_server: ModelServerHandle, quantile: model_pb2.ModelInfo
) -> None:
    coverage = dict(quantile.holdout_coverage)
    assert list(quantile.forecast.quantiles) == pytest.approx([0.1, 0.5, 0.9])
    assert coverage["nominal"] == pytest.approx(0.8)
    # 78 holdout windows x 2 steps of N(0, 1) noise: 80% nominal, allow for a short training
    assert 0.6 <= coverage["interval"] <= 0.95, coverage
    assert coverage["below_q0.1"] < coverage["below_q0.5"] < coverage["below_q0.9"]
    response = forecast(
        model_server.stub, quantile.id, np.stack([NOISY[i : i + 50] for i in range(30)])[..., None]
    )
    values = codec.to_numpy(response.quantile_values)
    assert values.shape == (30, 2, 1, 3) and list(response.quantiles) == pytest.approx([0.1, 0.5, 0.9])
    assert (np.diff(values, axis=-1) >= 0).all()
    np.testing.assert_array_equal(codec.to_numpy(response.point), values[..., 1])
    # the band is about as wide as the noise's 10%-90% range (2.56 sd)
    assert 1.0 < float(np.mean(values[..., 2] - values[..., 0])) < 5.0


def test_backtest_streams_every_window_then_the_aggregate(
    model_server: ModelServerHandle, quantile: model_pb2.ModelInfo
) -> None:
    request = model_pb2.BacktestRequest(
        model_id=quantile.id, series=codec.from_numpy(NOISY), windows=4, origin_step=5, season_length=PERIOD
    )
    events = list(model_server.stub.Backtest(request, timeout=60))
    windows = [e.window for e in events if e.HasField("window")]
    assert [w.origin for w in windows] == [383, 388, 393, 398] and events[-1].HasField("summary")
    for window in windows:
        assert {"mae", "rmse", "mase", "smape", "coverage", "naive_mae", "seasonal_naive_mae"} <= set(
            window.metrics
        )
        assert codec.to_numpy(window.forecast).shape == (2, 1) == codec.to_numpy(window.lower).shape
        np.testing.assert_array_equal(
            codec.to_numpy(window.actual)[:, 0], NOISY[window.origin : window.origin + 2]
        )
        assert window.model_version == quantile.version
    summary = events[-1].summary
    assert summary.windows == 4
    assert summary.metrics["mae"] == pytest.approx(np.mean([w.metrics["mae"] for w in windows]))


def test_the_model_info_says_how_it_forecasts(
    model_server: ModelServerHandle, quantile: model_pb2.ModelInfo
) -> None:
    info = model_server.stub.GetModel(model_pb2.GetModelRequest(model_id=quantile.id), timeout=10)
    assert info.forecast == quantile.forecast and info.forecast.window == PERIOD
    assert dict(info.holdout_coverage) == dict(quantile.holdout_coverage)


# ---- bad input ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("fields", "fragment"),
    [
        ({"horizon": -1}, "horizon must be in 1..1000"),
        ({"horizon": 1001}, "horizon must be in 1..1000"),
        ({"horizon": 200}, "need at least 208"),
        ({"target_columns": [2]}, "column 2 is out of range"),
        ({"input_columns": [0, 0]}, "names a column twice"),
        ({"strategy": 7}, "series.strategy 7 is not known"),
    ],
)
def test_bad_series_training_is_refused(model_server: ModelServerHandle, fields: dict, fragment: str) -> None:
    request = series_request(SEASONAL, PERIOD, 1, **fields)
    code, details = status_of(model_server.stub.Train, request, timeout=30)
    assert code == grpc.StatusCode.INVALID_ARGUMENT and fragment in details, details


def test_recursive_training_with_unpredicted_covariates_is_refused(model_server: ModelServerHandle) -> None:
    two = np.stack([SEASONAL, np.arange(96.0)], axis=1)
    request = series_request(two, PERIOD, 1, strategy=model_pb2.RECURSIVE, target_columns=[0])
    code, details = status_of(model_server.stub.Train, request, timeout=30)
    assert code == grpc.StatusCode.INVALID_ARGUMENT
    assert "input column(s) [1] are not among target_columns [0]" in details


def test_quantiles_on_supervised_data_are_refused(model_server: ModelServerHandle) -> None:
    x, y = seed_example()
    request = train_request(make_spec([lstm(4)]), x, y)
    request.quantiles.extend([0.1, 0.5, 0.9])
    code, details = status_of(model_server.stub.Train, request, timeout=30)
    assert code == grpc.StatusCode.INVALID_ARGUMENT and "quantiles [0.1, 0.5, 0.9] are for series" in details


def test_bad_forecasts_are_refused_and_the_server_stays_healthy(
    model_server: ModelServerHandle, direct: model_pb2.ModelInfo
) -> None:
    stub = model_server.stub
    cases = [
        (SEASONAL[:5], 0, grpc.StatusCode.INVALID_ARGUMENT, "needs at least one window of 8"),
        (SEASONAL[:40], 5, grpc.StatusCode.INVALID_ARGUMENT, "horizon must be in 1..4"),
        (np.ones((40, 2)), 0, grpc.StatusCode.INVALID_ARGUMENT, "trained on a series of 1 column(s)"),
    ]
    for history, horizon, code, fragment in cases:
        got, details = status_of(
            stub.Forecast,
            model_pb2.ForecastRequest(model_id=direct.id, history=codec.from_numpy(history), horizon=horizon),
            timeout=10,
        )
        assert got == code and fragment in details, details
    got, details = status_of(stub.Forecast, model_pb2.ForecastRequest(model_id=direct.id), timeout=10)
    assert got == grpc.StatusCode.INVALID_ARGUMENT and "history is required" in details
    got, _ = status_of(
        stub.Forecast,
        model_pb2.ForecastRequest(model_id="no-such-model", history=codec.from_numpy(SEASONAL)),
        timeout=10,
    )
    assert got == grpc.StatusCode.NOT_FOUND
    assert forecast(stub, direct.id, SEASONAL[:40]).horizon == 4


def test_a_supervised_model_cannot_forecast(model_server: ModelServerHandle) -> None:
    x, y = seed_example()
    info = train(model_server.stub, train_request(make_spec([lstm(4)]), x, y, epochs=1))[1]
    got, details = status_of(
        model_server.stub.Forecast,
        model_pb2.ForecastRequest(model_id=info.id, history=codec.from_numpy(np.arange(5.0))),
        timeout=10,
    )
    assert got == grpc.StatusCode.FAILED_PRECONDITION and "trained on supervised" in details


@pytest.mark.parametrize(
    ("fields", "code", "fragment"),
    [
        ({"windows": 0}, grpc.StatusCode.INVALID_ARGUMENT, "windows must be in 1..1000"),
        ({"windows": 30}, grpc.StatusCode.INVALID_ARGUMENT, "needs a history of at least one window"),
        ({"windows": 2, "horizon": 9}, grpc.StatusCode.INVALID_ARGUMENT, "horizon must be in 1..4"),
        ({"windows": 2, "season_length": -1}, grpc.StatusCode.INVALID_ARGUMENT, "season_length must be >= 0"),
    ],
)
def test_bad_backtests_are_refused(
    model_server: ModelServerHandle,
    direct: model_pb2.ModelInfo,
    fields: dict,
    code: grpc.StatusCode,
    fragment: str,
) -> None:
    request = model_pb2.BacktestRequest(model_id=direct.id, series=codec.from_numpy(SEASONAL), **fields)
    got, details = status_of(model_server.stub.Backtest, request, timeout=30)
    assert got == code and fragment in details, details


# ---- Open Inference Protocol -------------------------------------------------------------------


def oip_infer(
    model_server: ModelServerHandle, model_id: str, x: np.ndarray, outputs: list[str], **parameters: object
) -> pb.ModelInferResponse:
    request = pb.ModelInferRequest(model_name=model_id)
    request.inputs.add(name="x", datatype="FP64", shape=list(x.shape))
    request.raw_input_contents.append(np.ascontiguousarray(x, dtype="<f8").tobytes())
    for name in outputs:
        request.outputs.add(name=name)
    for key, value in parameters.items():
        if isinstance(value, int):
            request.parameters[key].int64_param = value
        else:
            request.parameters[key].string_param = str(value)
    return oip_grpc.GRPCInferenceServiceStub(model_server.channel).ModelInfer(request, timeout=30)


def output(response: pb.ModelInferResponse, name: str) -> np.ndarray:
    index = [o.name for o in response.outputs].index(name)
    shape = list(response.outputs[index].shape)
    return np.frombuffer(response.raw_output_contents[index], dtype="<f8").reshape(shape)


def test_the_inference_protocol_has_a_forecast_output_with_the_horizon_as_a_parameter(
    model_server: ModelServerHandle, quantile: model_pb2.ModelInfo
) -> None:
    windows = np.stack([NOISY[i : i + PERIOD] for i in (10, 20)])[..., None]
    response = oip_infer(model_server, quantile.id, windows, ["forecast", "forecast_quantiles"], horizon=1)
    point, quantiles = output(response, "forecast"), output(response, "forecast_quantiles")
    assert point.shape == (2, 1, 1) and quantiles.shape == (2, 1, 1, 3)
    expected = forecast(model_server.stub, quantile.id, windows, horizon=1)
    np.testing.assert_allclose(point, codec.to_numpy(expected.point))
    np.testing.assert_allclose(quantiles, codec.to_numpy(expected.quantile_values))
    metadata = oip_grpc.GRPCInferenceServiceStub(model_server.channel).ModelMetadata(
        pb.ModelMetadataRequest(name=quantile.id), timeout=10
    )
    assert {o.name: list(o.shape) for o in metadata.outputs}["forecast_quantiles"] == [-1, -1, 1, 3]


def test_a_bad_horizon_parameter_is_refused(
    model_server: ModelServerHandle, direct: model_pb2.ModelInfo
) -> None:
    window = SEASONAL[None, :PERIOD, None]
    for value, fragment in ((9, "horizon must be in 1..4"), ("soon", "must be an integer")):
        try:
            oip_infer(model_server, direct.id, window, ["forecast"], horizon=value)
        except grpc.RpcError as exc:
            assert exc.code() == grpc.StatusCode.INVALID_ARGUMENT and fragment in (exc.details() or "")
        else:
            raise AssertionError(f"horizon={value!r} was accepted")
    # values alone never forecast, whatever the parameter says
    values = output(oip_infer(model_server, direct.id, window, ["values"], horizon=9), "values")
    assert values.shape == (1, 4)


# ---- Backtest with retraining ------------------------------------------------------------------


def test_retraining_backtests_train_on_the_rows_before_each_origin_and_leave_nothing(
    model_server: ModelServerHandle, shared_scaler: ScalerServerHandle
) -> None:
    info = train(model_server.stub, series_request(SEASONAL, PERIOD, 2, horizon=2), timeout=300)[1]

    def run(series: np.ndarray) -> list[model_pb2.BacktestWindow]:
        request = model_pb2.BacktestRequest(
            model_id=info.id, series=codec.from_numpy(series), windows=2, origin_step=4, retrain=True
        )
        events = list(model_server.stub.Backtest(request, timeout=300))
        assert events[-1].HasField("summary") and events[-1].summary.windows == 2
        return [e.window for e in events if e.HasField("window")]

    windows = run(SEASONAL)
    assert [w.origin for w in windows] == [90, 94]
    assert all(w.model_id.startswith("backtest-") and w.model_id != info.id for w in windows)
    # The same recipe and seed on the same rows before the origin: window 0 is unchanged by anything
    # from its origin on, so its scratch model never saw those rows.
    changed = SEASONAL.copy()
    changed[windows[0].origin :] += 100.0
    again = run(changed)
    np.testing.assert_allclose(
        codec.to_numpy(again[0].forecast), codec.to_numpy(windows[0].forecast), rtol=1e-5
    )
    assert not np.allclose(codec.to_numpy(again[1].forecast), codec.to_numpy(windows[1].forecast))
    # The scratch versions and their scalers are gone.
    listed = model_server.stub.ListModels(model_pb2.ListModelsRequest(page_size=1000), timeout=10).models
    assert not [m.id for m in listed if m.id.startswith("backtest-")]
    found = shared_scaler.stub.ListScalers(scaler_pb2.ListScalersRequest(page_size=1000), timeout=10).scalers
    assert not [s.id for s in found if s.id.startswith("backtest-")]


def test_a_forecast_can_read_its_history_from_a_stored_series_dataset(
    model_server: ModelServerHandle, direct: model_pb2.ModelInfo
) -> None:
    datasets = dataset_pb2_grpc.DatasetServiceStub(model_server.channel)
    # Chunks of 7 rows, stored as one part (a window across parts: datasets/test_upload.py).
    info = upload(datasets, series_chunks(SEASONAL[:80, None], ["y"], rows_per_chunk=7))
    by_dataset = model_server.stub.Forecast(
        model_pb2.ForecastRequest(model_id=direct.id, dataset_id=info.id), timeout=30
    )
    by_history = forecast(model_server.stub, direct.id, SEASONAL[:80])
    np.testing.assert_array_equal(codec.to_numpy(by_dataset.point), codec.to_numpy(by_history.point))


def test_a_bad_forecast_dataset_is_refused(
    model_server: ModelServerHandle, direct: model_pb2.ModelInfo
) -> None:
    datasets = dataset_pb2_grpc.DatasetServiceStub(model_server.channel)
    short = upload(datasets, series_chunks(SEASONAL[:5, None], ["y"], rows_per_chunk=5))
    x, y = seed_example()
    samples = upload(datasets, supervised_chunks(x, y, rows_per_chunk=13))
    cases = [
        (model_pb2.ForecastRequest(model_id=direct.id, dataset_id="ds-" + "0" * 32), grpc.StatusCode.NOT_FOUND,
         "is not stored"),
        (model_pb2.ForecastRequest(model_id=direct.id, dataset_id=short.id),
         grpc.StatusCode.INVALID_ARGUMENT, "has 5 rows; the model's window needs 8"),
        (model_pb2.ForecastRequest(model_id=direct.id, dataset_id=samples.id),
         grpc.StatusCode.FAILED_PRECONDITION, "holds supervised samples"),
        (model_pb2.ForecastRequest(model_id=direct.id, dataset_id=short.id,
                                   history=codec.from_numpy(SEASONAL[:80])),
         grpc.StatusCode.INVALID_ARGUMENT, "give history or dataset_id, not both"),
    ]  # fmt: skip
    for request, code, fragment in cases:
        with pytest.raises(grpc.RpcError) as caught:
            model_server.stub.Forecast(request, timeout=30)
        assert caught.value.code() == code and fragment in (caught.value.details() or ""), caught.value
    assert model_server.health() == "SERVING"


# ---- the point answer of a quantile model --------------------------------------------------------


def test_predict_evaluate_and_oip_values_answer_a_quantile_models_median(
    model_server: ModelServerHandle, quantile: model_pb2.ModelInfo
) -> None:
    windows = np.stack([NOISY[i : i + PERIOD] for i in range(0, 60, 3)])[..., None]
    actual = np.stack([NOISY[i + PERIOD : i + PERIOD + 2] for i in range(0, 60, 3)])
    median = codec.to_numpy(forecast(model_server.stub, quantile.id, windows).point)[..., 0]  # (20, 2)
    predicted = model_server.stub.Predict(
        model_pb2.PredictRequest(model_id=quantile.id, x=codec.from_numpy(windows)), timeout=30
    )
    np.testing.assert_allclose(codec.to_numpy(predicted.values), median)  # not the (20, 6) raw head
    evaluated = model_server.stub.Evaluate(
        model_pb2.EvaluateRequest(
            model_id=quantile.id, x=codec.from_numpy(windows), y=codec.from_numpy(actual)
        ),
        timeout=30,
    )
    assert evaluated.metrics["mae"] == pytest.approx(float(np.mean(np.abs(median - actual))), rel=1e-6)
    values = output(oip_infer(model_server, quantile.id, windows, ["values"]), "values")
    np.testing.assert_allclose(values, median)
    metadata = oip_grpc.GRPCInferenceServiceStub(model_server.channel).ModelMetadata(
        pb.ModelMetadataRequest(name=quantile.id), timeout=10
    )
    assert {o.name: list(o.shape) for o in metadata.outputs}["values"] == [-1, 2]


# ---- conformal calibration ---------------------------------------------------------------------


def test_a_calibrated_quantile_model_reports_its_slice_and_widens_every_forecast(
    model_server: ModelServerHandle,
) -> None:
    request = series_request(NOISY, PERIOD, 15, (0.1, 0.5, 0.9), horizon=2)
    request.calibration_fraction = 0.25
    info = train(model_server.stub, request, timeout=300)[1]
    config = info.forecast
    assert config.calibration_fraction == pytest.approx(0.25)
    assert config.calibration_windows == int(info.n_train * 0.25)  # 1 window skipped (horizon 2) before it
    assert len(config.interval_widening) == 2  # one pair, two steps
    coverage = dict(info.holdout_coverage)
    assert 0.65 <= coverage["interval"] <= 0.95, coverage
    windows = np.stack([NOISY[i : i + 50] for i in range(20)])[..., None]
    response = forecast(model_server.stub, info.id, windows)
    values = codec.to_numpy(response.quantile_values)
    assert (np.diff(values, axis=-1) >= 0).all()
    # the served band is the head's band moved out by the widening (Predict's median is unmoved)
    predicted = codec.to_numpy(
        model_server.stub.Predict(
            model_pb2.PredictRequest(model_id=info.id, x=codec.from_numpy(windows[:, -PERIOD:])), timeout=30
        ).values
    )
    np.testing.assert_allclose(predicted, values[..., 0, 1])


@pytest.mark.parametrize(
    ("quantiles", "fraction", "fragment"),
    [
        ((), 0.2, "set quantiles too"),
        ((0.1, 0.5, 0.9), 1.5, "calibration_fraction must be in [0, 1)"),
        ((0.1, 0.5, 0.9), 0.005, "intervals need at least 4 calibration windows"),
    ],
)
def test_bad_calibration_is_refused(
    model_server: ModelServerHandle, quantiles: tuple[float, ...], fraction: float, fragment: str
) -> None:
    request = series_request(SEASONAL, PERIOD, 1, quantiles)
    request.calibration_fraction = fraction
    code, details = status_of(model_server.stub.Train, request, timeout=30)
    assert code == grpc.StatusCode.INVALID_ARGUMENT and fragment in details, details
