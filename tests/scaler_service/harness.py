"""An in-process scaler service on 127.0.0.1 port 0, with a channel and stub, for tests."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from protos.lstm_stack.v1 import scaler_pb2_grpc
from scaler_service.app import create_server
from scaler_service.settings import ScalerSettings
from tests.harness import ServiceHandle, running_service
from tests.service_common.certs import TlsFiles

ScalerServerHandle = ServiceHandle[ScalerSettings]


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
    with running_service(create_server, settings, scaler_pb2_grpc.ScalerServiceStub) as handle:
        yield handle
