"""Wiring: settings -> signed store -> registry -> trainer -> servicers -> a ManagedServer (not started)."""

from __future__ import annotations

import gc
import logging
import threading
from collections.abc import Iterable

import grpc

from model_service.affine_scalers import ScalerRef
from model_service.datasets.dataset_servicer import DatasetServicer
from model_service.datasets.dataset_store import open_dataset_store
from model_service.inference_protocol import add_inference_protocol
from model_service.model_registry import ModelRegistry
from model_service.model_servicer import ModelServicer
from model_service.model_store import open_graph_store, open_model_store
from model_service.scaler_gateway import ScalerGateway
from model_service.serving import SessionBudget, serving_options
from model_service.settings import ModelSettings
from model_service.trainer_link import TrainerLink
from protos.lstm_stack.v1 import dataset_pb2, dataset_pb2_grpc, model_pb2, model_pb2_grpc
from service_common.metrics import ServiceMetrics
from service_common.observers import RpcObserver
from service_common.server import ManagedServer, build_server

log = logging.getLogger(__name__)

SERVICE_NAME = model_pb2.DESCRIPTOR.services_by_name["ModelService"].full_name
DATASET_SERVICE_NAME = dataset_pb2.DESCRIPTOR.services_by_name["DatasetService"].full_name


def freeze_heap() -> None:
    """Move everything built so far out of the cyclic GC's reach.

    grpc, numpy, ONNX Runtime and the store's listing leave many objects that live as long as the
    process; frozen, a full collection stops rescanning them, instead of now and then stalling
    every thread straight into the tail latency (figures in docs/performance.md).
    """
    gc.collect()
    gc.freeze()


def _delete_scalers(gateway: ScalerGateway, started: model_pb2.TrainStarted) -> None:
    """The scalers a job fitted before its trainer process died: nobody else will delete them."""
    for ref in (started.x_scaler, started.y_scaler):
        if ref.scaler_id:
            try:
                gateway.delete(ScalerRef(ref.scaler_id, ref.version))
            except Exception as exc:  # noqa: BLE001 - best effort: an orphan scaler harms nobody
                log.warning("could not delete scaler %s v%d: %s", ref.scaler_id, ref.version, exc)


def create_server(
    settings: ModelSettings, observers: Iterable[RpcObserver] = ()
) -> tuple[ManagedServer, int]:
    """A ready-to-start server; every stored version is listed (its record verified) and the --preload
    ones loaded before this returns. Other versions build their sessions on their first call."""
    store = open_model_store(settings)
    gateway = ScalerGateway.from_settings(settings)
    metrics = ServiceMetrics()

    def observe_batch(rows: int) -> None:
        metrics.observe_batch("predict", rows)

    serving = serving_options(settings)
    trainer = TrainerLink(settings, on_abandoned=lambda started: _delete_scalers(gateway, started))
    registry = ModelRegistry(
        store,
        serving,
        observe_batch,
        graphs=open_graph_store(settings),
        budget=SessionBudget(settings.max_loaded_models),
        make_graph=trainer.make_graph,
        preload=frozenset(i.strip() for i in settings.preload.split(",") if i.strip()),
    )
    registry.load_all()
    registry.start_watching(settings.store_poll_seconds)
    # Datasets live in the same store; the trainer process opens them from there.
    dataset_store = open_dataset_store(settings)
    servicer = ModelServicer(
        registry,
        trainer,
        metrics.training_job,
        admission=serving.admission,
        forget_scalers=lambda started: _delete_scalers(gateway, started),
        datasets=dataset_store,
    )
    datasets = DatasetServicer(dataset_store)

    def register(server: grpc.aio.Server) -> list[str]:
        model_pb2_grpc.add_ModelServiceServicer_to_server(servicer, server)
        dataset_pb2_grpc.add_DatasetServiceServicer_to_server(datasets, server)
        return [SERVICE_NAME, DATASET_SERVICE_NAME, *add_inference_protocol(server, registry)]

    managed, port = build_server(settings, register, observers=observers, metrics=metrics)
    managed.metrics.track_artifacts("model", registry.count)
    managed.on_stop(gateway.close)
    managed.on_stop(registry.close)
    managed.on_stop(trainer.close)  # on_stop runs in reverse: the trainer stops first
    managed.on_start(freeze_heap)
    if settings.warm_on_start:
        threading.Thread(target=registry.warm_all, name="warm-models", daemon=True).start()
    return managed, port
