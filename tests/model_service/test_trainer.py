"""The trainer process: Train runs there, not in the serving process, and recycles itself when told to."""

from __future__ import annotations

import multiprocessing
import os
import threading
import time
from pathlib import Path

from tests.model_service.conftest import running_model_server
from tests.model_service.helpers import (
    SEED_QUERY,
    predict,
    seed_example,
    tiny_spec,
    train,
    train_request,
    values,
)
from tests.scaler_service.harness import ScalerServerHandle

TRAINER = "model-service-trainer"  # the name the serving process gives its trainer child


def trainer_pids() -> list[int]:
    return [p.pid for p in multiprocessing.active_children() if p.name == TRAINER and p.pid is not None]


def test_training_runs_in_a_trainer_process_and_the_serving_process_serves_the_result(
    shared_scaler: ScalerServerHandle, tmp_path: Path
) -> None:
    x, y = seed_example()
    with running_model_server(tmp_path / "store", shared_scaler.address) as server:
        before = trainer_pids()
        request = train_request(tiny_spec(), x, y, model_id="apart", epochs=3)
        events = server.stub.Train(request, timeout=120)
        assert next(events).HasField("started")
        # While the job runs: a trainer child exists, and this process runs no training thread.
        started = [pid for pid in trainer_pids() if pid not in before]
        assert len(started) == 1 and started[0] != os.getpid()
        assert not [t.name for t in threading.enumerate() if t.name.startswith("train-")]
        rest = list(events)
        assert rest[-1].HasField("done")
        # Served here the moment the client hears it is done.
        assert values(predict(server.stub, "apart", SEED_QUERY)).shape == (1, 1)
    # Stopping the server stops its trainer.
    assert started[0] not in trainer_pids()


def test_a_trainer_that_reached_its_job_count_exits_and_a_fresh_one_takes_the_next_job(
    shared_scaler: ScalerServerHandle, tmp_path: Path
) -> None:
    x, y = seed_example()
    with running_model_server(tmp_path / "store", shared_scaler.address, trainer_recycle_jobs=1) as server:
        before = set(trainer_pids())
        _, first = train(server.stub, train_request(tiny_spec(), x, y, model_id="recycled", epochs=1))
        (first_trainer,) = set(trainer_pids()) - before
        # Idle after its one job, it exits by itself: its memory goes back to the system.
        deadline = time.monotonic() + 30
        while first_trainer in trainer_pids():
            assert time.monotonic() < deadline, "the trainer did not exit after its last job"
            time.sleep(0.1)
        _, second = train(server.stub, train_request(tiny_spec(), x, y, model_id="recycled", epochs=1))
        assert (first.version, second.version) == (1, 2)
        assert values(predict(server.stub, "recycled", SEED_QUERY, version=2)).shape == (1, 1)
        assert len(set(trainer_pids()) - before - {first_trainer}) == 1
