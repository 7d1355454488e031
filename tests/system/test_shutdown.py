"""SIGTERM while 16 clients call the real service: health turns NOT_SERVING, in-flight calls complete,
new calls get UNAVAILABLE, no other status ever comes back, and the process exits 0."""

from __future__ import annotations

import json
import signal
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import grpc
import numpy as np
from grpc_health.v1 import health_pb2, health_pb2_grpc

from protos.lstm_stack.v1 import model_pb2, model_pb2_grpc, scaler_pb2, scaler_pb2_grpc
from service_common import codec
from service_common.artifacts import ArtifactStore, load_signing_key
from tests.system import workloads
from tests.system.procs import ServiceProcess, model_process, scaler_process

CLIENTS = 16
DRAIN_SECONDS = 1.0
GRACE_SECONDS = 20.0
BACKOFF_SECONDS = 0.02
MAX_REFUSALS = 3
LONG_CALL_SECONDS = DRAIN_SECONDS + 1.5
LONG_CALL_CHUNKS = 25
LONG_TRAINING_EPOCHS = 40


@dataclass
class CallRecord:
    started: float
    ended: float
    code: grpc.StatusCode
    details: str = ""


@dataclass
class LoadResult:
    calls: list[CallRecord] = field(default_factory=list)
    sigterm_at: float = 0.0
    check_statuses: list[str] = field(default_factory=list)
    watch_statuses: list[str] = field(default_factory=list)
    # A long call that spans SIGTERM, the drain and the start of refusals.
    long_call: list[CallRecord] = field(default_factory=list)
    exit_code: int | None = None

    def codes(self) -> set[str]:
        return {c.code.name for c in self.calls}


def _client(
    service: ServiceProcess,
    call: Callable[[grpc.Channel], None],
    out: list[CallRecord],
    stop: threading.Event,
) -> None:
    """Call in a loop; once refused, retry with backoff like a gRPC retry policy, then give up."""
    with service.channel() as channel:
        refusals = 0
        while not stop.is_set() and refusals < MAX_REFUSALS:
            started = time.monotonic()
            details = ""
            try:
                call(channel)
                code = grpc.StatusCode.OK
            except grpc.RpcError as error:
                code, details = error.code(), error.details()
            out.append(CallRecord(started, time.monotonic(), code, details))
            if code == grpc.StatusCode.UNAVAILABLE:
                time.sleep(BACKOFF_SECONDS * 2**refusals)
                refusals += 1


def _watch_health(service: ServiceProcess, out: list[str], ready: threading.Event) -> None:
    with service.channel() as channel:
        stream = health_pb2_grpc.HealthStub(channel).Watch(health_pb2.HealthCheckRequest(), timeout=60)
        try:
            for reply in stream:
                out.append(health_pb2.HealthCheckResponse.ServingStatus.Name(reply.status))
                ready.set()
                if reply.status == health_pb2.HealthCheckResponse.NOT_SERVING:
                    stream.cancel()  # an open Watch would otherwise hold shutdown for the whole grace
                    return
        except grpc.RpcError as error:
            out.append(error.code().name)
        finally:
            ready.set()


def _poll_health(service: ServiceProcess, out: list[str], stop: threading.Event) -> None:
    """Check health often until it reports NOT_SERVING (the drain window), like a load balancer."""
    with service.channel() as channel:
        stub = health_pb2_grpc.HealthStub(channel)
        while not stop.is_set():
            try:
                reply = stub.Check(health_pb2.HealthCheckRequest(), timeout=2)
                status = health_pb2.HealthCheckResponse.ServingStatus.Name(reply.status)
            except grpc.RpcError as error:
                status = error.code().name
            if not out or out[-1] != status:
                out.append(status)
            if status != "SERVING":
                return
            time.sleep(0.02)


def _long_client(
    service: ServiceProcess, call: Callable[[grpc.Channel], None], out: list[CallRecord]
) -> None:
    with service.channel() as channel:
        started = time.monotonic()
        try:
            call(channel)
            out.append(CallRecord(started, time.monotonic(), grpc.StatusCode.OK))
        except grpc.RpcError as error:
            out.append(CallRecord(started, time.monotonic(), error.code(), error.details()))


