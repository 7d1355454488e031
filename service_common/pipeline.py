"""What every call goes through — observation (logs, metrics) and the shutdown gate — wrapped into each
method handler once, when it is registered.

A grpc.aio interceptor does the same work per call: the server awaits a coroutine per interceptor and
the interceptor rebuilds a method handler for every call. Wrapping at registration leaves one extra
coroutine frame per call and nothing else: bench/bench_serving.py prints our no-op floor (health Check,
through this pipeline) next to MLServer's (grpc.aio, no interceptors).
Interceptors stay for what must run before the request is parsed: auth (security.AuthInterceptor),
whose refusals are wrapped here too so they are observed like any other call.

``CallPipeline.server(grpc_server)`` is the server the servicers, health and reflection register on:
the real one, whose handlers come out wrapped.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from typing import Any

import grpc

from service_common.handlers import behaviour_of, is_async, refusing_handler, wrap_behaviour
from service_common.observers import RpcObserver, outcome_code
from service_common.shutdown import HEALTH_PREFIX, ShutdownGate

SHUTTING_DOWN = "the server is shutting down; retry on another instance"


class _MethodHook:
    """wrap_behaviour's hook for one method: counted by the gate (health is not), observed at the end."""

    def __init__(self, method: str, observers: Sequence[RpcObserver], gate: ShutdownGate) -> None:
        self._method = method
        self._observers = observers
        self._gate = gate
        self._gated = not method.startswith(HEALTH_PREFIX)

    def started(self, _context: Any) -> float:
        self._gate.arrived(counted=self._gated)
        return time.perf_counter()

    def refusal(self) -> tuple[grpc.StatusCode, str] | None:
        if self._gated and self._gate.closed:
            return grpc.StatusCode.UNAVAILABLE, SHUTTING_DOWN
        return None

    def finished(self, token: float, context: grpc.aio.ServicerContext, error: BaseException | None) -> None:
        if self._gated:
            self._gate.left()
        seconds = time.perf_counter() - token
        code = outcome_code(context, error)
        for observer in self._observers:
            observer(self._method, code, seconds)


class CallPipeline:
    def __init__(self, observers: Sequence[RpcObserver], gate: ShutdownGate) -> None:
        self.gate = gate
        self._observers = tuple(observers)
        # id(original handler) -> (original, wrapped): a generic handler hands back the same object
        # for every call of a method, so each is wrapped once. The original is kept alive with it.
        self._wrapped: dict[int, tuple[grpc.RpcMethodHandler, grpc.RpcMethodHandler]] = {}

    def wrap(self, method: str, handler: grpc.RpcMethodHandler) -> grpc.RpcMethodHandler:
        known = self._wrapped.get(id(handler))
        if known is not None and known[0] is handler:
            return known[1]
        served = handler
        if not is_async(behaviour_of(handler)):
            # Not a coroutine: a generated base-class stub (the trainer process serves Train only) or
            # a servicer method written without `async`, which grpc.aio would run on a hidden thread.
            # Either way the method is not served here, and says so.
            served = refusing_handler(
                handler, grpc.StatusCode.UNIMPLEMENTED, f"{method} is not served by this server"
            )
        wrapped = wrap_behaviour(served, _MethodHook(method, self._observers, self.gate))
        self._wrapped[id(handler)] = (handler, wrapped)
        return wrapped

    def refused(self, method: str, handler: grpc.RpcMethodHandler) -> grpc.RpcMethodHandler:
        """A refusing handler made for one call (auth), observed; not cached: the method is whatever
        path the caller sent."""
        return wrap_behaviour(handler, _MethodHook(method, self._observers, self.gate))

    def server(self, grpc_server: grpc.aio.Server) -> grpc.aio.Server:
        return _WrappingServer(grpc_server, self)


class _WrappedGenericHandler(grpc.GenericRpcHandler):
    def __init__(self, inner: grpc.GenericRpcHandler, pipeline: CallPipeline) -> None:
        self._inner = inner
        self._pipeline = pipeline

    def service(self, handler_call_details: grpc.HandlerCallDetails) -> grpc.RpcMethodHandler | None:
        handler = self._inner.service(handler_call_details)
        if handler is None:
            return None
        return self._pipeline.wrap(handler_call_details.method, handler)


class _WrappingServer(grpc.aio.Server):
    """The grpc.aio server, with every handler registered through it wrapped by the pipeline. It is a
    grpc.aio.Server (reflection picks its aio servicer by that); everything else is the real server's."""

    def __init__(self, server: grpc.aio.Server, pipeline: CallPipeline) -> None:
        self._server = server
        self._pipeline = pipeline

    def add_generic_rpc_handlers(self, generic_rpc_handlers: Sequence[grpc.GenericRpcHandler]) -> None:
        self._server.add_generic_rpc_handlers(
            [_WrappedGenericHandler(handler, self._pipeline) for handler in generic_rpc_handlers]
        )

    def add_registered_method_handlers(
        self, service_name: str, method_handlers: dict[str, grpc.RpcMethodHandler]
    ) -> None:
        self._server.add_registered_method_handlers(
            service_name,
            {
                name: self._pipeline.wrap(f"/{service_name}/{name}", handler)
                for name, handler in method_handlers.items()
            },
        )

    def add_insecure_port(self, address: str) -> int:
        return self._server.add_insecure_port(address)

    def add_secure_port(self, address: str, server_credentials: grpc.ServerCredentials) -> int:
        return self._server.add_secure_port(address, server_credentials)

    async def start(self) -> None:
        await self._server.start()

    async def stop(self, grace: float | None) -> None:
        await self._server.stop(grace)

    async def wait_for_termination(self, timeout: float | None = None) -> bool:
        return await self._server.wait_for_termination(timeout)
