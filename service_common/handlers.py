"""The two handler rebuilds the server needs: run hooks around a call (the call pipeline), or refuse it
(auth).

A method handler comes in four kinds (unary/stream request x unary/stream response); whoever wraps or
replaces behaviour must hand back a handler of the same kind, with the same (de)serializers. These two
helpers are the only places that know the four kinds.
"""

from __future__ import annotations

import asyncio
import inspect
from collections.abc import AsyncIterator, Callable
from typing import Any, Protocol

import grpc


class CallHook(Protocol):
    """``started`` runs when the handler starts; ``refusal`` then says whether to abort the call with
    a (code, message) instead of running it; ``finished`` once it ended, however it ended."""

    def started(self, context: grpc.aio.ServicerContext) -> Any: ...

    def refusal(self) -> tuple[grpc.StatusCode, str] | None: ...

    def finished(
        self, token: Any, context: grpc.aio.ServicerContext, error: BaseException | None
    ) -> None: ...


def is_async(behaviour: Callable[..., Any]) -> bool:
    return inspect.iscoroutinefunction(behaviour) or inspect.isasyncgenfunction(behaviour)


def behaviour_of(handler: grpc.RpcMethodHandler) -> Callable[..., Any]:
    """The function a handler calls, whatever its kind."""
    return handler.unary_unary or handler.unary_stream or handler.stream_unary or handler.stream_stream


def _require_async(behaviour: Callable[..., Any]) -> None:
    if not is_async(behaviour):
        raise TypeError(
            f"{getattr(behaviour, '__qualname__', behaviour)!r} is not a coroutine or async generator "
            "function; grpc.aio servicer methods must be `async def`"
        )


def wrap_behaviour(handler: grpc.RpcMethodHandler, hook: CallHook) -> grpc.RpcMethodHandler:
    """The same kind of handler, calling ``hook.started`` / ``hook.finished`` around each call."""

    def unary_response(behaviour: Callable[..., Any], streamed_requests: bool) -> Callable[..., Any]:
        _require_async(behaviour)

        async def run(request: Any, context: grpc.aio.ServicerContext) -> Any:
            token = hook.started(context)
            error: BaseException | None = None
            try:
                if (refused := hook.refusal()) is not None:
                    await context.abort(*refused)
                result = await behaviour(request, context)
                if streamed_requests:
                    await _let_a_cancellation_land()
                return result
            except BaseException as exc:
                error = exc
                raise
            finally:
                hook.finished(token, context, error)

        return run

    def stream_response(behaviour: Callable[..., Any], streamed_requests: bool) -> Callable[..., Any]:
        _require_async(behaviour)

        async def run(request: Any, context: grpc.aio.ServicerContext) -> AsyncIterator[Any]:
            token = hook.started(context)
            error: BaseException | None = None
            try:
                if (refused := hook.refusal()) is not None:
                    await context.abort(*refused)
                if inspect.isasyncgenfunction(behaviour):
                    async for item in behaviour(request, context):
                        yield item
                else:  # a coroutine that writes with context.write()
                    await behaviour(request, context)
                if streamed_requests:
                    await _let_a_cancellation_land()
            except BaseException as exc:
                error = exc
                raise
            finally:
                hook.finished(token, context, error)

        return run

    return _rebuild(handler, unary_response, stream_response)


async def confirm_client_is_there(context: grpc.aio.ServicerContext) -> None:
    """Before a side effect at the end of a request stream: raise CancelledError if the client cancelled.

    grpc.aio ends the request stream of a call the client cancelled as if it were complete, then
    cancels the handler. Sending the initial metadata is a round trip through the transport, which
    fails on a stream the client reset, so the cancellation lands here instead of after the side effect.
    """
    await context.send_initial_metadata(())


async def _let_a_cancellation_land() -> None:
    """A client that cancels a request stream first ends it as if it were complete, and the handler's
    task is cancelled a moment later: one turn of the loop lets that cancellation arrive, so a call the
    client abandoned is not counted as OK."""
    await asyncio.sleep(0)


def refusing_handler(
    handler: grpc.RpcMethodHandler | None, code: grpc.StatusCode, message: str
) -> grpc.RpcMethodHandler:
    """A handler of the same kind as ``handler`` (unary when None) that aborts with ``code``.

    Requests are passed on as raw bytes (no deserializer): a refused caller's payload is never parsed.
    """

    async def refuse(_request: Any, context: grpc.aio.ServicerContext) -> Any:
        await context.abort(code, message)

    async def refuse_stream(_request: Any, context: grpc.aio.ServicerContext) -> AsyncIterator[Any]:
        await context.abort(code, message)
        yield  # pragma: no cover - abort raises; this only makes the function an async generator

    if handler is None or handler.unary_unary:
        return grpc.unary_unary_rpc_method_handler(refuse)
    if handler.unary_stream:
        return grpc.unary_stream_rpc_method_handler(refuse_stream)
    if handler.stream_unary:
        return grpc.stream_unary_rpc_method_handler(refuse)
    return grpc.stream_stream_rpc_method_handler(refuse_stream)


def _rebuild(
    handler: grpc.RpcMethodHandler,
    unary_response: Callable[[Callable[..., Any], bool], Callable[..., Any]],
    stream_response: Callable[[Callable[..., Any], bool], Callable[..., Any]],
) -> grpc.RpcMethodHandler:
    serialization = (handler.request_deserializer, handler.response_serializer)
    if handler.unary_unary:
        return grpc.unary_unary_rpc_method_handler(unary_response(handler.unary_unary, False), *serialization)
    if handler.unary_stream:
        return grpc.unary_stream_rpc_method_handler(
            stream_response(handler.unary_stream, False), *serialization
        )
    if handler.stream_unary:
        return grpc.stream_unary_rpc_method_handler(
            unary_response(handler.stream_unary, True), *serialization
        )
    return grpc.stream_stream_rpc_method_handler(stream_response(handler.stream_stream, True), *serialization)


def is_cancellation(error: BaseException | None) -> bool:
    """The call ended because the client went away or its deadline passed (not by our doing).

    grpc.aio cancels the handler's task then; a handler that swallowed the CancelledError and returned
    anyway still ran in a task with a cancellation pending, and its client never saw the answer.
    """
    if isinstance(error, asyncio.CancelledError | GeneratorExit):
        return True
    task = asyncio.current_task()
    return task is not None and task.cancelling() > 0
