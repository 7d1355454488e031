"""Upgrading a store written before versions carried a serving graph: nothing breaks.

The model service of the last commit before serving moved to ONNX Runtime trains versions into a store
(model.keras + meta.json, no model.onnx); the current code then starts on that store, lists them, and
serves each on its first call with a graph its trainer process makes once and keeps, answering what the
old code answered (within float32 rounding).
"""

from __future__ import annotations

import subprocess
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest

from tests.system import workloads
from tests.system.procs import REPO, ServiceProcess, child_env, model_process, running, scaler_process

# The last commit whose model service served with TensorFlow (and stored no serving graph).
PREDECESSOR = "81134d8"


@pytest.fixture(scope="module")
def old_code(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    folder = tmp_path_factory.mktemp("predecessor")
    archive = subprocess.run(
        ["git", "-C", str(REPO), "archive", "--format=tar", PREDECESSOR], check=True, capture_output=True
    ).stdout
    subprocess.run(["tar", "-x", "-C", str(folder)], input=archive, check=True)
    yield folder


def old_process(store: Path, logs: Path, scaler: ServiceProcess, code: Path) -> ServiceProcess:
    service = model_process(store, logs, scaler, "--workers", "1", "--warm-on-start", "false")
    # Its own packages first: the venv's editable install points at this checkout.
    service.cwd = code
    service.env = child_env(PYTHONPATH=f"{code}:{code / 'clients' / 'python'}")
    return service


def test_a_store_written_by_the_previous_design_is_served_unchanged(tmp_path: Path, old_code: Path) -> None:
    scaler = scaler_process(tmp_path / "scaler-store", tmp_path / "logs")
    store = tmp_path / "model-store"
    with running(scaler):
        old = old_process(store, tmp_path / "logs", scaler, old_code)
        old.start()
        try:
            assert (old_code / "model_service" / "predictor.py").exists()  # really the TensorFlow design
            with old.channel() as channel:
                for model_id in ("a", "b"):
                    workloads.train(channel, workloads.train_request(model_id, epochs=2))
                before = {m: workloads.predict_seed(channel, m) for m in ("a", "b")}
        finally:
            old.stop()
        for model_id in ("a", "b"):
            assert not (store / "models" / model_id / "1" / "model.onnx").exists()

        new = model_process(store, tmp_path / "logs", scaler, "--workers", "1")
        with running(new), new.channel() as channel:
            listed = {m.id for m in workloads.list_models(channel)}
            assert listed == {"a", "b"}
            for model_id in ("a", "b"):
                after = workloads.predict_seed(channel, model_id)
                np.testing.assert_allclose(after, before[model_id], rtol=1e-5, atol=1e-5)
        for model_id in ("a", "b"):  # made once, kept signed beside the version for every process
            assert (store / "serving-graphs" / model_id / "1" / "model.onnx").exists()
