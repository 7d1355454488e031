"""The one in-process test harness: a service built by its own ``create_server(settings)`` on 127.0.0.1
port 0, a channel to it and a stub, stopped at the end. The per-service helpers
(tests/scaler_service/harness.py, tests/model_service/conftest.py) only choose the settings."""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Generic, TypeVar

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

from service_common.channels import open_channel
from service_common.server import ManagedServer
from service_common.settings import ServerSettings

# The client accepts anything; the server's own limit is what tests exercise.
TEST_MAX_MESSAGE_BYTES = 512 * 1024 * 1024

SettingsT = TypeVar("SettingsT", bound=ServerSettings)


@dataclasses.dataclass
class ServiceHandle(Generic[SettingsT]):
    address: str
    stub: Any
    channel: grpc.Channel
    server: ManagedServer
    settings: SettingsT

    @property
    def store(self) -> Path:
        return Path(self.settings.store)

    def health(self, service: str = "") -> str:
        reply = health_pb2_grpc.HealthStub(self.channel).Check(
            health_pb2.HealthCheckRequest(service=service), timeout=5
        )
        return health_pb2.HealthCheckResponse.ServingStatus.Name(reply.status)


@contextmanager
def running_service(
    create_server: Callable[[SettingsT], tuple[ManagedServer, int]],
    settings: SettingsT,
    stub_class: Callable[[grpc.Channel], Any],
) -> Iterator[ServiceHandle[SettingsT]]:
    server, port = create_server(settings)
    server.start()
    address = f"127.0.0.1:{port}"
    channel = open_channel(address, max_message_bytes=TEST_MAX_MESSAGE_BYTES)
    try:
        yield ServiceHandle(address, stub_class(channel), channel, server, settings)
    finally:
        channel.close()
        server.stop(0)
