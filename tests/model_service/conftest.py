"""Model-service fixtures: in-process servers on 127.0.0.1 port 0, next to an in-process scaler service."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest

from model_service.app import create_server
from model_service.settings import ModelSettings
from protos.lstm_stack.v1 import model_pb2_grpc
from tests.harness import ServiceHandle, running_service
from tests.scaler_service.harness import ScalerServerHandle, running_scaler_server

ModelServerHandle = ServiceHandle[ModelSettings]


@contextmanager
def running_model_server(store: Path, scaler_address: str, **overrides: Any) -> Iterator[ModelServerHandle]:
    settings = ModelSettings(
        **{
            "host": "127.0.0.1",
            "port": 0,
            "store": store,
            "scaler_address": scaler_address,
            "grace_seconds": 0.0,
            "scaler_timeout_seconds": 10.0,
            "warm_on_start": False,
            **overrides,
        }
    )
    with running_service(create_server, settings, model_pb2_grpc.ModelServiceStub) as handle:
        yield handle


@pytest.fixture(scope="module")
def shared_scaler(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ScalerServerHandle]:
    """One scaler service for a whole test module (its tests do not depend on each other's scalers)."""
    with running_scaler_server(tmp_path_factory.mktemp("scaler-store")) as handle:
        yield handle


@pytest.fixture(scope="module")
def model_server(
    shared_scaler: ScalerServerHandle, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[ModelServerHandle]:
    """One model service per test module, wired to the module's scaler service."""
    with running_model_server(tmp_path_factory.mktemp("model-store"), shared_scaler.address) as handle:
        yield handle
