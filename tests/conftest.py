"""Fixtures shared by every test package."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.scaler_service.harness import ScalerServerHandle, running_scaler_server


@pytest.fixture
def scaler_server(tmp_path: Path) -> Iterator[ScalerServerHandle]:
    """A fresh in-process scaler service (127.0.0.1, port 0, store in tmp_path) with .address and .stub."""
    with running_scaler_server(tmp_path / "scaler-store") as handle:
        yield handle
