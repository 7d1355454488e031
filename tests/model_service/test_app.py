"""The model service's wiring: what create_server sets up around the shared bootstrap."""

from __future__ import annotations

import gc
from pathlib import Path

from tests.model_service.conftest import running_model_server
from tests.scaler_service.harness import ScalerServerHandle


def test_start_freezes_what_was_built_so_the_gc_stops_rescanning_it(
    shared_scaler: ScalerServerHandle, tmp_path: Path
) -> None:
    gc.unfreeze()
    assert gc.get_freeze_count() == 0
    with running_model_server(tmp_path / "store", shared_scaler.address):
        # Objects that existed before start (TensorFlow, Keras, the server itself) are out of the GC's scans.
        assert gc.get_freeze_count() > 10_000
