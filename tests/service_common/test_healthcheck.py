"""The container healthcheck against a real in-process gRPC server on 127.0.0.1, port 0."""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
from grpc_health.v1 import health_pb2

from service_common import healthcheck
from service_common.server import ManagedServer, build_server
from service_common.settings import ServerSettings

REPO_ROOT = Path(__file__).resolve().parents[2]
EXTRA_SERVICE = "lstm_stack.test.Extra"


@pytest.fixture
def running_server(tmp_path: Path) -> Iterator[tuple[ManagedServer, str]]:
    settings = ServerSettings(host="127.0.0.1", port=0, store=tmp_path, workers=2)
    # No servicer is added: health reports whatever names register returns.
    managed, port = build_server(settings, lambda _server: [EXTRA_SERVICE])
    managed.start()
    try:
        yield managed, f"127.0.0.1:{port}"
    finally:
        managed.stop(0)


def test_serving_server_exits_zero(running_server: tuple[ManagedServer, str]) -> None:
    _, address = running_server
    assert healthcheck.check(address, timeout=5) == (True, "SERVING")
    assert healthcheck.main([address, "--timeout", "5"]) == healthcheck.EXIT_SERVING


def test_registered_service_is_checked_by_name(running_server: tuple[ManagedServer, str]) -> None:
    _, address = running_server
    assert healthcheck.main([address, "--service", EXTRA_SERVICE, "--timeout", "5"]) == 0


def test_not_serving_exits_one(running_server: tuple[ManagedServer, str], capsys) -> None:
    managed, address = running_server
    managed.health.set(EXTRA_SERVICE, health_pb2.HealthCheckResponse.NOT_SERVING)
    assert healthcheck.main([address, "--service", EXTRA_SERVICE, "--timeout", "5"]) == 1
    assert "NOT_SERVING" in capsys.readouterr().err
    # The whole-server status is independent of one service's.
    assert healthcheck.main([address, "--timeout", "5"]) == 0


def test_unknown_service_exits_one(running_server: tuple[ManagedServer, str]) -> None:
    _, address = running_server
    serving, status = healthcheck.check(address, "no.such.Service", timeout=5)
    assert not serving
    assert status.startswith("NOT_FOUND")


def test_stopped_server_exits_one_within_timeout(tmp_path: Path) -> None:
    settings = ServerSettings(host="127.0.0.1", port=0, store=tmp_path, workers=2)
    managed, port = build_server(settings, lambda _server: [])
    managed.start()
    managed.stop(0)
    serving, status = healthcheck.check(f"127.0.0.1:{port}", timeout=0.5)
    assert not serving
    assert status.split(":")[0] in {"DEADLINE_EXCEEDED", "UNAVAILABLE"}


def test_graceful_shutdown_reports_not_serving(running_server: tuple[ManagedServer, str]) -> None:
    managed, address = running_server
    managed.health.enter_graceful_shutdown()
    serving, status = healthcheck.check(address, timeout=5)
    assert (serving, status) == (False, "NOT_SERVING")


def test_rejects_non_positive_timeout() -> None:
    with pytest.raises(SystemExit) as excinfo:
        healthcheck.main(["127.0.0.1:1", "--timeout", "0"])
    assert excinfo.value.code == 2


def test_module_entry_point_exit_codes(running_server: tuple[ManagedServer, str]) -> None:
    # The same command line the compose healthcheck runs.
    _, address = running_server
    ok = subprocess.run(
        [sys.executable, "-m", "service_common.healthcheck", address, "--timeout", "10"],
        cwd=REPO_ROOT,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert ok.returncode == 0, ok.stderr
    assert "SERVING" in ok.stdout
    missing = subprocess.run(
        [
            sys.executable,
            "-m",
            "service_common.healthcheck",
            address,
            "--service",
            "absent",
            "--timeout",
            "10",
        ],
        cwd=REPO_ROOT,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert missing.returncode == 1
    assert "NOT_FOUND" in missing.stderr
