"""Bearer-token auth and TLS on the server side of both services (outgoing channels: channels.py).

Server side: ``AuthInterceptor`` refuses every RPC but the health service unless its metadata carries
``authorization: Bearer <token>`` matching one of the configured tokens (UNAUTHENTICATED otherwise);
``server_credentials`` turns a certificate, key and optional client CA into TLS (mutual TLS when the CA
is given).
"""

from __future__ import annotations

import hmac
import logging
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path
from typing import Any

import grpc
from lstm_stack_client.channels import AUTH_METADATA_KEY, read_file
from lstm_stack_client.channels import bearer_metadata as bearer_metadata  # re-exported for the services

from service_common.errors import echo
from service_common.handlers import refusing_handler

log = logging.getLogger(__name__)

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
        self,
        tokens: Iterable[str],
        exempt_prefixes: Sequence[str] = EXEMPT_METHOD_PREFIXES,
        refused: Callable[[str, grpc.RpcMethodHandler], grpc.RpcMethodHandler] | None = None,
    ) -> None:
        """``refused(method, handler)`` wraps each refusing handler (the server observes refusals)."""
        self._tokens = [t.encode() for t in tokens]
        self._refused = refused
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
        handler = await continuation(handler_call_details)
        refusal = refusing_handler(handler, grpc.StatusCode.UNAUTHENTICATED, message)
        # Only refusals of real methods are observed: an unknown path is the caller's choice, and
        # would add a metrics label per path it invents.
        if handler is None or self._refused is None:
            return refusal
        return self._refused(method, refusal)


def server_credentials(
    cert: str | Path, key: str | Path, client_ca: str | Path | None = None
) -> grpc.ServerCredentials:
    """TLS with this certificate chain and key; with ``client_ca``, clients must show a cert it signed."""
    pair = (read_file(key, "TLS key"), read_file(cert, "TLS certificate"))
    root = read_file(client_ca, "TLS client CA") if client_ca else None
    return grpc.ssl_server_credentials([pair], root_certificates=root, require_client_auth=root is not None)