def sigterm_under_load(
    service: ServiceProcess, call: Callable[[grpc.Channel], None], long_call: Callable[[grpc.Channel], None]
) -> LoadResult:
    """16 clients run ``call`` in loops and one runs ``long_call`` (longer than the drain) across SIGTERM."""
    result = LoadResult()
    per_client: list[list[CallRecord]] = [[] for _ in range(CLIENTS)]
    stop = threading.Event()
    watch_ready = threading.Event()
    threads = [
        threading.Thread(target=_client, args=(service, call, records, stop), daemon=True)
        for records in per_client
    ]
    watcher = threading.Thread(
        target=_watch_health, args=(service, result.watch_statuses, watch_ready), daemon=True
    )
    poller = threading.Thread(target=_poll_health, args=(service, result.check_statuses, stop), daemon=True)
    watcher.start()
    poller.start()
    assert watch_ready.wait(30), "health Watch gave no first status"
    for thread in threads:
        thread.start()
    deadline = time.monotonic() + 60
    while min(len(r) for r in per_client) < 3:
        assert time.monotonic() < deadline, "the load never got going"
        time.sleep(0.05)
    assert result.check_statuses == ["SERVING"], result.check_statuses
    long_thread = threading.Thread(
        target=_long_client, args=(service, long_call, result.long_call), daemon=True
    )
    long_thread.start()
    time.sleep(0.2)
    result.sigterm_at = time.monotonic()
    service.send(signal.SIGTERM)
    try:
        result.exit_code = service.wait_exit(timeout=GRACE_SECONDS + DRAIN_SECONDS + 30)
    finally:
        stop.set()
        for thread in [*threads, watcher, poller, long_thread]:
            thread.join(timeout=30)
    result.calls = [record for records in per_client for record in records]
    # After exit the port is closed: health is unreachable.
    try:
        service.health(timeout=2)
        result.check_statuses.append("STILL ANSWERING")
    except grpc.RpcError as error:
        result.check_statuses.append(error.code().name)
    return result


def assert_clean_shutdown(result: LoadResult, service: ServiceProcess) -> None:
    codes = result.codes()
    odd = [(c.code.name, c.details) for c in result.calls if c.code.name not in {"OK", "UNAVAILABLE"}]
    assert codes == {"OK", "UNAVAILABLE"}, f"statuses seen: {codes} {odd[:5]}\n{service.log_tail()}"
    assert result.exit_code == 0, service.log_tail()
    # Calls sent before SIGTERM, or while draining, were served (margin for the signal's delivery).
    served_window = result.sigterm_at + DRAIN_SECONDS - 0.3
    before = [c for c in result.calls if c.started < served_window]
    assert before and all(c.code == grpc.StatusCode.OK for c in before)
    # Once the server refused one call, every call sent after that was refused with UNAVAILABLE ...
    refusals = [c for c in result.calls if c.code == grpc.StatusCode.UNAVAILABLE]
    first_refusal = min(c.ended for c in refusals)
    assert all(c.code == grpc.StatusCode.UNAVAILABLE for c in result.calls if c.started > first_refusal)
    assert all(c.details for c in refusals)
    # ... while the calls already running then completed normally.
    in_flight = [c for c in result.calls if c.code == grpc.StatusCode.OK and c.ended > first_refusal]
    [long_call] = result.long_call
    assert long_call.code == grpc.StatusCode.OK, long_call
    assert long_call.started < result.sigterm_at and long_call.ended > first_refusal
    # Health: SERVING, NOT_SERVING while draining, then nothing (the port is closed).
    assert result.watch_statuses[0] == "SERVING"
    assert "NOT_SERVING" in result.watch_statuses, result.watch_statuses
    assert result.check_statuses == ["SERVING", "NOT_SERVING", "UNAVAILABLE"], result.check_statuses
    print(
        f"{len(result.calls)} calls: {sum(c.code == grpc.StatusCode.OK for c in result.calls)} OK, "
        f"{len(refusals)} UNAVAILABLE, {len(in_flight)} + the long call completed after the first refusal "
        f"({long_call.ended - first_refusal:.2f}s after)"
    )


