"""Fixtures shared by every test package."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.scaler_service.harness import ScalerServerHandle, running_scaler_server

# Service processes the tests start run one server process each (as `--workers 1`) unless a test asks
# for more with the flag, which beats the environment: most tests kill, restart and inspect "the"
# process. The worker-process tests (tests/system/test_workers.py) pass --workers explicitly.
os.environ["LSTM_MODEL_WORKERS"] = "1"
os.environ["LSTM_SCALER_WORKERS"] = "1"

# tests/cluster (SeaweedFS, Envoy, replicas: minutes each) runs from .ci/run via scripts/cluster_checks.sh,
# not in `make test`; without the switch pytest does not collect it at all (nothing is skipped or counted).
collect_ignore = [] if os.environ.get("LSTM_CLUSTER_TESTS") == "1" else ["cluster"]


@pytest.fixture
def scaler_server(tmp_path: Path) -> Iterator[ScalerServerHandle]:
    """A fresh in-process scaler service (127.0.0.1, port 0, store in tmp_path) with .address and .stub."""
    with running_scaler_server(tmp_path / "scaler-store") as handle:
        yield handle
