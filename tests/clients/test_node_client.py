"""The Node.js client (clients/node) against live services: its own `node --test` suite and its example.

Both services run as subprocesses on free loopback ports with temporary stores. node and npm are
required (the Makefile's node-deps target installs the packages): a missing tool fails, never skips.
"""

from __future__ import annotations

import math
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import grpc
import numpy as np
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from demo.services import free_port
from protos.lstm_stack.v1 import tensor_pb2
from service_common import codec

REPO_ROOT = Path(__file__).resolve().parents[2]
NODE_DIR = REPO_ROOT / "clients" / "node"
STARTUP_SECONDS = 180.0


def _require_tool(name: str) -> str:
    path = shutil.which(name)
    if path is None:
        pytest.fail(
            f"`{name}` is not on PATH: the Node client tests need Node.js >= 18 and npm "
            "(`apt-get install nodejs npm`, then `make node-deps`)",
            pytrace=False,
        )
    return path


@pytest.fixture(scope="module")
def node() -> str:
    node_path = _require_tool("node")
    npm_path = _require_tool("npm")
    # npm ci runs the package's prepare script; otherwise run it here, so its copy of protos/ is current.
    installed = (NODE_DIR / "node_modules" / "@grpc" / "grpc-js").is_dir()
    command = [node_path, "scripts/prepare.js"] if installed else [npm_path, "ci", "--no-audit", "--no-fund"]
    result = subprocess.run(command, cwd=NODE_DIR, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, f"{' '.join(command)} failed:\n{result.stdout}\n{result.stderr}"
    return node_path


@dataclass
class RunningService:
    name: str
    address: str
    process: subprocess.Popen[bytes]
    log_path: Path

    def log_tail(self, lines: int = 40) -> str:
        text = self.log_path.read_text(encoding="utf-8", errors="replace") if self.log_path.exists() else ""
        return "\n".join(text.splitlines()[-lines:])

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(timeout=10)


def _start(name: str, module: str, args: list[str], log_path: Path) -> RunningService:
    port = free_port()
    with log_path.open("wb") as log:
        process = subprocess.Popen(
            [sys.executable, "-m", module, "--host", "127.0.0.1", "--port", str(port), *args],
            cwd=REPO_ROOT,
            stdout=log,
            stderr=subprocess.STDOUT,
        )
    service = RunningService(name, f"127.0.0.1:{port}", process, log_path)
    deadline = time.monotonic() + STARTUP_SECONDS
    with grpc.insecure_channel(service.address) as channel:
        health = health_pb2_grpc.HealthStub(channel)
        while True:
            if process.poll() is not None:
                pytest.fail(f"{name} exited with {process.returncode}:\n{service.log_tail()}", pytrace=False)
            try:
                reply = health.Check(health_pb2.HealthCheckRequest(service=""), timeout=2)
                if reply.status == health_pb2.HealthCheckResponse.SERVING:
                    return service
            except grpc.RpcError:
                pass
            if time.monotonic() > deadline:
                service.stop()
                pytest.fail(
                    f"{name} not healthy after {STARTUP_SECONDS:.0f}s:\n{service.log_tail()}", pytrace=False
                )
            time.sleep(0.25)


@pytest.fixture(scope="module")
def services(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, RunningService]]:
    root = tmp_path_factory.mktemp("node-client-stack")
    started: dict[str, RunningService] = {}
    try:
        started["scaler"] = _start(
            "scaler service", "scaler_service", ["--store", str(root / "scalers")], root / "scaler.log"
        )
        started["model"] = _start(
            "model service",
            "model_service",
            ["--store", str(root / "models"), "--scaler-address", started["scaler"].address],
            root / "model.log",
        )
        yield started
    finally:
        for service in reversed(list(started.values())):
            service.stop()


def _client_env(services: dict[str, RunningService], **extra: str) -> dict[str, str]:
    env = dict(os.environ)
    env["LSTM_STACK_SCALER_ADDRESS"] = services["scaler"].address
    env["LSTM_STACK_MODEL_ADDRESS"] = services["model"].address
    env.update(extra)
    return env


def _logs(services: dict[str, RunningService]) -> str:
    return "\n".join(f"--- {s.name} log ---\n{s.log_tail()}" for s in services.values())


def test_node_test_suite_passes_against_live_services(node: str, services: dict[str, RunningService]) -> None:
    result = subprocess.run(
        [node, "--test", "--test-reporter=tap", "test/"],
        cwd=NODE_DIR,
        env=_client_env(services),
        capture_output=True,
        text=True,
        timeout=240,
    )
    output = result.stdout + result.stderr
    assert result.returncode == 0, f"node --test failed:\n{output}\n{_logs(services)}"
    passed = re.search(r"^# pass (\d+)$", result.stdout, flags=re.MULTILINE)
    failed = re.search(r"^# fail (\d+)$", result.stdout, flags=re.MULTILINE)
    skipped = re.search(r"^# skipped (\d+)$", result.stdout, flags=re.MULTILINE)
    assert passed and failed and skipped, f"no TAP summary in the output:\n{output}"
    assert failed.group(1) == "0", output
    assert skipped.group(1) == "0", output
    # The codec file has 6 tests; the live file has 1 parent + 6 subtests; forecast 1 parent + 3.
    assert int(passed.group(1)) >= 17, output
    names = (
        "Fit MinMax matches",
        "Train a tiny stacked LSTM",
        "an unknown model is NOT_FOUND",
        "forecast returns the point and sorted quantiles of every series",
        "backtest streams every window, each forecast from the rows before its origin",
        "bad forecasts and backtests are refused with a precise status",
    )
    for name in names:
        assert re.search(rf"^\s*ok \d+ - {re.escape(name)}", result.stdout, flags=re.MULTILINE), output


