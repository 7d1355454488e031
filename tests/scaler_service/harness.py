"""An in-process scaler service on 127.0.0.1 port 0, with a channel and stub, for tests."""

from __future__ import annotations

import dataclasses
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

from protos.lstm_stack.v1 import scaler_pb2_grpc
from scaler_service.app import create_server
from scaler_service.settings import ScalerSettings
from service_common.channels import message_size_options
from service_common.server import ManagedServer
from tests.service_common.certs import TlsFiles

# The client accepts anything; the server's own limit is what tests exercise.
CHANNEL_OPTIONS = [
    *message_size_options(512 * 1024 * 1024),
]


@dataclasses.dataclass
class ScalerServerHandle:
    address: str
    stub: scaler_pb2_grpc.ScalerServiceStub
    channel: grpc.Channel
    server: ManagedServer
    settings: ScalerSettings

    @property
    def store(self) -> Path:
        return self.settings.store

    def health(self, service: str = "") -> str:
        reply = health_pb2_grpc.HealthStub(self.channel).Check(
            health_pb2.HealthCheckRequest(service=service), timeout=5
        )
        return health_pb2.HealthCheckResponse.ServingStatus.Name(reply.status)


def secure_overrides(tls: TlsFiles, token: str) -> dict[str, Any]:
    """Settings for a server that wants ``token`` and a client certificate signed by ``tls.ca``."""
    return {
        "auth_token": token,
        "tls_cert": str(tls.server_cert),
        "tls_key": str(tls.server_key),
        "tls_client_ca": str(tls.ca),
    }


@contextmanager
def running_scaler_server(store: Path, **overrides: Any) -> Iterator[ScalerServerHandle]:
    settings = ScalerSettings(
        **{
            "host": "127.0.0.1",
            "port": 0,
            "store": store,
            "grace_seconds": 0.0,
            "executor_threads": 40,
            **overrides,
        }
    )
    server, port = create_server(settings)
    server.start()
    address = f"127.0.0.1:{port}"
    channel = grpc.insecure_channel(address, options=CHANNEL_OPTIONS)
    try:
        yield ScalerServerHandle(
            address, scaler_pb2_grpc.ScalerServiceStub(channel), channel, server, settings
        )
    finally:
        channel.close()
        server.stop(0)
