"""Bearer-token auth and TLS on real in-process servers (127.0.0.1, port 0)."""

from __future__ import annotations

import dataclasses
from collections.abc import Iterator
from pathlib import Path

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc

from service_common.channels import open_channel
from service_common.security import (
    AuthInterceptor,
    bearer_metadata,
    load_tokens,
)
from service_common.server import ManagedServer, build_server
from service_common.settings import ServerSettings
from tests.service_common import echo
from tests.service_common.certs import TlsFiles, make_tls_files

TOKEN = "s3cret-token-0123456789abcdef"
OTHER_TOKEN = "rotated-token-fedcba9876543210"


@pytest.fixture(scope="module")
def tls(tmp_path_factory: pytest.TempPathFactory) -> TlsFiles:
    return make_tls_files(tmp_path_factory.mktemp("tls"))


def _start(settings: ServerSettings) -> tuple[ManagedServer, int, echo.EchoService]:
    service = echo.EchoService()
    managed, port = build_server(settings, service.register)
    managed.start()
    return managed, port, service


@pytest.fixture
def make_server(tmp_path: Path) -> Iterator:
    started: list[ManagedServer] = []

    def make(**overrides: object) -> tuple[int, echo.EchoService]:
        settings = dataclasses.replace(ServerSettings(store=tmp_path / "store"), **overrides)
        managed, port, service = _start(settings)
        started.append(managed)
        return port, service

    yield make
    for managed in started:
        managed.stop(0)


def _code(call) -> grpc.StatusCode:
    with pytest.raises(grpc.RpcError) as info:
        call()
    return info.value.code()


def _health(channel: grpc.Channel) -> int:
    return health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(), timeout=10).status


# ---- token loading ----


def test_tokens_come_from_setting_and_file(tmp_path: Path) -> None:
    token_file = tmp_path / "tokens"
    token_file.write_text(f"# rotated monthly\n{OTHER_TOKEN}\n\n  third-token-aaaaaaaaaaaa  \n")
    assert load_tokens(TOKEN, str(token_file)) == [TOKEN, OTHER_TOKEN, "third-token-aaaaaaaaaaaa"]
    assert load_tokens(f"{TOKEN}, {OTHER_TOKEN}") == [TOKEN, OTHER_TOKEN]
    assert load_tokens() == []


def test_token_file_that_is_missing_or_empty_fails_closed(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="cannot be read"):
        load_tokens("", str(tmp_path / "absent"))
    empty = tmp_path / "empty"
    empty.write_text("# nothing but a comment\n\n")
    with pytest.raises(ValueError, match="holds no token"):
        load_tokens("", str(empty))
    spaced = tmp_path / "spaced"
    spaced.write_text("two words\n")
    with pytest.raises(ValueError, match="whitespace"):
        load_tokens("", str(spaced))


def test_interceptor_needs_a_token_and_compares_every_one() -> None:
    with pytest.raises(ValueError):
        AuthInterceptor([])
    interceptor = AuthInterceptor([TOKEN, OTHER_TOKEN])
    assert interceptor.accepts(TOKEN)
    assert interceptor.accepts(OTHER_TOKEN)
    assert not interceptor.accepts(TOKEN[:-1])
    assert not interceptor.accepts(TOKEN + "x")
    assert not interceptor.accepts("")


# ---- auth on a plaintext server ----


def test_without_token_every_kind_of_call_is_unauthenticated(make_server) -> None:
    port, service = make_server(auth_token=TOKEN)
    with grpc.insecure_channel(f"127.0.0.1:{port}") as channel:
        with pytest.raises(grpc.RpcError) as info:
            echo.say(channel)
        assert info.value.code() == grpc.StatusCode.UNAUTHENTICATED
        assert "missing credentials" in info.value.details()
        assert "authorization: Bearer <token>" in info.value.details()
        assert _code(lambda: echo.repeat(channel)) == grpc.StatusCode.UNAUTHENTICATED
        assert _code(lambda: echo.collect(channel, [b"a", b"b"])) == grpc.StatusCode.UNAUTHENTICATED
    assert service.calls == 0, "a refused call must never reach the handler"


