"""The CLI's --token / LSTM_STACK_TOKEN and --tls-ca/--tls-cert/--tls-key against a real in-process scaler
service that requires a bearer token and mutual TLS (certificates made at test time)."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.clients.test_cli_input import run_cli
from tests.scaler_service.harness import running_scaler_server, secure_overrides
from tests.service_common.certs import TlsFiles, make_tls_files

TOKEN = "cli-token-0123456789abcdef"


@pytest.fixture(scope="module")
def tls(tmp_path_factory: pytest.TempPathFactory) -> TlsFiles:
    return make_tls_files(tmp_path_factory.mktemp("cli-tls"))


@pytest.fixture(scope="module")
def secure_scaler(tmp_path_factory: pytest.TempPathFactory, tls: TlsFiles) -> Iterator[str]:
    with running_scaler_server(
        tmp_path_factory.mktemp("cli-secure") / "store", **secure_overrides(tls, TOKEN)
    ) as handle:
        yield handle.address


def _mutual_tls(tls: TlsFiles) -> list[str]:
    return ["--tls-ca", str(tls.ca), "--tls-cert", str(tls.client_cert), "--tls-key", str(tls.client_key)]


def test_cli_speaks_mutual_tls_with_a_token(
    secure_scaler: str, tls: TlsFiles, monkeypatch: pytest.MonkeyPatch
) -> None:
    code, out, err = run_cli(
        "--scaler-address", secure_scaler, *_mutual_tls(tls), "--token", TOKEN, "--json",
        "scaler", "fit", "--kind", "minmax", "--id", "over-tls", "--data", "1,2;3,4;5,6",
    )  # fmt: skip
    assert code == 0, err
    assert json.loads(out)["id"] == "over-tls"
    # The token and the certificates from the environment, the address after the subcommand.
    monkeypatch.setenv("LSTM_STACK_TOKEN", TOKEN)
    monkeypatch.setenv("LSTM_STACK_TLS_CA", str(tls.ca))
    monkeypatch.setenv("LSTM_STACK_TLS_CERT", str(tls.client_cert))
    monkeypatch.setenv("LSTM_STACK_TLS_KEY", str(tls.client_key))
    code, out, err = run_cli("scaler", "transform", "--id", "over-tls", "--data", "3,4", "--scaler-address", secure_scaler)  # fmt: skip
    assert code == 0, err
    assert "[[0.5, 0.5]]" in out


def test_cli_without_the_token_or_a_client_certificate_is_refused(
    secure_scaler: str, tls: TlsFiles, tmp_path: Path
) -> None:
    fit = ["scaler", "fit", "--kind", "minmax", "--data", "1,2;3,4"]
    address = ["--scaler-address", secure_scaler, "--timeout", "5"]
    code, _, err = run_cli(*address, *_mutual_tls(tls), *fit)
    assert code == 1
    assert "UNAUTHENTICATED" in err and "missing credentials" in err
    code, _, err = run_cli(*address, *_mutual_tls(tls), "--token", "not-the-token-000000000", *fit)
    assert code == 1 and "UNAUTHENTICATED" in err and "not valid" in err
    # TLS without a client certificate, and plaintext: the handshake fails before any call.
    code, _, err = run_cli(*address, "--tls-ca", str(tls.ca), "--token", TOKEN, *fit)
    assert code == 1 and "UNAVAILABLE" in err
    code, _, err = run_cli(*address, "--token", TOKEN, *fit)
    assert code == 1 and "UNAVAILABLE" in err
    # Half a client certificate is a usage error, not a connection attempt.
    code, _, err = run_cli(*address, "--tls-ca", str(tls.ca), "--tls-cert", str(tls.client_cert), *fit)
    assert code == 2 and "--tls-cert and --tls-key go together" in err
