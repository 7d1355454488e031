"""Worker processes, the trainer process and the store as the only truth, on real service processes.

Each test starts the services as an operator would (``python -m ... --workers 2``) on loopback ports.
"""

from __future__ import annotations

import json
import os
import signal
import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import grpc
import numpy as np
import pytest

from protos.lstm_stack.v1 import model_pb2, model_pb2_grpc, scaler_pb2, scaler_pb2_grpc
from service_common import codec
from service_common.channels import open_channel
from tests.system import workloads
from tests.system.procs import (
    CHANNEL_OPTIONS,
    ServiceProcess,
    child_env,
    model_process,
    running,
    scaler_process,
)

# Clients retry UNAVAILABLE on idempotent calls, as a client of a replicated service should.
RETRYING = json.dumps(
    {
        "methodConfig": [
            {
                "name": [
                    {"service": "lstm_stack.v1.ModelService", "method": "Predict"},
                    {"service": "lstm_stack.v1.ModelService", "method": "ListModels"},
                    {"service": "lstm_stack.v1.ScalerService", "method": "ListScalers"},
                ],
                "retryPolicy": {
                    "maxAttempts": 5,
                    "initialBackoff": "0.05s",
                    "maxBackoff": "0.5s",
                    "backoffMultiplier": 2,
                    "retryableStatusCodes": ["UNAVAILABLE"],
                },
            }
        ]
    }
)


def wait_until(condition: Callable[[], bool], timeout: float, what: str) -> float:
    """Seconds it took for ``condition`` to hold; fails after ``timeout``."""
    started = time.monotonic()
    while not condition():
        assert time.monotonic() - started < timeout, f"{what} did not happen within {timeout}s"
        time.sleep(0.05)
    return time.monotonic() - started


def alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    # A zombie is dead for our purposes (its parent has not reaped it yet).
    try:
        return Path(f"/proc/{pid}/stat").read_text().split()[2] != "Z"
    except OSError:
        return False


def model_versions(channel: grpc.Channel, model_id: str) -> list[tuple[int, int]]:
    return [(m.version, m.state) for m in workloads.list_models(channel) if m.id == model_id]


def status(call: Callable[[], object]) -> grpc.StatusCode:
    try:
        call()
    except grpc.RpcError as error:
        return error.code()
    return grpc.StatusCode.OK


@pytest.fixture
def scaler(tmp_path: Path) -> Iterator[ServiceProcess]:
    with running(scaler_process(tmp_path / "scaler-store", tmp_path / "logs")) as (service,):
        yield service


def test_two_workers_share_one_port_and_the_metrics_endpoint_adds_their_calls_up(tmp_path: Path) -> None:
    service = scaler_process(tmp_path / "store", tmp_path / "logs", "--workers", "2", metrics=True)
    with running(service):
        pids = service.ready_pids()
        assert len(set(pids)) == 2 and service.proc is not None and service.proc.pid not in pids
        calls = 40
        for _ in range(calls):  # a channel each: new connections, spread over both workers by the kernel
            with service.channel() as channel:
                scaler_pb2_grpc.ScalerServiceStub(channel).ListScalers(
                    scaler_pb2.ListScalersRequest(), timeout=10
                )
        labels = {
            "grpc_service": "lstm_stack.v1.ScalerService",
            "grpc_method": "ListScalers",
            "grpc_code": "OK",
        }
        key = ("grpc_server_handled_total", frozenset(labels.items()))
        assert service.scrape().get(key) == calls


def test_a_clean_sigterm_stop_removes_the_metrics_directory(tmp_path: Path) -> None:
    """The supervisor's prometheus multiprocess directory (lstm-metrics-* in TMPDIR) goes with it."""
    private_tmp = tmp_path / "tmp"
    private_tmp.mkdir()
    service = scaler_process(
        tmp_path / "store",
        tmp_path / "logs",
        "--workers",
        "2",
        metrics=True,
        env=child_env(TMPDIR=str(private_tmp)),
    )
    service.start()
    try:
        made = list(private_tmp.glob("lstm-metrics-*"))
        assert len(made) == 1, list(private_tmp.iterdir())
        for _ in range(10):  # the workers write their samples into it
            with service.channel() as channel:
                scaler_pb2_grpc.ScalerServiceStub(channel).ListScalers(
                    scaler_pb2.ListScalersRequest(), timeout=10
                )
        assert list(made[0].glob("*.db")), "the workers wrote no samples there"
        service.send(signal.SIGTERM)
        assert service.wait_exit(timeout=60) == 0
    finally:
        service.stop()
    assert list(private_tmp.iterdir()) == []


def test_a_killed_worker_is_restarted_and_clients_retrying_unavailable_see_no_failure(
    tmp_path: Path, scaler: ServiceProcess
) -> None:
    model = model_process(tmp_path / "model-store", tmp_path / "logs", scaler, "--workers", "2")
    with running(model):
        with model.channel() as channel:
            workloads.train(channel, workloads.train_request("served", epochs=1))
        victim, survivor = model.ready_pids()
        stop = threading.Event()
        failures: list[str] = []
        done = [0]

        def predict_until_stopped() -> None:
            # A channel per caller: its connection lands on either worker.
            with open_channel(
                model.address, options=[*CHANNEL_OPTIONS, ("grpc.service_config", RETRYING)]
            ) as channel:
                stub = model_pb2_grpc.ModelServiceStub(channel)
                request = model_pb2.PredictRequest(model_id="served", x=codec.from_numpy(np.ones((1, 3, 1))))
                while not stop.is_set():
                    try:
                        stub.Predict(request, timeout=30)
                        done[0] += 1
                    except grpc.RpcError as error:
                        failures.append(f"{error.code().name}: {error.details()}")

        callers = [threading.Thread(target=predict_until_stopped) for _ in range(8)]
        for caller in callers:
            caller.start()
        time.sleep(1.0)
        before = done[0]
        os.kill(victim, signal.SIGKILL)
        wait_until(lambda: len(model.ready_pids()) == 3, 120, "a replacement worker becoming ready")
        time.sleep(1.0)
        stop.set()
        for caller in callers:
            caller.join(60)
        assert failures == []
        assert done[0] > before > 0
        replacement = model.ready_pids()[2]
        assert replacement not in (victim, survivor) and alive(replacement) and alive(survivor)


