"""The start command: flags and LSTM_MODEL_ variables become settings; `python -m model_service` serves."""

from __future__ import annotations

import os
import queue
import re
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from model_service.__main__ import main
from model_service.settings import ModelSettings
from protos.inference import grpc_service_pb2 as oip
from protos.inference import grpc_service_pb2_grpc as oip_grpc
from protos.lstm_stack.v1 import model_pb2_grpc
from service_common.settings import load_settings
from tests.model_service.helpers import (
    SEED_QUERY,
    predict,
    scaler,
    seed_example,
    tiny_spec,
    train,
    train_request,
    values,
)
from tests.scaler_service.harness import ScalerServerHandle

REPO_ROOT = Path(__file__).resolve().parents[2]
LISTENING = re.compile(r"model service listening on 127\.0\.0\.1:(\d+)")


def test_flags_and_environment(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("LSTM_MODEL_MAX_TRAINING_JOBS", "3")
    monkeypatch.setenv("LSTM_MODEL_MAX_BATCH_WAIT_MS", "1.5")
    settings = load_settings(
        ModelSettings, ["--port", "0", "--store", str(tmp_path), "--scaler-address", "127.0.0.1:1"]
    )
    assert settings.scaler_address == "127.0.0.1:1"
    assert settings.store == tmp_path
    assert settings.max_training_jobs == 3
    assert settings.max_batch_wait_ms == 1.5
    assert settings.ENV_PREFIX == "LSTM_MODEL_"


def test_missing_scaler_address_is_refused(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["--port", "0", "--store", str(tmp_path)]) == 2
    assert "--scaler-address" in capsys.readouterr().err


def test_module_entry_point_serves_both_protocols_and_stops_on_sigterm(
    shared_scaler: ScalerServerHandle, tmp_path: Path
) -> None:
    command = [sys.executable, "-m", "model_service", "--port", "0", "--store", str(tmp_path / "store")]
    env = {**os.environ, "LSTM_MODEL_SCALER_ADDRESS": shared_scaler.address, "LSTM_MODEL_HOST": "127.0.0.1"}
    process = subprocess.Popen(
        [*command, "--grace-seconds", "0"], cwd=REPO_ROOT, env=env, stderr=subprocess.PIPE, text=True
    )
    lines: queue.Queue[str] = queue.Queue()
    reader = threading.Thread(target=lambda: [lines.put(line) for line in process.stderr], daemon=True)
    reader.start()
    try:
        port = _wait_for_port(lines, process)
        with grpc.insecure_channel(f"127.0.0.1:{port}") as channel:
            health = health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(), timeout=10)
            assert health.status == health_pb2.HealthCheckResponse.SERVING
            stub = model_pb2_grpc.ModelServiceStub(channel)
            x, y = seed_example()
            # The scaler address came from LSTM_MODEL_SCALER_ADDRESS: training with scaling reaches it.
            _, info = train(stub, train_request(tiny_spec(), x, y, model_id="cli", x_scaling=scaler()))
            assert info.x_scaler.scaler_id == "cli-x"
            assert values(predict(stub, "cli", SEED_QUERY)).shape == (1, 1)
            inference = oip_grpc.GRPCInferenceServiceStub(channel)
            assert inference.ServerLive(oip.ServerLiveRequest(), timeout=10).live
            assert inference.ModelReady(oip.ModelReadyRequest(name="cli"), timeout=10).ready
        process.send_signal(signal.SIGTERM)
        assert process.wait(timeout=60) == 0
        reader.join(timeout=10)
        output = "".join(_drain(lines))
        assert "model service stopped" in output
        version_dir = tmp_path / "store" / "models" / "cli" / "1"
        names = sorted(p.name for p in version_dir.iterdir())
        # A trained version also holds its serving graph and TensorBoard events (signed like the rest).
        assert [n for n in names if not n.startswith("events.out.tfevents.")] == [
            "SIGNATURE",
            "meta.json",
            "model.keras",
            "model.onnx",
        ]
        assert len(names) == 5
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()


def _wait_for_port(lines: queue.Queue[str], process: subprocess.Popen[str]) -> int:
    deadline = time.monotonic() + 120
    seen: list[str] = []
    while time.monotonic() < deadline:
        try:
            line = lines.get(timeout=0.5)
        except queue.Empty:
            assert process.poll() is None, "server exited early:\n" + "".join(seen)
            continue
        seen.append(line)
        match = LISTENING.search(line)
        if match:
            return int(match.group(1))
    raise AssertionError("server did not report its port:\n" + "".join(seen))


def _drain(lines: queue.Queue[str]) -> list[str]:
    out = []
    while not lines.empty():
        out.append(lines.get_nowait())
    return out
