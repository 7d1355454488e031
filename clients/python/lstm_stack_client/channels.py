"""The one way to open a gRPC channel to an lstm-stack service: the Python client, the model service's
scaler gateway, the healthcheck command and the tests all call ``open_channel`` (service_common.channels
re-exports this module for the services).

TLS is used when ``tls`` is set or any certificate is given (PEM as bytes or a file path; no root
certificate means the system roots). ``token`` adds ``authorization: Bearer <token>`` to every call: as
call credentials over TLS, through a client interceptor on a plaintext channel (gRPC sends call
credentials only over TLS).
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any, NamedTuple

import grpc

Pem = bytes | str | Path

# The metadata key and scheme a token travels in (the services' AuthInterceptor reads the same).
AUTH_METADATA_KEY = "authorization"


def bearer_metadata(token: str) -> tuple[tuple[str, str], ...]:
    """Metadata to pass as ``metadata=`` on a call when the channel does not add the token itself."""
    return ((AUTH_METADATA_KEY, f"Bearer {token}"),)


def read_file(path: str | Path, what: str) -> bytes:
    """A certificate/key file's bytes; unreadable is a ValueError naming what it is and where."""
    try:
        return Path(path).read_bytes()
    except OSError as exc:
        raise ValueError(f"{what} {path} cannot be read: {exc}") from exc


def message_size_options(max_message_bytes: int) -> list[tuple[str, int]]:
    """The send/receive size limits, the same on both ends of every channel and server."""
    return [
        ("grpc.max_receive_message_length", max_message_bytes),
        ("grpc.max_send_message_length", max_message_bytes),
    ]


def read_pem(value: Pem | None, what: str) -> bytes | None:
    """PEM bytes as given, or read from the path; an unreadable file is a ValueError naming it."""
    if value is None or isinstance(value, bytes):
        return value
    return read_file(value, what) if str(value) else None


def channel_credentials(
    tls_root_cert: Pem | None = None,
    tls_client_cert: Pem | None = None,
    tls_client_key: Pem | None = None,
) -> grpc.ChannelCredentials:
    """TLS trusting ``tls_root_cert`` (system roots when unset), presenting a client cert for mutual TLS."""
    cert = read_pem(tls_client_cert, "TLS client certificate")
    key = read_pem(tls_client_key, "TLS client key")
    if (cert is None) != (key is None):
        raise ValueError("mutual TLS needs both the client certificate and its key, given together")
    return grpc.ssl_channel_credentials(
        root_certificates=read_pem(tls_root_cert, "TLS root certificate"),
        private_key=key,
        certificate_chain=cert,
    )


def open_channel(
    address: str,
    *,
    token: str = "",
    tls: bool = False,
    tls_root_cert: Pem | None = None,
    tls_client_cert: Pem | None = None,
    tls_client_key: Pem | None = None,
    tls_server_name: str | None = None,
    max_message_bytes: int | None = None,
    options: Sequence[tuple[str, Any]] = (),
) -> grpc.Channel:
    """A channel to ``address`` (see the module docstring); ``options`` are further channel arguments.

    ``tls_server_name`` overrides the name checked against the server certificate (e.g. when dialling an
    IP whose certificate names only a host).
    """
    channel_options = list(options)
    if max_message_bytes is not None:
        channel_options = message_size_options(max_message_bytes) + channel_options
    certificates = (tls_root_cert, tls_client_cert, tls_client_key)
    if tls or any(value is not None and str(value) != "" for value in certificates):
        credentials = channel_credentials(*certificates)
        if token:
            credentials = grpc.composite_channel_credentials(
                credentials, grpc.access_token_call_credentials(token)
            )
        if tls_server_name:
            channel_options.append(("grpc.ssl_target_name_override", tls_server_name))
        return grpc.secure_channel(address, credentials, options=channel_options)
    channel = grpc.insecure_channel(address, options=channel_options)
    if token:
        return grpc.intercept_channel(channel, BearerTokenClientInterceptor(token))
    return channel


class _ClientCall(NamedTuple):
    method: str
    timeout: float | None
    metadata: Sequence[tuple[str, Any]] | None
    credentials: grpc.CallCredentials | None
    wait_for_ready: bool | None
    compression: Any


class BearerTokenClientInterceptor(
    grpc.UnaryUnaryClientInterceptor,
    grpc.UnaryStreamClientInterceptor,
    grpc.StreamUnaryClientInterceptor,
    grpc.StreamStreamClientInterceptor,
):
    """Adds the bearer token to every call of a plaintext channel (call credentials need TLS)."""

    def __init__(self, token: str) -> None:
        self._metadata = bearer_metadata(token)

    def _with_token(self, details: Any) -> _ClientCall:
        metadata = [*(details.metadata or ()), *self._metadata]
        return _ClientCall(
            details.method,
            details.timeout,
            metadata,
            details.credentials,
            getattr(details, "wait_for_ready", None),
            getattr(details, "compression", None),
        )

    def intercept_unary_unary(self, continuation: Any, details: Any, request: Any) -> Any:
        return continuation(self._with_token(details), request)

    def intercept_unary_stream(self, continuation: Any, details: Any, request: Any) -> Any:
        return continuation(self._with_token(details), request)

    def intercept_stream_unary(self, continuation: Any, details: Any, request_iterator: Any) -> Any:
        return continuation(self._with_token(details), request_iterator)

    def intercept_stream_stream(self, continuation: Any, details: Any, request_iterator: Any) -> Any:
        return continuation(self._with_token(details), request_iterator)
