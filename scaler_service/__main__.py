"""python -m scaler_service --port N --store DIR (every flag also from LSTM_SCALER_* variables)."""

from __future__ import annotations

import sys
from collections.abc import Sequence

from scaler_service.app import create_server
from scaler_service.settings import ScalerSettings
from service_common.server import configure_logging, serve
from service_common.settings import load_settings
from service_common.supervisor import run_workers, worker_count


def main(argv: Sequence[str] | None = None) -> int:
    settings = load_settings(ScalerSettings, argv, description="lstm-stack scaler service")
    configure_logging(settings.log_level)
    if worker_count(settings.workers) > 1:
        return run_workers("scaler service", settings, "scaler_service.app:create_server")
    managed, port = create_server(settings)
    serve(managed, port, settings, "scaler service")
    return 0


if __name__ == "__main__":
    sys.exit(main())
