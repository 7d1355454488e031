"""Bearer-token auth and TLS for both services and for their outgoing channels.

Server side: ``AuthInterceptor`` refuses every RPC but the health service unless its metadata carries
``authorization: Bearer <token>`` matching one of the configured tokens (UNAUTHENTICATED otherwise);
``server_credentials`` turns a certificate, key and optional client CA into TLS (mutual TLS when the CA
is given). Client side: ``open_channel`` builds a channel that sends the token and speaks TLS when asked.
"""

from __future__ import annotations

import hmac
import logging
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path
from typing import Any, NamedTuple

import grpc

from service_common.errors import echo
from service_common.handlers import refusing_handler

log = logging.getLogger(__name__)

AUTH_METADATA_KEY = "authorization"
BEARER_PREFIX = "bearer "
# Probes (load balancers, container healthchecks) must reach health without a secret.
EXEMPT_METHOD_PREFIXES: tuple[str, ...] = ("/grpc.health.v1.Health/",)
MIN_TOKEN_LENGTH = 16


def load_tokens(token: str = "", token_file: str = "") -> list[str]:
    """Accepted tokens: the ``token`` setting (comma-separated for rotation) plus every line of ``token_file``.

    Blank lines and lines starting with '#' in the file are ignored. A token file that is set but
    missing or holds no token is an error: failing open would silently turn auth off.
    """
    tokens = [part.strip() for part in token.split(",") if part.strip()]
    if token_file:
        path = Path(token_file)
        try:
            lines = path.read_text().splitlines()
        except OSError as exc:
            raise ValueError(f"auth token file {path} cannot be read: {exc}") from exc
        from_file = [line.strip() for line in lines if line.strip() and not line.strip().startswith("#")]
        if not from_file:
            raise ValueError(f"auth token file {path} holds no token (one token per line expected)")
        tokens.extend(from_file)
    for candidate in tokens:
        if any(ch.isspace() for ch in candidate):
            raise ValueError("an auth token must not contain whitespace")
        if len(candidate) < MIN_TOKEN_LENGTH:
            log.warning(
                "an auth token is shorter than %d characters; use a long random one", MIN_TOKEN_LENGTH
            )
    return tokens


def bearer_metadata(token: str) -> tuple[tuple[str, str], ...]:
    """Metadata to pass as ``metadata=`` on a call when the channel does not add the token itself."""
    return ((AUTH_METADATA_KEY, f"Bearer {token}"),)


def _presented_token(metadata: Sequence[tuple[str, Any]] | None) -> str | None:
    for key, value in metadata or ():
        if key.lower() != AUTH_METADATA_KEY:
            continue
        text = value.decode("utf-8", "replace") if isinstance(value, bytes) else str(value)
        if text[: len(BEARER_PREFIX)].lower() == BEARER_PREFIX:
            return text[len(BEARER_PREFIX) :].strip()
        return ""
    return None


class AuthInterceptor(grpc.aio.ServerInterceptor):
    """Lets a call through only with ``authorization: Bearer <token>`` for one of ``tokens``."""

    def __init__(
        self, tokens: Iterable[str], exempt_prefixes: Sequence[str] = EXEMPT_METHOD_PREFIXES
    ) -> None:
        self._tokens = [t.encode() for t in tokens]
        if not self._tokens:
            raise ValueError("AuthInterceptor needs at least one token")
        self._exempt = tuple(exempt_prefixes)

    def accepts(self, presented: str) -> bool:
        candidate = presented.encode()
        # Compare with every token, no early exit: the time taken tells nothing about which one is close.
        matched = False
        for token in self._tokens:
            matched |= hmac.compare_digest(candidate, token)
        return matched

    async def intercept_service(self, continuation: Callable[..., Any], handler_call_details: Any) -> Any:
        method = handler_call_details.method
        if method.startswith(self._exempt):
            return await continuation(handler_call_details)
        presented = _presented_token(handler_call_details.invocation_metadata)
        # The method is whatever path the caller sent; real ones are far shorter than this.
        shown = echo(method, limit=128, quote=False)
        if presented is None:
            message = f"{shown}: missing credentials; send metadata 'authorization: Bearer <token>'"
        elif not presented:
            message = f"{shown}: the authorization metadata must be 'Bearer <token>'"
        elif self.accepts(presented):
            return await continuation(handler_call_details)
        else:
            message = f"{shown}: the bearer token is not valid"
        log.warning("refused %s: %s", shown, message.split(": ", 1)[1])
        return refusing_handler(
            await continuation(handler_call_details), grpc.StatusCode.UNAUTHENTICATED, message
        )


def _read(path: str | Path, what: str) -> bytes:
    try:
        return Path(path).read_bytes()
    except OSError as exc:
        raise ValueError(f"{what} {path} cannot be read: {exc}") from exc


def server_credentials(
    cert: str | Path, key: str | Path, client_ca: str | Path | None = None
) -> grpc.ServerCredentials:
    """TLS with this certificate chain and key; with ``client_ca``, clients must show a cert it signed."""
    pair = (_read(key, "TLS key"), _read(cert, "TLS certificate"))
    root = _read(client_ca, "TLS client CA") if client_ca else None
    return grpc.ssl_server_credentials([pair], root_certificates=root, require_client_auth=root is not None)


def channel_credentials(
    root_ca: str | Path | None = None,
    client_cert: str | Path | None = None,
    client_key: str | Path | None = None,
) -> grpc.ChannelCredentials:
    """TLS trusting ``root_ca`` (system roots when unset), presenting a client cert for mutual TLS."""
    if bool(client_cert) != bool(client_key):
        raise ValueError("a TLS client certificate and its key must be given together")
    return grpc.ssl_channel_credentials(
        root_certificates=_read(root_ca, "TLS root CA") if root_ca else None,
        private_key=_read(client_key, "TLS client key") if client_key else None,
        certificate_chain=_read(client_cert, "TLS client certificate") if client_cert else None,
    )


def call_credentials(token: str) -> grpc.CallCredentials:
    """Sends ``authorization: Bearer <token>`` on every call (gRPC only allows this over TLS)."""
    return grpc.access_token_call_credentials(token)


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


def open_channel(
    address: str,
    *,
    token: str = "",
    tls: bool = False,
    root_ca: str | Path | None = None,
    client_cert: str | Path | None = None,
    client_key: str | Path | None = None,
    server_name: str = "",
    options: Sequence[tuple[str, Any]] = (),
) -> grpc.Channel:
    """A channel to ``address``: TLS when ``tls`` or any TLS file is given, the bearer token when set.

    ``server_name`` overrides the name checked against the server certificate (e.g. when dialling an IP
    whose certificate names only a host).
    """
    channel_options = list(options)
    if tls or root_ca or client_cert or client_key:
        credentials = channel_credentials(root_ca, client_cert, client_key)
        if token:
            credentials = grpc.composite_channel_credentials(credentials, call_credentials(token))
        if server_name:
            channel_options.append(("grpc.ssl_target_name_override", server_name))
        return grpc.secure_channel(address, credentials, options=channel_options)
    channel = grpc.insecure_channel(address, options=channel_options)
    if token:
        return grpc.intercept_channel(channel, BearerTokenClientInterceptor(token))
    return channel
