"""Domain errors. Domain code raises these; servicers map them to gRPC status codes (see grpc_errors)."""

from __future__ import annotations


class ServiceError(Exception):
    """Base of every error a caller is meant to see; the message says what was expected and what came."""


class InvalidArgument(ServiceError):
    pass


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
