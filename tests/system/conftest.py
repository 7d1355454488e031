"""A scaler + model service pair shared by the system tests that only need a running stack (fuzzing,
limits, metrics): starting the model service costs seconds (TensorFlow), so it starts once per session."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from tests.system import workloads
from tests.system.procs import ServiceProcess, model_process, running, scaler_process

# Limits the limit tests exercise; the fuzzing tests are happy under them too.
MODEL_MAX_MESSAGE_MB = 1
MODEL_MAX_TRAINING_JOBS = 1
MODEL_MAX_TRAINING_WORK = 20_000
MODEL_MEMORY_BUDGET_MB = 512


@pytest.fixture(scope="session")
def model_stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[ServiceProcess, ServiceProcess]]:
    root = tmp_path_factory.mktemp("model-stack")
    scaler = scaler_process(root / "scaler-store", root / "logs", metrics=True)
    model = model_process(
        root / "model-store",
        root / "logs",
        scaler,
        "--max-message-mb", str(MODEL_MAX_MESSAGE_MB),
        "--max-training-jobs", str(MODEL_MAX_TRAINING_JOBS),
        "--max-training-work", str(MODEL_MAX_TRAINING_WORK),
        "--memory-budget-mb", str(MODEL_MEMORY_BUDGET_MB),
        "--warm-on-start", "false",
        metrics=True,
    )  # fmt: skip
    with running(scaler, model):
        with model.channel() as channel:
            workloads.train(channel, workloads.train_request(workloads.BASE_MODEL, epochs=1))
        yield scaler, model
