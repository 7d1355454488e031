"""Fixtures shared by every test package."""

from __future__ import annotations

import os
import signal
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.scaler_service.harness import ScalerServerHandle, running_scaler_server

# Service processes the tests start run one server process each (as `--workers 1`) unless a test asks
# for more with the flag, which beats the environment: most tests kill, restart and inspect "the"
# process. The worker-process tests (tests/system/test_workers.py) pass --workers explicitly.
os.environ["LSTM_MODEL_WORKERS"] = "1"
os.environ["LSTM_SCALER_WORKERS"] = "1"

# The Ctrl-C tests send SIGINT as a terminal does. A suite started in the background by a
# non-interactive shell (`make test &`, nohup) inherits SIGINT ignored, and Python then installs no
# KeyboardInterrupt handler in it or in the processes it starts: give it the one a terminal's process has.
if signal.getsignal(signal.SIGINT) is signal.SIG_IGN:
    signal.signal(signal.SIGINT, signal.default_int_handler)

# `make test` (the README's command) runs the suite that fits in about ten minutes on two cores. The long
# checks, which start several real processes or train real models for minutes, run from .ci/run through
# scripts/system_checks.sh, which sets LSTM_LONG_CHECKS=1; without it pytest does not collect them at all
# (nothing is skipped or counted). tests/cluster also needs SeaweedFS and Envoy (LSTM_CLUSTER_TESTS=1).
LONG_CHECKS = [
    "system",
    "clients/test_cli_datasets.py",
    "clients/test_cli_forecast.py",
    "clients/test_cli_model_export.py",
    "clients/test_demo.py",
    "clients/test_node_client.py",
    "clients/test_node_package_install.py",
    "clients/test_python_client_wheel.py",
    "model_service/datasets/test_streamed_jobs.py",
    "model_service/datasets/test_train_by_reference.py",
    "model_service/forecasting/test_rpcs.py",
    "model_service/test_control.py",
    "model_service/test_export.py",
    "model_service/test_importing.py",
    "model_service/test_restart.py",
    "model_service/test_shared_store.py",
    "model_service/test_trainer.py",
]
collect_ignore = [] if os.environ.get("LSTM_LONG_CHECKS") == "1" else list(LONG_CHECKS)
if os.environ.get("LSTM_CLUSTER_TESTS") != "1":
    collect_ignore.append("cluster")


@pytest.fixture
def scaler_server(tmp_path: Path) -> Iterator[ScalerServerHandle]:
    """A fresh in-process scaler service (127.0.0.1, port 0, store in tmp_path) with .address and .stub."""
    with running_scaler_server(tmp_path / "scaler-store") as handle:
        yield handle
