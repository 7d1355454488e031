"""SIGKILL the real services at random moments while they fit, train and save; after a restart every
listed artifact loads and works, nothing half-written is listed, and no artifact on disk is corrupt."""

from __future__ import annotations

import random
import threading
import time
from collections.abc import Callable
from pathlib import Path

import grpc
import numpy as np

from protos.lstm_stack.v1 import model_pb2, model_pb2_grpc, scaler_pb2, scaler_pb2_grpc
from service_common import codec
from service_common.artifacts import SIGNATURE_FILE, ArtifactStore, load_signing_key
from tests.system import workloads
from tests.system.procs import ServiceProcess, model_process, scaler_process

SEED = 6
# SIGKILLs per test. The scaler restarts in about a second, so it is killed often (with three writers
# busy, most kills land inside a write; the test prints how many). A model service restart costs
# several seconds (TensorFlow), so fewer rounds there, alternating a random moment of a training with
# a random moment of its save; the scaler service is killed too in every other round.
SCALER_KILLS = 10
MODEL_KILLS = 4


class Load:
    """Client threads calling in a loop through kills and restarts; failures while down are expected."""

    def __init__(self) -> None:
        self.stop = threading.Event()
        self.ok: dict[str, int] = {}
        self.failed: dict[str, int] = {}
        self.threads: list[threading.Thread] = []
        self._lock = threading.Lock()
        # Trainings that got past their scaler fits (a TrainStarted event arrived).
        self.trainings_started = 0
        # Trainings whose last epoch ended: serializing, warming and saving come next.
        self.trainings_saving = 0
        # Seconds from a last epoch to the final event (serialize, warm, write), the latest seen.
        self.save_seconds = 1.0

    def note_training_started(self) -> None:
        with self._lock:
            self.trainings_started += 1

    def note_last_epoch(self) -> None:
        with self._lock:
            self.trainings_saving += 1

    def note_saved(self, seconds: float) -> None:
        with self._lock:
            self.save_seconds = seconds

    def successes(self) -> int:
        with self._lock:
            return sum(self.ok.values())

    def run(
        self, name: str, service: ServiceProcess, step: Callable[[grpc.Channel, random.Random, Load], None]
    ) -> None:
        def loop() -> None:
            rng = random.Random(f"{SEED}-{name}")
            with service.channel() as channel:
                while not self.stop.is_set():
                    try:
                        step(channel, rng, self)
                        key, table = name, self.ok
                    except grpc.RpcError as error:
                        key, table = f"{name} {error.code().name}", self.failed
                        time.sleep(0.05)
                    with self._lock:
                        table[key] = table.get(key, 0) + 1

        thread = threading.Thread(target=loop, name=name, daemon=True)
        thread.start()
        self.threads.append(thread)

    def finish(self) -> None:
        self.stop.set()
        for thread in self.threads:
            thread.join(timeout=60)


def _scaler_writes(channel: grpc.Channel, rng: random.Random, _load: Load) -> None:
    stub = scaler_pb2_grpc.ScalerServiceStub(channel)
    scaler_id = f"crash-{rng.randrange(6)}"
    rows = rng.randrange(50, 4000)
    data = codec.from_numpy(np.random.default_rng(rng.randrange(2**32)).normal(size=(rows, 3, 2)))
    spec = scaler_pb2.ScalerSpec(
        kind=rng.choice([scaler_pb2.MINMAX, scaler_pb2.STANDARD, scaler_pb2.ROBUST, scaler_pb2.MAXABS]),
        layout=rng.choice([scaler_pb2.PER_FEATURE, scaler_pb2.PER_COLUMN]),
    )
    action = rng.random()
    if action < 0.5:
        stub.Fit(scaler_pb2.FitRequest(scaler_id=scaler_id, spec=spec, data=data), timeout=30)
    elif action < 0.7:
        if spec.kind == scaler_pb2.ROBUST:
            spec.kind = scaler_pb2.STANDARD  # robust needs all rows at once: FitStream refuses it
        chunks = [scaler_pb2.FitChunk(scaler_id=scaler_id, spec=spec, data=data)]
        chunks += [scaler_pb2.FitChunk(data=data) for _ in range(3)]
        stub.FitStream(iter(chunks), timeout=30)
    elif action < 0.9:
        request = scaler_pb2.FitTransformRequest(scaler_id=scaler_id, spec=spec, train=data)
        request.others["test"].CopyFrom(data)
        stub.FitTransform(request, timeout=30)
    else:
        try:
            stub.DeleteScaler(scaler_pb2.DeleteScalerRequest(scaler_id=scaler_id, version=1), timeout=30)
        except grpc.RpcError as error:
            if error.code() != grpc.StatusCode.NOT_FOUND:
                raise


