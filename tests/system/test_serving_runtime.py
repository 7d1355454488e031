"""The serving process runs ONNX Runtime only: TensorFlow lives in the trainer process.

A real model service (one worker) over an empty store answers SERVING within 2 s of its start, and after
it has answered every kind of inference call (Predict, Evaluate, ModelInfer, ModelStreamInfer,
Forecast, Backtest, an ONNX export) on versions its trainer process made, no TensorFlow library is
mapped into it: Keras cannot be imported without TensorFlow's, so neither module is loaded.
"""

from __future__ import annotations

import time
from pathlib import Path

import grpc
import numpy as np
import pytest

from protos.inference import grpc_service_pb2 as pb
from protos.inference import grpc_service_pb2_grpc as oip_grpc
from protos.lstm_stack.v1 import model_pb2, model_pb2_grpc, scaler_pb2
from service_common import codec
from tests.system import workloads
from tests.system.procs import ServiceProcess, model_process, running, scaler_process

PERIOD = 6
SERIES = 20 + 5 * np.sin(2 * np.pi * np.arange(120.0) / PERIOD)
# A fresh worker over an empty store: SERVING within this long of its start.
EMPTY_STORE_START_SECONDS = 2.0


def mapped_libraries(pid: int) -> set[str]:
    """The files mapped into ``pid``'s address space (its shared libraries among them)."""
    lines = Path(f"/proc/{pid}/maps").read_text().splitlines()
    return {line.split(maxsplit=5)[5] for line in lines if len(line.split(maxsplit=5)) == 6}


def tensorflow_in(pid: int) -> list[str]:
    return sorted(path for path in mapped_libraries(pid) if "tensorflow" in path or "/keras/" in path)


def seconds_to_serving(service: ServiceProcess) -> float:
    started = time.monotonic()
    service.start(wait=False)
    try:
        service.wait_serving(timeout=60)
        return time.monotonic() - started
    finally:
        service.stop()


def test_a_worker_over_an_empty_store_serves_within_two_seconds(tmp_path: Path) -> None:
    scaler = scaler_process(tmp_path / "scaler-store", tmp_path / "logs")
    model = model_process(tmp_path / "model-store", tmp_path / "logs", scaler, "--workers", "1")
    # The best of three starts: the figure is the process's, not the shared machine's busiest moment.
    timings = [seconds_to_serving(model) for _ in range(3)]
    assert min(timings) <= EMPTY_STORE_START_SECONDS, timings


def series_request() -> model_pb2.TrainRequest:
    request = model_pb2.TrainRequest(
        model_id="series",
        spec=workloads.tiny_spec(),
        series=model_pb2.SeriesData(series=codec.from_numpy(SERIES), window=3, horizon=2),
        epochs=2,
        batch_size=16,
        seed=1,
    )
    request.spec.head.outputs = 0  # the series' horizon decides it
    request.x_scaling.CopyFrom(scaler_pb2.ScalerSpec(kind=scaler_pb2.MINMAX))
    request.y_scaling.CopyFrom(scaler_pb2.ScalerSpec(kind=scaler_pb2.MINMAX))
    return request


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory):  # type: ignore[no-untyped-def]
    root = tmp_path_factory.mktemp("serving-runtime")
    scaler = scaler_process(root / "scaler-store", root / "logs")
    model = model_process(root / "model-store", root / "logs", scaler, "--workers", "1")
    with running(scaler, model):
        yield model


def test_every_inference_call_is_served_without_tensorflow_in_the_worker(stack: ServiceProcess) -> None:
    model = stack
    assert model.proc is not None
    with model.channel() as channel:
        stub = model_pb2_grpc.ModelServiceStub(channel)
        oip = oip_grpc.GRPCInferenceServiceStub(channel)
        base = workloads.train(channel, workloads.train_request("base", epochs=2))
        series = workloads.train(channel, series_request())
        assert tensorflow_in(model.proc.pid) == []  # training ran in the trainer process

        x, y = workloads.seed_windows()
        predicted = codec.to_numpy(
            stub.Predict(model_pb2.PredictRequest(model_id="base", x=codec.from_numpy(x)), timeout=30).values
        )
        assert predicted.shape == (13, 1) and np.isfinite(predicted).all()
        metrics = stub.Evaluate(
            model_pb2.EvaluateRequest(model_id="base", x=codec.from_numpy(x), y=codec.from_numpy(y)),
            timeout=30,
        ).metrics
        assert metrics["mae"] >= 0
        tensor = pb.ModelInferRequest.InferInputTensor(name="x", datatype="FP64", shape=[13, 3, 1])
        infer = pb.ModelInferRequest(
            model_name="base", inputs=[tensor], raw_input_contents=[x.astype("<f8").tobytes()]
        )
        reply = oip.ModelInfer(infer, timeout=30)
        got = np.frombuffer(reply.raw_output_contents[0], "<f8").reshape(13, 1)
        np.testing.assert_allclose(got, predicted, rtol=1e-6)
        streamed = list(oip.ModelStreamInfer(iter([infer]), timeout=30))
        assert not streamed[0].error_message
        forecast = stub.Forecast(
            model_pb2.ForecastRequest(model_id="series", history=codec.from_numpy(SERIES[-3:])), timeout=30
        )
        assert codec.to_numpy(forecast.point).shape == (1, 2, 1)  # one series, 2 steps, 1 target
        backtest = list(
            stub.Backtest(
                model_pb2.BacktestRequest(model_id="series", series=codec.from_numpy(SERIES), windows=2),
                timeout=60,
            )
        )
        assert backtest[-1].HasField("summary") and backtest[-1].summary.windows == 2
        chunks = list(
            stub.ExportModel(
                model_pb2.ExportModelRequest(model_id="base", format=model_pb2.EXPORT_ONNX), timeout=60
            )
        )
        assert chunks[0].info.file_name.endswith(".onnx")
        with pytest.raises(grpc.RpcError) as refused:
            stub.Predict(model_pb2.PredictRequest(model_id="nope", x=codec.from_numpy(x)), timeout=10)
        assert refused.value.code() == grpc.StatusCode.NOT_FOUND
    assert (base.version, series.version) == (1, 1)
    assert tensorflow_in(model.proc.pid) == []
    assert any("onnxruntime" in path for path in mapped_libraries(model.proc.pid))  # what it serves with
