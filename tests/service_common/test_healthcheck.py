"""The container healthcheck against a real in-process gRPC server on 127.0.0.1, port 0."""

from __future__ import annotations

import dataclasses
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
from grpc_health.v1 import health_pb2

from service_common import healthcheck
from service_common.server import ManagedServer, build_server
from service_common.settings import ServerSettings
from tests.service_common.certs import TlsFiles, make_tls_files

REPO_ROOT = Path(__file__).resolve().parents[2]
EXTRA_SERVICE = "lstm_stack.test.Extra"


@pytest.fixture
def running_server(tmp_path: Path) -> Iterator[tuple[ManagedServer, str]]:
    settings = ServerSettings(host="127.0.0.1", port=0, store=tmp_path, executor_threads=2)
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
    managed.set_health(EXTRA_SERVICE, health_pb2.HealthCheckResponse.NOT_SERVING)
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
    settings = ServerSettings(host="127.0.0.1", port=0, store=tmp_path, executor_threads=2)
    managed, port = build_server(settings, lambda _server: [])
    managed.start()
    managed.stop(0)
    serving, status = healthcheck.check(f"127.0.0.1:{port}", timeout=0.5)
    assert not serving
    assert status.split(":")[0] in {"DEADLINE_EXCEEDED", "UNAVAILABLE"}


def test_graceful_shutdown_reports_not_serving(running_server: tuple[ManagedServer, str]) -> None:
    managed, address = running_server
    managed.loop.run(managed.health.enter_graceful_shutdown())
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


# ---- TLS: health is exempt from tokens, never from TLS ----

TOKEN = "healthcheck-token-0123456789abcdef"


@pytest.fixture(scope="module")
def tls(tmp_path_factory: pytest.TempPathFactory) -> TlsFiles:
    # The server certificate names localhost and 127.0.0.1.
    return make_tls_files(tmp_path_factory.mktemp("tls"))


@pytest.fixture
def start_server(tmp_path: Path) -> Iterator:
    started: list[ManagedServer] = []

    def start(**overrides: object) -> str:
        settings = dataclasses.replace(
            ServerSettings(host="127.0.0.1", port=0, store=tmp_path / "store", executor_threads=2),
            **overrides,
        )
        managed, port = build_server(settings, lambda _server: [EXTRA_SERVICE])
        managed.start()
        started.append(managed)
        return f"127.0.0.1:{port}"

    yield start
    for managed in started:
        managed.stop(0)


def test_tls_server_is_healthy_only_over_tls_with_its_ca(start_server, tls: TlsFiles, capsys) -> None:
    address = start_server(tls_cert=str(tls.server_cert), tls_key=str(tls.server_key))
    args = [address, "--service", EXTRA_SERVICE, "--timeout", "5"]
    assert healthcheck.main([*args, "--tls-ca", str(tls.ca)], environ={}) == 0
    assert "(tls)" in capsys.readouterr().out
    # Plaintext against TLS, and TLS trusting another CA, both fail the check (the channel keeps
    # retrying the handshake until the deadline).
    failing = [address, "--service", EXTRA_SERVICE, "--timeout", "1"]
    assert healthcheck.main(failing, environ={}) == 1
    assert healthcheck.main([*failing, "--tls-ca", str(tls.rogue_ca)], environ={}) == 1
    errors = capsys.readouterr().err.splitlines()
    assert len(errors) == 2
    assert all("SERVING" not in line and "DEADLINE_EXCEEDED" in line for line in errors), errors


def test_tls_options_come_from_the_environment(start_server, tls: TlsFiles) -> None:
    # The compose healthcheck command never changes; the container environment switches TLS on.
    address = start_server(tls_cert=str(tls.server_cert), tls_key=str(tls.server_key))
    environ = {"LSTM_HEALTHCHECK_TLS_CA": str(tls.ca)}
    assert healthcheck.main([address, "--timeout", "5"], environ=environ) == 0
    # The server name checked against the certificate: "localhost" is in it, "scaler" is not.
    named = {**environ, "LSTM_HEALTHCHECK_TLS_SERVER_NAME": "localhost"}
    assert healthcheck.main([address, "--timeout", "5"], environ=named) == 0
    misnamed = {**environ, "LSTM_HEALTHCHECK_TLS_SERVER_NAME": "scaler"}
    assert healthcheck.main([address, "--timeout", "1"], environ=misnamed) == 1


def test_mutual_tls_needs_the_client_certificate(start_server, tls: TlsFiles) -> None:
    address = start_server(
        tls_cert=str(tls.server_cert), tls_key=str(tls.server_key), tls_client_ca=str(tls.ca)
    )
    with_ca = [address, "--timeout", "5", "--tls-ca", str(tls.ca)]
    failing = [address, "--timeout", "1", "--tls-ca", str(tls.ca)]
    assert healthcheck.main(failing, environ={}) == 1
    client = ["--tls-cert", str(tls.client_cert), "--tls-key", str(tls.client_key)]
    assert healthcheck.main([*with_ca, *client], environ={}) == 0
    stranger = ["--tls-cert", str(tls.rogue_client_cert), "--tls-key", str(tls.rogue_client_key)]
    assert healthcheck.main([*failing, *stranger], environ={}) == 1
    environ = {
        "LSTM_HEALTHCHECK_TLS_CA": str(tls.ca),
        "LSTM_HEALTHCHECK_TLS_CERT": str(tls.client_cert),
        "LSTM_HEALTHCHECK_TLS_KEY": str(tls.client_key),
    }
    assert healthcheck.main([address, "--timeout", "5"], environ=environ) == 0


def test_health_needs_no_token_with_tls_and_auth_on(start_server, tls: TlsFiles) -> None:
    address = start_server(tls_cert=str(tls.server_cert), tls_key=str(tls.server_key), auth_token=TOKEN)
    options = healthcheck.TlsOptions(root_ca=str(tls.ca))
    assert healthcheck.check(address, EXTRA_SERVICE, timeout=5, tls=options) == (True, "SERVING")


def test_unreadable_tls_file_is_unhealthy_not_a_crash(
    running_server: tuple[ManagedServer, str], tmp_path: Path, capsys
) -> None:
    _, address = running_server
    missing = str(tmp_path / "absent-ca.pem")
    assert healthcheck.main([address, "--timeout", "5", "--tls-ca", missing], environ={}) == 1
    assert "TLS configuration" in capsys.readouterr().err


def test_half_a_client_certificate_is_bad_usage(tls: TlsFiles) -> None:
    with pytest.raises(SystemExit) as excinfo:
        healthcheck.main(["127.0.0.1:1", "--tls-cert", str(tls.client_cert)], environ={})
    assert excinfo.value.code == 2
