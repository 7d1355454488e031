"""Maps domain errors to gRPC status codes, for unary and streaming handlers alike."""

from __future__ import annotations

import functools
import inspect
import logging
from collections.abc import Callable
from typing import Any, TypeVar

import grpc

from service_common import errors

log = logging.getLogger(__name__)

STATUS_BY_ERROR: dict[type[errors.ServiceError], grpc.StatusCode] = {
    errors.InvalidArgument: grpc.StatusCode.INVALID_ARGUMENT,
    errors.NotFound: grpc.StatusCode.NOT_FOUND,
    errors.AlreadyExists: grpc.StatusCode.ALREADY_EXISTS,
    errors.FailedPrecondition: grpc.StatusCode.FAILED_PRECONDITION,
    errors.ResourceExhausted: grpc.StatusCode.RESOURCE_EXHAUSTED,
    errors.Unavailable: grpc.StatusCode.UNAVAILABLE,
    errors.Cancelled: grpc.StatusCode.CANCELLED,
    errors.DeadlineExceeded: grpc.StatusCode.DEADLINE_EXCEEDED,
    errors.Unauthenticated: grpc.StatusCode.UNAUTHENTICATED,
    errors.IntegrityError: grpc.StatusCode.DATA_LOSS,
}

# The other way round, for statuses a peer of ours answered that we pass on unchanged.
ERROR_BY_STATUS: dict[grpc.StatusCode, type[errors.ServiceError]] = {
    code: cls for cls, code in STATUS_BY_ERROR.items()
}

F = TypeVar("F", bound=Callable[..., Any])


def status_for(exc: BaseException) -> tuple[grpc.StatusCode, str]:
    for cls in type(exc).__mro__:
        if cls in STATUS_BY_ERROR:
            return STATUS_BY_ERROR[cls], str(exc)
    return grpc.StatusCode.INTERNAL, f"internal error: {type(exc).__name__}: {exc}"


async def _abort(context: grpc.aio.ServicerContext, exc: BaseException) -> None:
    code, message = status_for(exc)
    if code == grpc.StatusCode.INTERNAL:
        log.exception("unexpected error")
    await context.abort(code, message)


def map_errors(handler: F) -> F:
    """Turn domain exceptions raised by an (async) servicer method into precise status codes (never UNKNOWN).

    ``context.abort`` raises grpc.aio.AbortError once the status is set; it passes through untouched,
    as do cancellations.
    """
    if inspect.isasyncgenfunction(handler):

        @functools.wraps(handler)
        async def stream_wrapper(self: Any, request: Any, context: grpc.aio.ServicerContext) -> Any:
            try:
                async for item in handler(self, request, context):
                    yield item
            except grpc.aio.AbortError:
                raise
            except Exception as exc:  # noqa: BLE001 - mapped to a status
                await _abort(context, exc)

        return stream_wrapper  # type: ignore[return-value]

    if not inspect.iscoroutinefunction(handler):
        raise TypeError(f"map_errors wraps `async def` servicer methods; {handler.__qualname__} is not one")

    @functools.wraps(handler)
    async def unary_wrapper(self: Any, request: Any, context: grpc.aio.ServicerContext) -> Any:
        try:
            return await handler(self, request, context)
        except grpc.aio.AbortError:
            raise
        except Exception as exc:  # noqa: BLE001 - mapped to a status
            await _abort(context, exc)

    return unary_wrapper  # type: ignore[return-value]
