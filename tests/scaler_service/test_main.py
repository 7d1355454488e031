"""`python -m scaler_service --port 0 --store DIR` serves, reads LSTM_SCALER_* and stops cleanly on SIGTERM."""

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
import numpy as np
from grpc_health.v1 import health_pb2, health_pb2_grpc

from protos.lstm_stack.v1 import scaler_pb2, scaler_pb2_grpc
from service_common import codec
from tests.scaler_service.helpers import spec

REPO_ROOT = Path(__file__).resolve().parents[2]
LISTENING = re.compile(r"scaler service listening on 127\.0\.0\.1:(\d+)")


def test_module_entry_point_serves_and_stops_on_sigterm(tmp_path: Path) -> None:
    env = {**os.environ, "LSTM_SCALER_MAX_MESSAGE_MB": "1"}
    process = subprocess.Popen(
        [sys.executable, "-m", "scaler_service", "--port", "0", "--store", str(tmp_path / "store")],
        cwd=REPO_ROOT,
        env=env,
        stderr=subprocess.PIPE,
        text=True,
    )
    lines: queue.Queue[str] = queue.Queue()
    reader = threading.Thread(target=lambda: [lines.put(line) for line in process.stderr], daemon=True)
    reader.start()
    try:
        port = _wait_for_port(lines, process)
        with grpc.insecure_channel(f"127.0.0.1:{port}") as channel:
            health = health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(), timeout=10)
            assert health.status == health_pb2.HealthCheckResponse.SERVING
            stub = scaler_pb2_grpc.ScalerServiceStub(channel)
            info = stub.Fit(
                scaler_pb2.FitRequest(spec=spec("minmax"), data=codec.from_numpy(np.eye(3))), timeout=10
            )
            assert info.version == 1
            # The environment variable set the 1 MB limit.
            big = codec.from_numpy(np.zeros((200_000, 1)))
            try:
                stub.Fit(scaler_pb2.FitRequest(spec=spec("minmax"), data=big), timeout=10)
                raise AssertionError("a 1.6 MB message passed a 1 MB limit")
            except grpc.RpcError as error:
                assert error.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
        process.send_signal(signal.SIGTERM)
        assert process.wait(timeout=30) == 0
        reader.join(timeout=10)  # stderr is closed once the process is gone
        output = _drain(lines)
        assert "received SIGTERM, shutting down" in output
        assert "scaler service stopped" in output
        assert (tmp_path / "store" / "scalers" / info.id / "1" / "SIGNATURE").exists()
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()


def _wait_for_port(lines: queue.Queue[str], process: subprocess.Popen) -> int:
    deadline = time.monotonic() + 60
    seen = []
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


def _drain(lines: queue.Queue[str]) -> str:
    out = []
    while not lines.empty():
        out.append(lines.get_nowait())
    return "".join(out)