def _shutdown_args() -> list[str]:
    return [
        "--grace-seconds",
        str(GRACE_SECONDS),
        "--drain-seconds",
        str(DRAIN_SECONDS),
        "--executor-threads",
        "24",
    ]


def test_scaler_sigterm_under_load(tmp_path: Path) -> None:
    service = scaler_process(tmp_path / "store", tmp_path / "logs", *_shutdown_args())
    service.start()
    try:
        rows = np.random.default_rng(0).normal(size=(60_000, 3))
        with service.channel() as channel:
            scaler_pb2_grpc.ScalerServiceStub(channel).Fit(
                scaler_pb2.FitRequest(
                    scaler_id="load",
                    spec=scaler_pb2.ScalerSpec(kind=scaler_pb2.ROBUST),
                    data=codec.from_numpy(rows),
                ),
                timeout=60,
            )
        request = scaler_pb2.TransformRequest(scaler_id="load", data=codec.from_numpy(rows))

        def transform(channel: grpc.Channel) -> None:
            reply = scaler_pb2_grpc.ScalerServiceStub(channel).Transform(request, timeout=60)
            assert tuple(reply.data.shape) == rows.shape

        def slow_fit_stream(channel: grpc.Channel) -> None:
            """Chunks sent slowly for longer than the drain: in flight when refusals begin."""

            def chunks():
                for index in range(LONG_CALL_CHUNKS):
                    chunk = scaler_pb2.FitChunk(data=codec.from_numpy(rows[:100]))
                    if index == 0:
                        chunk.scaler_id = "long"
                        chunk.spec.kind = scaler_pb2.STANDARD
                    yield chunk
                    time.sleep(LONG_CALL_SECONDS / LONG_CALL_CHUNKS)

            info = scaler_pb2_grpc.ScalerServiceStub(channel).FitStream(chunks(), timeout=60)
            assert info.n_samples_seen == 100 * LONG_CALL_CHUNKS

        result = sigterm_under_load(service, transform, slow_fit_stream)
    finally:
        service.stop()
    assert_clean_shutdown(result, service)


def test_model_sigterm_while_16_clients_predict(tmp_path: Path) -> None:
    scaler = scaler_process(tmp_path / "scaler-store", tmp_path / "logs")
    model = model_process(tmp_path / "model-store", tmp_path / "logs", scaler, *_shutdown_args())
    scaler.start()
    try:
        model.start()
        with model.channel() as channel:
            workloads.train(channel, workloads.train_request("served", epochs=2))
        batch = np.random.default_rng(0).uniform(1, 70, size=(32, 3, 1))
        predict_request = model_pb2.PredictRequest(model_id="served", x=codec.from_numpy(batch))

        def predict(channel: grpc.Channel) -> None:
            reply = model_pb2_grpc.ModelServiceStub(channel).Predict(predict_request, timeout=60)
            assert tuple(reply.values.shape) == (32, 1)

        def long_training(channel: grpc.Channel) -> None:
            """Many tiny epochs: still training when refusals begin; it must finish and be saved."""
            request = workloads.train_request("in-flight", epochs=LONG_TRAINING_EPOCHS)
            info = workloads.train(channel, request, timeout=60)
            assert info.epochs_run == LONG_TRAINING_EPOCHS

        result = sigterm_under_load(model, predict, long_training)
    finally:
        model.stop()
        scaler.stop()
    assert_clean_shutdown(result, model)
    # The training that finished during shutdown was saved whole and signed.
    store = ArtifactStore(model.store / "models", load_signing_key("", "", model.store))
    assert [(ref.artifact_id, ref.version) for ref in store.scan()] == [("in-flight", 1), ("served", 1)]
    assert json.loads(store.read("in-flight", 1)["meta.json"])["epochs_run"] == LONG_TRAINING_EPOCHS
