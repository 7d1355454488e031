"""RPC observers: every finished call, with its status code and duration, goes to them (the call
pipeline calls them; pipeline.py)."""

from __future__ import annotations

import logging
from collections.abc import Callable

import grpc

from service_common.handlers import is_cancellation

log = logging.getLogger("lstm_stack.rpc")

# Called once per finished RPC with (method, status code name, seconds).
RpcObserver = Callable[[str, str, float], None]


def outcome_code(context: grpc.aio.ServicerContext, error: BaseException | None) -> str:
    """The status the client saw, as a code name."""
    if is_cancellation(error):
        # The call ended before the handler did (client cancel or deadline): whatever the handler
        # returned, the client never saw OK.
        remaining = context.time_remaining()
        return "DEADLINE_EXCEEDED" if remaining is not None and remaining <= 0 else "CANCELLED"
    code = context.code()
    if code is not None:
        return code.name if isinstance(code, grpc.StatusCode) else str(code)
    if error is None:
        return "OK"
    return "UNKNOWN"


def log_rpc(method: str, code: str, seconds: float) -> None:
    """Successful calls at DEBUG (an access log at thousands of calls a second would cost more than
    the calls; the metrics count them), cancellations at INFO, every error at WARNING."""
    if code == "OK":
        level = logging.DEBUG
    elif code == "CANCELLED":
        level = logging.INFO
    else:
        level = logging.WARNING
    log.log(level, "%s %s %.1fms", method, code, seconds * 1000)
