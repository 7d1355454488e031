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

F = TypeVar("F", bound=Callable[..., Any])


def status_for(exc: BaseException) -> tuple[grpc.StatusCode, str]:
    for cls in type(exc).__mro__:
        if cls in STATUS_BY_ERROR:
            return STATUS_BY_ERROR[cls], str(exc)
    return grpc.StatusCode.INTERNAL, f"internal error: {type(exc).__name__}: {exc}"


def _abort(context: grpc.ServicerContext, exc: BaseException) -> None:
    code, message = status_for(exc)
    if code == grpc.StatusCode.INTERNAL:
        log.exception("unexpected error")
    context.abort(code, message)


def _is_abort(exc: BaseException) -> bool:
    # context.abort raises a plain Exception after setting the status; let it through untouched.
    return type(exc) is Exception and not exc.args


def map_errors(handler: F) -> F:
    """Turn domain exceptions raised by a servicer method into precise status codes (never UNKNOWN)."""
    if inspect.isgeneratorfunction(handler):

        @functools.wraps(handler)
        def stream_wrapper(self: Any, request: Any, context: grpc.ServicerContext) -> Any:
            try:
                yield from handler(self, request, context)
            except Exception as exc:  # noqa: BLE001 - mapped to a status
                if _is_abort(exc):
                    raise
                _abort(context, exc)

        return stream_wrapper  # type: ignore[return-value]

    @functools.wraps(handler)
    def unary_wrapper(self: Any, request: Any, context: grpc.ServicerContext) -> Any:
        try:
            return handler(self, request, context)
        except Exception as exc:  # noqa: BLE001 - mapped to a status
            if _is_abort(exc):
                raise
            _abort(context, exc)

    return unary_wrapper  # type: ignore[return-value]
