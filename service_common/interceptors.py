"""Server interceptors: each wraps the method handler so it sees the call's outcome and duration."""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterator
from typing import Any

import grpc

log = logging.getLogger("lstm_stack.rpc")

# Called once per finished RPC with (method, status code name, seconds).
RpcObserver = Callable[[str, str, float], None]


def _code_name(context: grpc.ServicerContext, default: str) -> str:
    code = context.code() if hasattr(context, "code") else None
    if code is None:
        return default
    if isinstance(code, grpc.StatusCode):
        return code.name
    return str(code)


def wrap_handler(handler: grpc.RpcMethodHandler, method: str, observe: RpcObserver) -> grpc.RpcMethodHandler:
    """Return the same kind of handler, calling ``observe`` when the RPC ends."""

    def finish(context: grpc.ServicerContext, start: float, failed: bool) -> None:
        default = "UNKNOWN" if failed else "OK"
        if not context.is_active():
            # The call ended before the handler did (client cancel or deadline): whatever the handler
            # returned, the client never saw OK.
            remaining = context.time_remaining()
            default = "DEADLINE_EXCEEDED" if remaining is not None and remaining <= 0 else "CANCELLED"
        observe(method, _code_name(context, default), time.perf_counter() - start)

    def unary(behaviour: Callable[..., Any]) -> Callable[..., Any]:
        def run(request: Any, context: grpc.ServicerContext) -> Any:
            start = time.perf_counter()
            failed = True
            try:
                result = behaviour(request, context)
                failed = False
                return result
            finally:
                finish(context, start, failed)

        return run

    def streaming(behaviour: Callable[..., Iterator[Any]]) -> Callable[..., Iterator[Any]]:
        def run(request: Any, context: grpc.ServicerContext) -> Iterator[Any]:
            start = time.perf_counter()
            failed = True
            try:
                yield from behaviour(request, context)
                failed = False
            finally:
                finish(context, start, failed)

        return run

    if handler.unary_unary:
        return grpc.unary_unary_rpc_method_handler(
            unary(handler.unary_unary), handler.request_deserializer, handler.response_serializer
        )
    if handler.unary_stream:
        return grpc.unary_stream_rpc_method_handler(
            streaming(handler.unary_stream), handler.request_deserializer, handler.response_serializer
        )
    if handler.stream_unary:
        return grpc.stream_unary_rpc_method_handler(
            unary(handler.stream_unary), handler.request_deserializer, handler.response_serializer
        )
    return grpc.stream_stream_rpc_method_handler(
        streaming(handler.stream_stream), handler.request_deserializer, handler.response_serializer
    )


class ObservingInterceptor(grpc.ServerInterceptor):
    """Feeds every finished RPC to a list of observers (logging, metrics)."""

    def __init__(self, observers: list[RpcObserver]) -> None:
        self._observers = observers

    def observe(self, method: str, code: str, seconds: float) -> None:
        for observer in self._observers:
            observer(method, code, seconds)

    def intercept_service(self, continuation: Callable[..., Any], handler_call_details: Any) -> Any:
        handler = continuation(handler_call_details)
        if handler is None or not self._observers:
            return handler
        return wrap_handler(handler, handler_call_details.method, self.observe)


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