def test_node_example_fits_trains_and_predicts(node: str, services: dict[str, RunningService]) -> None:
    result = subprocess.run(
        [node, "example.js"],
        cwd=NODE_DIR,
        env=_client_env(services, LSTM_STACK_EPOCHS="5"),
        capture_output=True,
        text=True,
        timeout=240,
    )
    output = result.stdout + result.stderr
    assert result.returncode == 0, f"example.js failed:\n{output}\n{_logs(services)}"
    assert "data_min [1,2,3]" in result.stdout and "data_max [40,50,60]" in result.stdout, output
    assert re.search(r"^\s+epoch\s+5/5\s+loss ", result.stdout, flags=re.MULTILINE), output
    match = re.search(r"^predict \[50,60,70\] -> (\S+) ", result.stdout, flags=re.MULTILINE)
    assert match, output
    assert math.isfinite(float(match.group(1))), output


def test_node_encoded_tensor_decodes_with_the_python_codec(node: str) -> None:
    """Same wire bytes in both languages: Node serializes a Tensor, service_common.codec decodes it."""
    script = (
        "const path = require('node:path');"
        "const loader = require('@grpc/proto-loader');"
        "const c = require('./index.js');"
        "const defs = loader.loadSync(c.PROTO_FILES.map((f) => path.join(c.PROTO_ROOT, f)), c.LOADER_OPTIONS);"
        "const t = defs['lstm_stack.v1.Tensor'];"
        "const out = [c.encodeTensor([[1.5, -2], [1e-300, 7]]),"
        " c.encodeTensor(Float32Array.from([0.25, 3]), {shape: [2, 1]}),"
        " c.encodeTensor(BigInt64Array.from([-5n, 9007199254740993n]))];"
        "console.log(out.map((m) => t.serialize(m).toString('hex')).join('\\n'));"
    )
    result = subprocess.run(
        [node, "-e", script], cwd=NODE_DIR, capture_output=True, text=True, timeout=60, check=False
    )
    assert result.returncode == 0, result.stderr
    decoded = [
        codec.to_numpy(tensor_pb2.Tensor.FromString(bytes.fromhex(line))) for line in result.stdout.split()
    ]
    np.testing.assert_array_equal(decoded[0], np.array([[1.5, -2.0], [1e-300, 7.0]]))
    assert decoded[0].dtype == np.float64
    np.testing.assert_array_equal(decoded[1], np.array([[0.25], [3.0]], dtype=np.float32))
    assert decoded[1].dtype == np.float32
    np.testing.assert_array_equal(decoded[2], np.array([-5, 9007199254740993], dtype=np.int64))
    assert decoded[2].dtype == np.int64


# ---- TLS, mutual TLS and the bearer token from Node

NODE_TLS_TOKEN = "node-token-0123456789abcdef"
NODE_TLS_SCRIPT = """
const c = require('./index.js');
const env = process.env;
async function attempt(options) {
  const client = new c.LstmStackClient({ scalerAddress: env.ADDR, deadlineMs: 10000, ...options });
  try {
    const info = await client.fitScaler({ data: [[1, 2], [3, 4]], kind: 'MINMAX', scalerId: 'node-tls' });
    return `ok ${info.id} v${info.version}`;
  } catch (error) {
    return `error ${error.code}`;
  } finally {
    client.close();
  }
}
(async () => {
  const mutual = { rootCert: env.CA, certChain: env.CERT, privateKey: env.KEY };
  console.log(await attempt({ ...mutual, token: env.TOKEN }));
  console.log(await attempt({ ...mutual }));
  console.log(await attempt({ ...mutual, token: 'wrong-token-0000000000' }));
  console.log(await attempt({ rootCert: env.CA, token: env.TOKEN }));
  console.log(await attempt({ token: env.TOKEN }));
})();
"""


def test_node_client_speaks_mutual_tls_with_a_token(node: str, tmp_path: Path) -> None:
    """An in-process scaler service that wants a token and a client certificate (made at test time)."""
    from tests.scaler_service.harness import running_scaler_server, secure_overrides
    from tests.service_common.certs import make_tls_files

    tls = make_tls_files(tmp_path / "tls")
    with running_scaler_server(tmp_path / "store", **secure_overrides(tls, NODE_TLS_TOKEN)) as handle:
        env = {
            **os.environ,
            "ADDR": handle.address,
            "CA": str(tls.ca),
            "CERT": str(tls.client_cert),
            "KEY": str(tls.client_key),
            "TOKEN": NODE_TLS_TOKEN,
        }
        result = subprocess.run(
            [node, "-e", NODE_TLS_SCRIPT], cwd=NODE_DIR, env=env, capture_output=True, text=True, timeout=120
        )
    assert result.returncode == 0, result.stderr
    unauthenticated, unavailable = (
        grpc.StatusCode.UNAUTHENTICATED.value[0],
        grpc.StatusCode.UNAVAILABLE.value[0],
    )
    assert result.stdout.split("\n")[:5] == [
        "ok node-tls v1",  # mutual TLS + token
        f"error {unauthenticated}",  # no token
        f"error {unauthenticated}",  # a wrong token
        f"error {unavailable}",  # no client certificate: the handshake fails
        f"error {unavailable}",  # plaintext against a TLS port
    ], result.stdout + result.stderr