def interrupted_write(root: Path) -> bool:
    """After a kill: a temp directory left in the store means the kill landed in the middle of a write."""
    return root.is_dir() and any(p.name.startswith(".tmp-") for p in root.iterdir())


def _kill_rounds(
    service: ServiceProcess, rounds: int, rng: random.Random, low: float, high: float, root: Path
) -> tuple[int, int]:
    """Restart (when down), let the load hit it for a random while, SIGKILL.

    Returns the kill count and how many kills interrupted a write.
    """
    kills = interrupted = 0
    for _ in range(rounds):
        if not service.running():
            service.start()
        time.sleep(rng.uniform(low, high))
        service.kill()
        kills += 1
        interrupted += interrupted_write(root)
    return kills, interrupted


def check_store_on_disk(root: Path, key: bytes) -> set[tuple[str, int]]:
    """Every artifact directory on disk verifies; returns them. Temp leftovers are never artifacts."""
    # The service swept the leftovers of killed writes when it started again.
    leftovers = [p.name for p in root.iterdir() if p.name.startswith(".tmp-")]
    assert not leftovers, f"temp files left after a clean start and stop: {leftovers}"
    store = ArtifactStore(root, key)
    found = set()
    for ref in store.scan():
        assert (ref.path / SIGNATURE_FILE).is_file(), f"{ref.path} has no signature"
        store.read(ref.artifact_id, ref.version)  # raises IntegrityError when anything is off
        found.add((ref.artifact_id, ref.version))
    return found


def test_scaler_survives_sigkill_while_writing(tmp_path: Path) -> None:
    rng = random.Random(SEED)
    scaler = scaler_process(tmp_path / "store", tmp_path / "logs")
    scaler.start()
    load = Load()
    for index in range(3):
        load.run(f"scaler-writer-{index}", scaler, _scaler_writes)
    try:
        kills, interrupted = _kill_rounds(
            scaler, rounds=SCALER_KILLS, rng=rng, low=0.2, high=0.9, root=scaler.store / "scalers"
        )
    finally:
        load.finish()
    try:
        scaler.start()
        with scaler.channel() as channel:
            stub = scaler_pb2_grpc.ScalerServiceStub(channel)
            listed = workloads.list_scalers(channel)
            for info in listed:
                got = stub.GetScaler(
                    scaler_pb2.GetScalerRequest(scaler_id=info.id, version=info.version), timeout=30
                )
                assert got.fingerprint == info.fingerprint
                sample = np.ones((2, *info.sample_shape))
                reply = stub.Transform(
                    scaler_pb2.TransformRequest(
                        scaler_id=info.id, version=info.version, data=codec.from_numpy(sample)
                    ),
                    timeout=30,
                )
                assert tuple(reply.data.shape) == sample.shape
        assert scaler.health() == "SERVING"
    finally:
        scaler.stop()
    key = load_signing_key("", "", scaler.store)
    on_disk = check_store_on_disk(scaler.store / "scalers", key)
    assert {(s.id, s.version) for s in listed} == on_disk
    assert "skipping" not in scaler.log_tail(100_000), "a crash left a corrupt artifact behind"
    assert kills == SCALER_KILLS
    assert load.ok, f"no write succeeded between kills: {load.failed}"
    print(
        f"{kills} kills ({interrupted} in the middle of a write), {len(listed)} scaler versions survive; "
        f"ok={load.ok} failed={load.failed}"
    )


def _model_writes(channel: grpc.Channel, rng: random.Random, load: Load) -> None:
    model_id = f"crash-model-{rng.randrange(4)}"
    if rng.random() < 0.15:
        try:
            model_pb2_grpc.ModelServiceStub(channel).DeleteModel(
                model_pb2.DeleteModelRequest(model_id=model_id, version=1), timeout=30
            )
        except grpc.RpcError as error:
            if error.code() not in {grpc.StatusCode.NOT_FOUND, grpc.StatusCode.FAILED_PRECONDITION}:
                raise
        return
    request = workloads.train_request(model_id, epochs=rng.randrange(1, 3), scaled=rng.random() < 0.7)
    request.seed = rng.randrange(1000)

    # wait_for_ready: block while the service is down, train as soon as it is back.
    last_epoch_at = 0.0

    def on_event(event: model_pb2.TrainEvent) -> None:
        nonlocal last_epoch_at
        if event.HasField("started"):
            load.note_training_started()
        elif event.HasField("epoch") and event.epoch.epoch == event.epoch.epochs:
            last_epoch_at = time.monotonic()
            load.note_last_epoch()
        elif event.HasField("done") and last_epoch_at:
            load.note_saved(time.monotonic() - last_epoch_at)

    workloads.train(channel, request, timeout=60, wait_for_ready=True, on_event=on_event)