def test_wrong_or_malformed_token_is_unauthenticated(make_server) -> None:
    port, service = make_server(auth_token=TOKEN)
    with grpc.insecure_channel(f"127.0.0.1:{port}") as channel:
        with pytest.raises(grpc.RpcError) as info:
            echo.say(channel, metadata=bearer_metadata("not-the-token-0000000000"))
        assert info.value.code() == grpc.StatusCode.UNAUTHENTICATED
        assert "not valid" in info.value.details()
        with pytest.raises(grpc.RpcError) as info:
            echo.say(channel, metadata=(("authorization", f"Basic {TOKEN}"),))
        assert info.value.code() == grpc.StatusCode.UNAUTHENTICATED
        assert "Bearer <token>" in info.value.details()
        # A prefix of the right token is not the right token.
        assert (
            _code(lambda: echo.say(channel, metadata=bearer_metadata(TOKEN[:8])))
            == grpc.StatusCode.UNAUTHENTICATED
        )
    assert service.calls == 0


def test_right_token_passes_for_every_kind_of_call(make_server, tmp_path: Path) -> None:
    token_file = tmp_path / "tokens"
    token_file.write_text(OTHER_TOKEN + "\n")
    port, service = make_server(auth_token=TOKEN, auth_token_file=str(token_file))
    with grpc.insecure_channel(f"127.0.0.1:{port}") as channel:
        assert echo.say(channel, b"a", metadata=bearer_metadata(TOKEN)) == b"a"
        # The scheme is case-insensitive (RFC 7235); the token from the file works as well.
        assert echo.say(channel, b"b", metadata=(("authorization", f"bearer {OTHER_TOKEN}"),)) == b"b"
    with open_channel(f"127.0.0.1:{port}", token=TOKEN) as channel:
        assert echo.repeat(channel, b"r") == [b"r"] * 3
        assert echo.collect(channel, [b"x", b"y"]) == b"xy"
        # Handler errors still come through with their own code.
        assert _code(lambda: echo.fail(channel)) == grpc.StatusCode.INVALID_ARGUMENT
    assert service.calls == 5


def test_health_is_exempt_but_reflection_is_not(make_server) -> None:
    port, _service = make_server(auth_token=TOKEN)
    with grpc.insecure_channel(f"127.0.0.1:{port}") as channel:
        assert _health(channel) == health_pb2.HealthCheckResponse.SERVING
        stub = reflection_pb2_grpc.ServerReflectionStub(channel)
        request = reflection_pb2.ServerReflectionRequest(list_services="")
        assert (
            _code(lambda: list(stub.ServerReflectionInfo(iter([request]), timeout=10)))
            == grpc.StatusCode.UNAUTHENTICATED
        )
        answers = list(
            stub.ServerReflectionInfo(iter([request]), timeout=10, metadata=bearer_metadata(TOKEN))
        )
    names = {s.name for s in answers[0].list_services_response.service}
    assert echo.SERVICE in names


def test_no_token_configured_means_no_auth(make_server) -> None:
    port, _service = make_server()
    with grpc.insecure_channel(f"127.0.0.1:{port}") as channel:
        assert echo.say(channel, b"open") == b"open"


# ---- TLS ----


def test_server_tls_serves_clients_that_trust_its_ca(make_server, tls: TlsFiles) -> None:
    port, _service = make_server(tls_cert=str(tls.server_cert), tls_key=str(tls.server_key))
    with open_channel(f"127.0.0.1:{port}", tls_root_cert=tls.ca) as channel:
        assert echo.say(channel, b"over tls") == b"over tls"
        assert _health(channel) == health_pb2.HealthCheckResponse.SERVING
    # The certificate names localhost too.
    with open_channel(f"localhost:{port}", tls_root_cert=tls.ca) as channel:
        assert echo.say(channel) == b"hi"