def test_sigterm_drains_every_worker_and_the_trainer_then_exits_zero(
    tmp_path: Path, scaler: ServiceProcess
) -> None:
    model = model_process(
        tmp_path / "model-store", tmp_path / "logs", scaler, "--workers", "2", "--grace-seconds", "5"
    )
    model.start()
    children = model.ready_pids() + model.ready_pids("trainer")
    assert len(children) == 3
    started = time.monotonic()
    model.send(signal.SIGTERM)
    assert model.wait_exit(timeout=60) == 0
    assert time.monotonic() - started < 30
    wait_until(lambda: not any(alive(pid) for pid in children), 10, "every child exiting")
    log = model.log_path.read_text()
    assert log.count("received SIGTERM") >= 3  # the supervisor and both workers drained


def test_killing_the_trainer_mid_epoch_ends_train_unavailable_and_leaves_nothing(
    tmp_path: Path, scaler: ServiceProcess
) -> None:
    store = tmp_path / "model-store"
    model = model_process(store, tmp_path / "logs", scaler, "--workers", "2")
    with running(model), model.channel() as channel, scaler.channel() as scaler_channel:
        (trainer,) = model.ready_pids("trainer")
        request = workloads.train_request("doomed", epochs=5000)
        events = model_pb2_grpc.ModelServiceStub(channel).Train(request, timeout=300)
        started = next(events).started
        assert next(events).HasField("epoch")
        assert [s.id for s in workloads.list_scalers(scaler_channel)] == ["doomed-x", "doomed-y"]
        os.kill(trainer, signal.SIGKILL)
        with pytest.raises(grpc.RpcError) as info:
            for _ in events:
                pass
        assert info.value.code() == grpc.StatusCode.UNAVAILABLE
        assert "nothing was saved" in info.value.details()
        # Nothing listed (the trainer's reservation died with it), nothing on disk, no orphan scaler.
        wait_until(lambda: model_versions(channel, "doomed") == [], 5, "the TRAINING version vanishing")
        assert not (store / "models" / "doomed" / str(started.version)).exists()
        assert workloads.list_scalers(scaler_channel) == []
        # The supervisor starts a new trainer; training works again.
        wait_until(lambda: len(model.ready_pids("trainer")) == 2, 120, "a new trainer becoming ready")
        info2 = workloads.train(channel, workloads.train_request("doomed", epochs=1))
        assert info2.version == started.version + 1


def test_two_instances_of_two_workers_over_one_store_agree_on_every_version(
    tmp_path: Path, scaler: ServiceProcess
) -> None:
    store = tmp_path / "model-store"
    args = ("--workers", "2", "--max-training-jobs", "4", "--store-poll-seconds", "1")
    a = model_process(store, tmp_path / "logs", scaler, *args)
    b = model_process(store, tmp_path / "logs", scaler, *args)
    with running(a, b), a.channel() as to_a, b.channel() as to_b:
        # Trained through A, served by B within 2 s.
        trained = workloads.train(to_a, workloads.train_request("shared", epochs=1))
        seen_after = wait_until(
            lambda: (
                status(lambda: workloads.predict_seed(to_b, "shared", trained.version, timeout=5))
                == grpc.StatusCode.OK
            ),
            2.0,
            "B serving what A trained",
        )
        assert seen_after < 2.0
        # Deleted through B, NOT_FOUND on A within 2 s.
        model_pb2_grpc.ModelServiceStub(to_b).DeleteModel(
            model_pb2.DeleteModelRequest(model_id="shared"), timeout=30
        )
        wait_until(
            lambda: (
                status(lambda: workloads.predict_seed(to_a, "shared", timeout=5)) == grpc.StatusCode.NOT_FOUND
            ),
            2.0,
            "A forgetting what B deleted",
        )
        # 8 parallel Train calls through both: 8 distinct versions, none reused after the delete.
        with ThreadPoolExecutor(max_workers=8) as pool:
            results = list(
                pool.map(
                    lambda i: workloads.train(
                        (to_a, to_b)[i % 2], workloads.train_request("shared", epochs=1, seed=i)
                    ),
                    range(8),
                )
            )
        versions = sorted(info.version for info in results)
        assert len(set(versions)) == 8 and min(versions) > trained.version
        for channel in (to_a, to_b):
            wait_until(
                lambda ch=channel: sorted(v for v, _ in model_versions(ch, "shared")) == versions,
                2.0,
                "every instance listing every version",
            )
    # Both instances stopped; one restarted on the same store loads all 8.
    c = model_process(store, tmp_path / "logs", scaler, "--workers", "2")
    with running(c), c.channel() as to_c:
        assert sorted(v for v, _ in model_versions(to_c, "shared")) == versions
        for version in versions:
            assert workloads.predict_seed(to_c, "shared", version).shape == (1, 1)
