"""Wiring: settings -> signed store -> registry -> servicer -> a ManagedServer (not yet started)."""

from __future__ import annotations

from collections.abc import Iterable

import grpc

from protos.lstm_stack.v1 import scaler_pb2, scaler_pb2_grpc
from scaler_service.registry import ScalerRegistry
from scaler_service.servicer import ScalerServicer
from scaler_service.settings import ScalerSettings
from service_common.artifacts import ArtifactStore, load_signing_key
from service_common.interceptors import RpcObserver
from service_common.metrics import ServiceMetrics
from service_common.server import ManagedServer, build_server

SERVICE_NAME = scaler_pb2.DESCRIPTOR.services_by_name["ScalerService"].full_name
# Scaler versions live under <store>/scalers; the signing key (if generated) at <store>/.signing-key.
ARTIFACT_DIR = "scalers"


def create_registry(settings: ScalerSettings) -> ScalerRegistry:
    key = load_signing_key(settings.signing_key, settings.signing_key_file, settings.store)
    return ScalerRegistry(ArtifactStore(settings.store / ARTIFACT_DIR, key))


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