def test_server_tls_refuses_plaintext_and_untrusting_clients(make_server, tls: TlsFiles) -> None:
    port, service = make_server(tls_cert=str(tls.server_cert), tls_key=str(tls.server_key))
    with grpc.insecure_channel(f"127.0.0.1:{port}") as channel:
        assert _code(lambda: echo.say(channel)) == grpc.StatusCode.UNAVAILABLE
    with open_channel(f"127.0.0.1:{port}", tls_root_cert=tls.rogue_ca) as channel:
        assert _code(lambda: echo.say(channel)) == grpc.StatusCode.UNAVAILABLE
    assert service.calls == 0


def test_mutual_tls_requires_a_client_certificate_from_the_ca(make_server, tls: TlsFiles) -> None:
    port, service = make_server(
        tls_cert=str(tls.server_cert), tls_key=str(tls.server_key), tls_client_ca=str(tls.ca)
    )
    address = f"127.0.0.1:{port}"
    with open_channel(address, tls_root_cert=tls.ca) as channel:
        assert _code(lambda: echo.say(channel)) == grpc.StatusCode.UNAVAILABLE
    with open_channel(
        address,
        tls_root_cert=tls.ca,
        tls_client_cert=tls.rogue_client_cert,
        tls_client_key=tls.rogue_client_key,
    ) as channel:
        assert _code(lambda: echo.say(channel)) == grpc.StatusCode.UNAVAILABLE
    assert service.calls == 0
    with open_channel(
        address, tls_root_cert=tls.ca, tls_client_cert=tls.client_cert, tls_client_key=tls.client_key
    ) as channel:
        assert echo.say(channel, b"mutual") == b"mutual"


def test_tls_and_token_together(make_server, tls: TlsFiles) -> None:
    port, _service = make_server(
        auth_token=TOKEN,
        tls_cert=str(tls.server_cert),
        tls_key=str(tls.server_key),
        tls_client_ca=str(tls.ca),
    )
    address = f"127.0.0.1:{port}"
    client = {"tls_root_cert": tls.ca, "tls_client_cert": tls.client_cert, "tls_client_key": tls.client_key}
    with open_channel(address, **client) as channel:
        # A valid client certificate does not replace the token.
        assert _code(lambda: echo.say(channel)) == grpc.StatusCode.UNAUTHENTICATED
        assert _health(channel) == health_pb2.HealthCheckResponse.SERVING
    with open_channel(address, token=OTHER_TOKEN, **client) as channel:
        assert _code(lambda: echo.say(channel)) == grpc.StatusCode.UNAUTHENTICATED
    with open_channel(address, token=TOKEN, **client) as channel:
        assert echo.say(channel, b"both") == b"both"
        assert echo.repeat(channel, b"s") == [b"s"] * 3


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        ({"tls_cert": "cert.pem"}, "both tls_cert and tls_key"),
        ({"tls_key": "key.pem"}, "both tls_cert and tls_key"),
        ({"tls_client_ca": "ca.pem"}, "needs tls_cert and tls_key"),
        ({"tls_cert": "/nonexistent/cert.pem", "tls_key": "/nonexistent/key.pem"}, "cannot be read"),
        ({"auth_token_file": "/nonexistent/tokens"}, "cannot be read"),
    ],
)
def test_bad_security_settings_stop_the_server_from_starting(
    tmp_path: Path, overrides: dict[str, str], message: str
) -> None:
    settings = dataclasses.replace(ServerSettings(store=tmp_path), **overrides)
    with pytest.raises(ValueError, match=message):
        build_server(settings, echo.EchoService().register)


def test_open_channel_rejects_half_a_client_certificate(tls: TlsFiles) -> None:
    with pytest.raises(ValueError, match="together"):
        open_channel("127.0.0.1:1", tls_root_cert=tls.ca, tls_client_cert=tls.client_cert)
