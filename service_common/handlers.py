"""The two handler rebuilds the server needs: run hooks around a call (the call pipeline), or refuse it
(auth).

A method handler comes in four kinds (unary/stream request x unary/stream response); whoever wraps or
replaces behaviour must hand back a handler of the same kind, with the same serializers. These two
helpers are the only places that know the four kinds.

The wrapped handler's request deserializer never raises. grpc.aio answers an exception raised while it
deserializes a request with UNKNOWN ("Unexpected <class DecodeError>") and a logged traceback, and it
calls the deserializer before any of our code runs. So the deserializer hands on an ``Undecodable`` in
place of the message, and the wrapped behaviour refuses the call with INVALID_ARGUMENT when it sees one:
for a request stream, at the message that could not be decoded.
"""

from __future__ import annotations

import asyncio
import inspect
from collections.abc import AsyncIterator, Callable
from typing import Any, Protocol

import grpc
from google.protobuf.message import DecodeError


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


class Undecodable:
    """What a wrapped deserializer hands on in place of a request it could not decode."""

    __slots__ = ("message",)

    def __init__(self, message: str) -> None:
        self.message = message


def message_type_name(deserializer: Callable[[bytes], Any]) -> str:
    """The protobuf type a generated deserializer (``SomeMessage.FromString``) parses, by full name."""
    descriptor = getattr(getattr(deserializer, "__self__", None), "DESCRIPTOR", None)
    name = getattr(descriptor, "full_name", None)
    return name if isinstance(name, str) else getattr(deserializer, "__qualname__", repr(deserializer))


def tolerant_deserializer(
    deserializer: Callable[[bytes], Any] | None,
) -> Callable[[bytes], Any] | None:
    """``deserializer``, handing on an ``Undecodable`` naming the expected type instead of raising."""
    if deserializer is None:
        return None
    expected = message_type_name(deserializer)

    def deserialize(raw: bytes) -> Any:
        try:
            return deserializer(raw)
        except DecodeError as exc:
            return Undecodable(f"the request is not a valid {expected} ({len(raw)} bytes came): {exc}")

    return deserialize


async def _refuse_undecodable(request: Any, context: grpc.aio.ServicerContext) -> None:
    if isinstance(request, Undecodable):
        await context.abort(grpc.StatusCode.INVALID_ARGUMENT, request.message)


async def _decoded(requests: AsyncIterator[Any], context: grpc.aio.ServicerContext) -> AsyncIterator[Any]:
    """A request stream that ends the call with INVALID_ARGUMENT at a message that could not be decoded
    (``context.abort`` sends the status, then raises through the handler's loop)."""
    async for request in requests:
        await _refuse_undecodable(request, context)
        yield request


def wrap_behaviour(handler: grpc.RpcMethodHandler, hook: CallHook) -> grpc.RpcMethodHandler:
    """The same kind of handler, calling ``hook.started`` / ``hook.finished`` around each call, and
    refusing a request that could not be decoded with INVALID_ARGUMENT."""

    def checked(request: Any, streamed_requests: bool, context: grpc.aio.ServicerContext) -> Any:
        return _decoded(request, context) if streamed_requests else request

    def unary_response(behaviour: Callable[..., Any], streamed_requests: bool) -> Callable[..., Any]:
        _require_async(behaviour)

        async def run(request: Any, context: grpc.aio.ServicerContext) -> Any:
            token = hook.started(context)
            error: BaseException | None = None
            try:
                if (refused := hook.refusal()) is not None:
                    await context.abort(*refused)
                await _refuse_undecodable(request, context)
                result = await behaviour(checked(request, streamed_requests, context), context)
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
                await _refuse_undecodable(request, context)
                requests = checked(request, streamed_requests, context)
                if inspect.isasyncgenfunction(behaviour):
                    async for item in behaviour(requests, context):
                        yield item
                else:  # a coroutine that writes with context.write()
                    await behaviour(requests, context)
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
    serialization = (tolerant_deserializer(handler.request_deserializer), handler.response_serializer)
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