def _verify_models(model: ServiceProcess) -> list[model_pb2.ModelInfo]:
    with model.channel() as channel:
        stub = model_pb2_grpc.ModelServiceStub(channel)
        listed = workloads.list_models(channel)
        for info in listed:
            assert info.state == model_pb2.READY, f"{info.id} v{info.version} listed as {info.state}"
            got = stub.GetModel(model_pb2.GetModelRequest(model_id=info.id, version=info.version), timeout=30)
            assert got.created_at == info.created_at
            values = workloads.predict_seed(channel, info.id, info.version)
            assert values.shape == (1, 1) and np.isfinite(values).all()
    return listed


def _wait_until(condition: Callable[[], bool], message: str, timeout: float = 90.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, message
        time.sleep(0.05)


def test_model_and_scaler_survive_sigkill_while_training(tmp_path: Path) -> None:
    """Trainers fit scalers through the scaler service, train and save, while both get SIGKILLed."""
    rng = random.Random(SEED + 1)
    scaler = scaler_process(tmp_path / "scaler-store", tmp_path / "logs")
    model = model_process(tmp_path / "model-store", tmp_path / "logs", scaler, "--warm-on-start", "false")
    scaler.start()
    model.start()
    load = Load()
    for index in range(2):
        load.run(f"trainer-{index}", model, _model_writes)
    model_kills = scaler_kills = interrupted = 0
    try:
        for round_index in range(MODEL_KILLS):
            if not scaler.running():
                scaler.start()
            if not model.running():
                model.start()
            if round_index == 0:
                # At least one version is saved before the first kill, so there is something to check.
                _wait_until(lambda: load.successes() > 0, "no training finished")
            if round_index % 2 == 0:
                # A random moment after a training got under way in this process: a first training in
                # a fresh process takes seconds (TensorFlow warms up), so the kill lands while scalers
                # are fitted, while it trains, or while it saves.
                mark = load.trainings_started
                _wait_until(lambda mark=mark: load.trainings_started > mark, "no training started")
                time.sleep(rng.uniform(0.0, 4.0))
            else:
                # A random moment between a last epoch and the saved model (as long as the last save
                # took): serializing, warming the serving function, writing.
                mark = load.trainings_saving
                _wait_until(lambda mark=mark: load.trainings_saving > mark, "no training reached its end")
                time.sleep(rng.uniform(0.0, load.save_seconds))
            # Every other round the scaler goes down too, just before the model service.
            if round_index % 2 == 0:
                scaler.kill()
                scaler_kills += 1
                time.sleep(rng.uniform(0.0, 0.5))
            model.kill()
            model_kills += 1
            interrupted += interrupted_write(model.store / "models")
    finally:
        load.finish()
    try:
        if scaler.running():
            scaler.wait_serving()
        else:
            scaler.start()
        model.start()
        listed = _verify_models(model)
        assert model.health() == "SERVING"
    finally:
        model.stop()
        scaler.stop()
    on_disk = check_store_on_disk(model.store / "models", load_signing_key("", "", model.store))
    assert {(m.id, m.version) for m in listed} == on_disk
    check_store_on_disk(scaler.store / "scalers", load_signing_key("", "", scaler.store))
    assert "skipping" not in model.log_tail(100_000), "a crash left a corrupt model behind"
    assert "skipping" not in scaler.log_tail(100_000), "a crash left a corrupt scaler behind"
    assert (model_kills, scaler_kills) == (MODEL_KILLS, (MODEL_KILLS + 1) // 2)
    assert listed, f"no model was saved between kills: ok={load.ok} failed={load.failed}"
    print(
        f"{model_kills} model + {scaler_kills} scaler kills ({interrupted} model kills in the middle of a "
        f"save), {len(listed)} model versions survive; "
        f"ok={load.ok} failed={load.failed}"
    )
