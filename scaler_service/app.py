"""Wiring: settings -> signed store -> registry -> servicer -> a ManagedServer (not yet started)."""

from __future__ import annotations

from collections.abc import Iterable

import grpc

from protos.lstm_stack.v1 import scaler_pb2, scaler_pb2_grpc
from scaler_service.scaler_registry import ScalerRegistry
from scaler_service.scaler_servicer import ScalerServicer
from scaler_service.settings import ScalerSettings
from service_common.metrics import ServiceMetrics
from service_common.observers import RpcObserver
from service_common.server import ManagedServer, build_server
from service_common.stores import open_artifact_store

SERVICE_NAME = scaler_pb2.DESCRIPTOR.services_by_name["ScalerService"].full_name
# Scaler versions live under <store>/scalers (a directory or an S3 prefix); a generated signing key (a
# directory store only) at <store>/.signing-key.
ARTIFACT_DIR = "scalers"


def create_registry(settings: ScalerSettings) -> ScalerRegistry:
    store = open_artifact_store(
        settings.store,
        ARTIFACT_DIR,
        settings.signing_key,
        settings.signing_key_file,
        settings.store_lease_seconds,
    )
    return ScalerRegistry(store)


def create_server(
    settings: ScalerSettings, observers: Iterable[RpcObserver] = ()
) -> tuple[ManagedServer, int]:
    registry = create_registry(settings)
    metrics = ServiceMetrics()
    # lstm_batch_rows{operation=fit|fit_stream|fit_transform|transform|inverse_transform}
    servicer = ScalerServicer(registry, settings.max_message_bytes, metrics.observe_batch)

    def register(server: grpc.aio.Server) -> list[str]:
        scaler_pb2_grpc.add_ScalerServiceServicer_to_server(servicer, server)
        return [SERVICE_NAME]

    managed, port = build_server(settings, register, observers=observers, metrics=metrics)
    # lstm_artifacts_stored{kind="scaler"} on the metrics endpoint, read at each scrape.
    managed.metrics.track_artifacts("scaler", registry.count)
    registry.start_watching(settings.store_poll_seconds)
    managed.on_stop(registry.close)
    return managed, port
