"""Domain errors. Domain code raises these; servicers map them to gRPC status codes (see grpc_errors)."""

from __future__ import annotations

# The codec (lstm_stack_client.codec, which the services use too) raises these; one class each way.
from lstm_stack_client.errors import ECHO_LIMIT, MAX_MESSAGE_BYTES, InvalidArgument, ServiceError, echo

__all__ = [
    "ECHO_LIMIT",
    "MAX_MESSAGE_BYTES",
    "AlreadyExists",
    "Cancelled",
    "DeadlineExceeded",
    "FailedPrecondition",
    "IntegrityError",
    "InvalidArgument",
    "NotFound",
    "ResourceExhausted",
    "ServiceError",
    "Unauthenticated",
    "Unavailable",
    "echo",
]


class NotFound(ServiceError):
    pass


class AlreadyExists(ServiceError):
    pass


class FailedPrecondition(ServiceError):
    pass


class ResourceExhausted(ServiceError):
    pass


class Unavailable(ServiceError):
    pass


class Cancelled(ServiceError):
    pass


class DeadlineExceeded(ServiceError):
    pass


class Unauthenticated(ServiceError):
    pass


class IntegrityError(ServiceError):
    """An artifact on disk failed its signature or is malformed; it is never deserialized."""
