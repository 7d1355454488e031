"""The errors the client's codec raises, shared with the services: ``ServiceError`` (every error a caller
is meant to see, its message bounded to fit a gRPC trailer) and ``InvalidArgument``.

They live here, in the client distribution, so the codec needs nothing of the server's; the services'
``service_common.errors`` re-exports them and builds its other errors on ``ServiceError``.
"""

from __future__ import annotations

from collections.abc import Sequence

# How much of a caller's value a message repeats. Messages travel in the grpc-message trailer, which
# shares gRPC's 8 KiB metadata soft limit with every other header: past it the client may be handed
# RESOURCE_EXHAUSTED instead of the status we meant. A few dozen characters identify the value.
ECHO_LIMIT = 64
# Last line of defence for messages built without echo(): percent-encoded (up to 3 bytes per UTF-8
# byte) this stays well inside the soft limit.
MAX_MESSAGE_BYTES = 2048


def echo(value: object, limit: int = ECHO_LIMIT, quote: bool = True) -> str:
    """``value`` as an error message may repeat it: the repr of a string (without its quotes when not
    ``quote``; control characters stay escaped), the list of a sequence (a shape), cut to about ``limit``
    characters with '…(N chars)' or '…(N items)' saying how long it was."""
    if isinstance(value, str):
        text = repr(value[:limit]) if quote else repr(value[:limit])[1:-1]
        return text if len(value) <= limit else f"{text}…({len(value)} chars)"
    if isinstance(value, Sequence | range) and not isinstance(value, bytes | bytearray):
        items = list(value)
        text = repr(items)
        if len(text) <= limit:
            return text
        shown: list[str] = []
        used = 1
        for item in items:
            part = echo(item, limit)
            if used + len(part) + 2 > limit:
                break
            shown.append(part)
            used += len(part) + 2
        return "[" + ", ".join([*shown, f"…({len(items)} items)"]) + "]"
    text = repr(value)
    if len(text) <= limit:
        return text
    return f"{text[:limit]}…({len(text)} chars)"


def _bounded(message: str) -> str:
    encoded = message.encode("utf-8", "replace")
    if len(encoded) <= MAX_MESSAGE_BYTES:
        return message
    cut = encoded[: MAX_MESSAGE_BYTES - 32].decode("utf-8", "ignore")
    return f"{cut}…(message cut, {len(encoded)} bytes)"


class ServiceError(Exception):
    """Base of every error a caller is meant to see; the message says what was expected and what came."""

    def __init__(self, message: str = "") -> None:
        super().__init__(_bounded(str(message)))


class InvalidArgument(ServiceError):
    pass
