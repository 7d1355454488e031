"""The client's hand-encoded grpc.health.v1 messages match grpcio-health-checking's, byte for byte."""

from __future__ import annotations

import pytest
from grpc_health.v1 import health_pb2
from lstm_stack_client import health


@pytest.mark.parametrize("service", ["", "lstm_stack.v1.ModelService", "x" * 200, "ünï"])
def test_request_bytes_match_the_generated_message(service: str) -> None:
    assert (
        health.encode_request(service) == health_pb2.HealthCheckRequest(service=service).SerializeToString()
    )


@pytest.mark.parametrize("status", [0, 1, 2, 3])
def test_every_status_decodes_to_its_name(status: int) -> None:
    data = health_pb2.HealthCheckResponse(status=status).SerializeToString()
    assert health.decode_status(data) == health_pb2.HealthCheckResponse.ServingStatus.Name(status)


def test_unknown_fields_are_skipped_and_truncation_refused() -> None:
    serving = health_pb2.HealthCheckResponse(status=1).SerializeToString()
    extra = (
        b"\x12\x03abc" + b"\x19" + bytes(8) + b"\x25" + bytes(4)
    )  # fields 2 (bytes), 3 (64-bit), 4 (32-bit)
    assert health.decode_status(extra + serving) == "SERVING"
    with pytest.raises(ValueError):
        health.decode_status(b"\x12\x05ab")
