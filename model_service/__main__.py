"""python -m model_service --port N --store DIR --scaler-address HOST:PORT (flags also from LSTM_MODEL_*)."""

from __future__ import annotations

import dataclasses
import os
import sys
import tempfile
from collections.abc import Sequence
from pathlib import Path

from model_service.settings import TRAINER_FACTORY, TRAINER_SOCKET_NAME, ModelSettings, trainer_settings
from service_common.server import configure_logging, serve
from service_common.settings import load_settings
from service_common.supervisor import Role, run_workers, worker_count


def main(argv: Sequence[str] | None = None) -> int:
    settings = load_settings(ModelSettings, argv, description="lstm-stack model service")
    configure_logging(settings.log_level)
    if not settings.scaler_address:
        print("error: --scaler-address (or LSTM_MODEL_SCALER_ADDRESS) is required", file=sys.stderr)
        return 2
    # TensorFlow is imported here, after argument parsing, so --help stays instant; its C++ start-up
    # chatter stays quiet unless the operator asked for it.
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    if worker_count(settings.workers) > 1:
        return _run_supervised(settings)
    from model_service.app import create_server

    managed, port = create_server(settings)
    serve(managed, port, settings, "model service")
    return 0


def _run_supervised(settings: ModelSettings) -> int:
    """Workers on one port plus one trainer process they all forward Train to, on a private socket."""
    with tempfile.TemporaryDirectory(prefix="lstm-trainer-") as runtime_dir:
        socket_path = str(Path(runtime_dir) / TRAINER_SOCKET_NAME)
        workers = dataclasses.replace(settings, trainer_address=f"unix:{socket_path}")
        trainer = Role("trainer", TRAINER_FACTORY, trainer_settings(settings, socket_path))
        return run_workers("model service", workers, "model_service.app:create_server", [trainer])


if __name__ == "__main__":
    sys.exit(main())
