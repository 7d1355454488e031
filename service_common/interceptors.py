"""The observing interceptor: every finished RPC, with its status code and duration, goes to observers."""

from __future__ import annotations

import logging
import time
from collections.abc import Awaitable, Callable
from typing import Any

import grpc

from service_common.handlers import is_cancellation, wrap_behaviour

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


class _Observe:
    def __init__(self, method: str, observe: RpcObserver) -> None:
        self._method = method
        self._observe = observe

    def started(self, _context: Any) -> float:
        return time.perf_counter()

    def finished(self, token: float, context: grpc.aio.ServicerContext, error: BaseException | None) -> None:
        self._observe(self._method, outcome_code(context, error), time.perf_counter() - token)


class ObservingInterceptor(grpc.aio.ServerInterceptor):
    """Feeds every finished RPC to a list of observers (logging, metrics)."""

    def __init__(self, observers: list[RpcObserver]) -> None:
        self._observers = observers

    def observe(self, method: str, code: str, seconds: float) -> None:
        for observer in self._observers:
            observer(method, code, seconds)

    async def intercept_service(
        self,
        continuation: Callable[[grpc.HandlerCallDetails], Awaitable[grpc.RpcMethodHandler]],
        handler_call_details: grpc.HandlerCallDetails,
    ) -> grpc.RpcMethodHandler:
        handler = await continuation(handler_call_details)
        if handler is None or not self._observers:
            return handler
        return wrap_behaviour(handler, _Observe(handler_call_details.method, self.observe))


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
