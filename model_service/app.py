"""Wiring: settings -> signed store -> registry/runtime -> trainer -> servicers -> a ManagedServer (not started)."""

from __future__ import annotations

import logging
import threading
from collections.abc import Iterable

import grpc

from model_service.cost import Admission
from model_service.inference_protocol import add_inference_protocol
from model_service.registry import ModelRegistry
from model_service.runtime import ModelRuntime
from model_service.scaler_gateway import ScalerGateway
from model_service.servicer import ModelServicer
from model_service.serving import ServingOptions
from model_service.settings import ModelSettings
from model_service.training import TrainingManager
from protos.lstm_stack.v1 import model_pb2, model_pb2_grpc
from service_common.artifacts import ArtifactStore, load_signing_key
from service_common.interceptors import RpcObserver
from service_common.metrics import ServiceMetrics
from service_common.server import ManagedServer, build_server

log = logging.getLogger(__name__)

SERVICE_NAME = model_pb2.DESCRIPTOR.services_by_name["ModelService"].full_name
# Model versions live under <store>/models; the signing key (if generated) at <store>/.signing-key.
ARTIFACT_DIR = "models"


def create_server(
    settings: ModelSettings, observers: Iterable[RpcObserver] = ()
) -> tuple[ManagedServer, int]:
    """A ready-to-start server; every stored model is verified and loaded before this returns."""
    key = load_signing_key(settings.signing_key, settings.signing_key_file, settings.store)
    store = ArtifactStore(settings.store / ARTIFACT_DIR, key)
    gateway = ScalerGateway(
        settings.scaler_address,
        settings.scaler_timeout_seconds,
        token=settings.scaler_token,
        token_file=settings.scaler_token_file,
        tls_ca=settings.scaler_tls_ca,
        tls_cert=settings.scaler_tls_cert,
        tls_key=settings.scaler_tls_key,
        tls_server_name=settings.scaler_tls_server_name,
        max_message_bytes=settings.max_message_bytes,
    )
    metrics = ServiceMetrics()

    def observe_batch(rows: int) -> None:
        metrics.observe_batch("predict", rows)

    serving = ServingOptions(
        max_batch_size=settings.max_batch_size,
        max_batch_wait_seconds=settings.max_batch_wait_ms / 1000.0,
        jit_compile=settings.jit_compile,
        observe_batch=observe_batch,
        admission=Admission.from_settings(settings.memory_budget_mb, settings.max_message_bytes),
    )
    registry = ModelRegistry(store, serving)
    registry.load_all()
    runtime = ModelRuntime(registry)

    trainer = TrainingManager(
        registry,
        gateway,
        serving,
        max_jobs=settings.max_training_jobs,
        max_work=settings.max_training_work,
        track=metrics.training_job,
    )
    servicer = ModelServicer(runtime, trainer)

    def register(server: grpc.Server) -> list[str]:
        model_pb2_grpc.add_ModelServiceServicer_to_server(servicer, server)
        return [SERVICE_NAME, *add_inference_protocol(server, runtime)]

    managed, port = build_server(settings, register, observers=observers, metrics=metrics)
    managed.metrics.track_artifacts("model", registry.count)
    managed.on_stop(gateway.close)
    managed.on_stop(registry.close)
    managed.on_stop(trainer.shutdown)  # on_stop runs in reverse: training stops first
    if settings.warm_on_start:
        threading.Thread(target=registry.warm_all, name="warm-models", daemon=True).start()
    return managed, port
