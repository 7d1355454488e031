"""grpc.health.v1 Health/Check without the grpcio-health-checking package (the client's dependencies
stay grpcio, protobuf and numpy). Both messages are one field each, so they are encoded by hand:
HealthCheckRequest { string service = 1; }, HealthCheckResponse { ServingStatus status = 1; }.
"""

from __future__ import annotations

from collections.abc import Callable

import grpc

from lstm_stack_client.wire import length_delimited, read_varint

CHECK_METHOD = "/grpc.health.v1.Health/Check"
# HealthCheckResponse.ServingStatus, by number.
STATUS_NAMES = {0: "UNKNOWN", 1: "SERVING", 2: "NOT_SERVING", 3: "SERVICE_UNKNOWN"}


def encode_request(service: str) -> bytes:
    """A serialized HealthCheckRequest (an empty service name is the empty message, as protobuf has it)."""
    name = service.encode("utf-8")
    return length_delimited(1, name) if name else b""


def decode_status(data: bytes) -> str:
    """The ServingStatus name of a serialized HealthCheckResponse; unknown fields are skipped."""
    status = 0
    pos = 0
    while pos < len(data):
        key, pos = read_varint(data, pos)
        field, wire = key >> 3, key & 7
        if wire == 0:
            value, pos = read_varint(data, pos)
            if field == 1:
                status = value
        elif wire == 2:
            length, pos = read_varint(data, pos)
            pos += length
        elif wire == 1:
            pos += 8
        elif wire == 5:
            pos += 4
        else:
            raise ValueError(f"unexpected wire type {wire} in a health reply")
    if pos > len(data):
        raise ValueError("truncated health reply")
    return STATUS_NAMES.get(status, str(status))


def check_method(channel: grpc.Channel) -> Callable[..., str]:
    """The Check RPC on ``channel``: called with the service name, it answers the status name."""
    method: Callable[..., str] = channel.unary_unary(
        CHECK_METHOD, request_serializer=encode_request, response_deserializer=decode_status
    )
    return method
