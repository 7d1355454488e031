"""SIGTERM under mixed load always ends within grace + a small margin (streams open, a job training,
OIP streams mid-flight), and a cancelled job leaves the listing at once."""

from __future__ import annotations

import signal
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import grpc
import numpy as np

from protos.inference import grpc_service_pb2 as pb
from protos.inference import grpc_service_pb2_grpc as oip_grpc
from protos.lstm_stack.v1 import model_pb2, model_pb2_grpc, scaler_pb2, scaler_pb2_grpc
from tests.system import workloads
from tests.system.procs import model_process, running, scaler_process

GRACE_SECONDS = 3.0
DRAIN_SECONDS = 0.5
MARGIN_SECONDS = 6.0


def _infer_request(model_id: str) -> pb.ModelInferRequest:
    x = np.ones((1, 3, 1), np.float32)
    return pb.ModelInferRequest(
        model_name=model_id,
        inputs=[pb.ModelInferRequest.InferInputTensor(name="x", datatype="FP32", shape=[1, 3, 1])],
        raw_input_contents=[x.tobytes()],
    )


def test_sigterm_with_streams_open_and_a_job_training_ends_within_grace(tmp_path: Path) -> None:
    scaler = scaler_process(tmp_path / "scaler-store", tmp_path / "logs")
    model = model_process(
        tmp_path / "model-store",
        tmp_path / "logs",
        scaler,
        "--grace-seconds", str(GRACE_SECONDS),
        "--drain-seconds", str(DRAIN_SECONDS),
    )  # fmt: skip
    release = threading.Event()
    with running(scaler, model), model.channel() as channel, scaler.channel() as to_scaler:
        workloads.train(channel, workloads.train_request("served", epochs=1))

        def held_open(first: object) -> Iterator[object]:
            yield first
            release.wait(60)

        # OIP streams mid-flight, FitStreams waiting for their next chunk, and a long Train.
        oip = oip_grpc.GRPCInferenceServiceStub(channel)
        streams = [oip.ModelStreamInfer(held_open(_infer_request("served")), timeout=60) for _ in range(8)]
        for stream in streams:
            assert next(stream).infer_response.model_name == "served"
        chunk = scaler_pb2.FitChunk(scaler_id="open", spec=scaler_pb2.ScalerSpec(kind=scaler_pb2.MINMAX))
        fits = [
            scaler_pb2_grpc.ScalerServiceStub(to_scaler).FitStream.future(held_open(chunk), timeout=60)
            for _ in range(4)
        ]
        training = model_pb2_grpc.ModelServiceStub(channel).Train(
            workloads.train_request("long", epochs=5000), timeout=60
        )
        assert next(training).HasField("started")
        assert next(training).HasField("epoch")

        started = time.monotonic()
        model.send(signal.SIGTERM)
        code = model.wait_exit(timeout=GRACE_SECONDS + DRAIN_SECONDS + 60)
        took = time.monotonic() - started
        release.set()
        assert code == 0
        assert took <= GRACE_SECONDS + DRAIN_SECONDS + MARGIN_SECONDS, f"stop took {took:.1f}s"
        # The job was cut off and left nothing behind.
        assert not (tmp_path / "model-store" / "models" / "long").exists()
        for future in fits:
            future.cancel()
        assert scaler.health() == "SERVING"


def test_a_cancelled_job_leaves_the_listing_within_a_second_and_a_half(tmp_path: Path) -> None:
    scaler = scaler_process(tmp_path / "scaler-store", tmp_path / "logs")
    model = model_process(tmp_path / "model-store", tmp_path / "logs", scaler)
    with running(scaler, model), model.channel() as channel:
        stub = model_pb2_grpc.ModelServiceStub(channel)
        for attempt in range(3):
            training = stub.Train(workloads.train_request("cancelled", epochs=5000), timeout=120)
            started = next(training).started
            assert next(training).HasField("epoch")
            listed = [(m.id, m.state) for m in workloads.list_models(channel)]
            assert ("cancelled", model_pb2.TRAINING) in listed
            training.cancel()
            ended = time.monotonic()
            while [m for m in workloads.list_models(channel) if m.id == "cancelled"]:
                assert time.monotonic() - ended < 1.5, (
                    f"attempt {attempt}: still listed 1.5 s after the cancel"
                )
                time.sleep(0.02)
            assert not (tmp_path / "model-store" / "models" / "cancelled" / str(started.version)).exists()
        try:
            stub.GetModel(model_pb2.GetModelRequest(model_id="cancelled"), timeout=10)
        except grpc.RpcError as error:
            assert error.code() == grpc.StatusCode.NOT_FOUND
        else:
            raise AssertionError("a cancelled model is still known")
