"""Both real services in process (127.0.0.1, port 0, stores in a temp dir) for client, CLI and demo tests."""

from __future__ import annotations

import dataclasses
from collections.abc import Iterator
from pathlib import Path

import pytest
from lstm_stack_client import LstmStackClient, connect

from model_service.app import create_server as create_model_server
from model_service.settings import ModelSettings
from scaler_service.app import create_server as create_scaler_server
from scaler_service.settings import ScalerSettings
from service_common.server import ManagedServer


@dataclasses.dataclass
class Stack:
    scaler_address: str
    model_address: str
    servers: list[ManagedServer]

    def client(self, **options: object) -> LstmStackClient:
        return connect(scaler_address=self.scaler_address, model_address=self.model_address, **options)  # type: ignore[arg-type]

    def cli_args(self) -> list[str]:
        return ["--scaler-address", self.scaler_address, "--model-address", self.model_address]


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    """One scaler and one model service shared by a test module (TensorFlow start-up is paid once)."""
    root = tmp_path_factory.mktemp("stack")
    common = {"host": "127.0.0.1", "port": 0, "grace_seconds": 0.0}
    scaler, scaler_port = create_scaler_server(ScalerSettings(store=root / "scaler", **common))
    scaler.start()
    scaler_address = f"127.0.0.1:{scaler_port}"
    model, model_port = create_model_server(
        ModelSettings(store=root / "model", scaler_address=scaler_address, warm_on_start=False, **common)
    )
    model.start()
    try:
        yield Stack(scaler_address, f"127.0.0.1:{model_port}", [model, scaler])
    finally:
        for server in (model, scaler):
            server.stop(0)


@pytest.fixture
def client(stack: Stack) -> Iterator[LstmStackClient]:
    with stack.client(timeout=60) as opened:
        yield opened


@pytest.fixture
def plot_dir(tmp_path: Path) -> Path:
    return tmp_path / "plots"
