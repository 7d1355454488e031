"""The trainer process: everything that needs TensorFlow runs here, never in a process that answers Predict.

It serves three RPCs of ``lstm_stack.v1.ModelService`` on a unix socket: Train; ImportModel (Keras reads
the archive, and the version is committed with its checked serving graph); ExportModel, for SavedModel
files and for the serving graph of a version stored before versions carried one (made once, kept in
the store). It listens on a unix socket only the serving processes of
its instance know (a 0700 directory). Serving processes forward their Train streams to it
(model_service.trainer_link), so the job limit holds per instance across workers, a job's epochs never
compete with Predict for one process's GIL, and the trainer runs at a lower CPU priority (``nice``).
After ``trainer_recycle_jobs`` finished jobs it exits once idle and its owner starts a fresh one: what
TensorFlow and the jobs allocated goes back to the system.
"""

from __future__ import annotations

import asyncio
import logging
import os
import signal
from collections.abc import AsyncIterator

import grpc

from model_service import model_messages
from model_service.datasets.dataset_store import open_dataset_store
from model_service.export import ExportFormat
from model_service.importing import ModelImporter
from model_service.model_registry import VersionState, VersionView
from model_service.model_store import ModelPublisher, logdir, open_graph_store, open_model_store
from model_service.records import EpochProgress, ModelRecord
from model_service.scaler_gateway import ScalerGateway
from model_service.serving import serving_options
from model_service.settings import ModelSettings
from model_service.training import DatasetOptions, TrainStarted
from model_service.training.graph import StoredGraphs
from model_service.training.jobs import TrainingManager
from protos.lstm_stack.v1 import model_pb2, model_pb2_grpc
from service_common.artifacts import StoredArtifacts
from service_common.grpc_errors import map_errors
from service_common.server import ManagedServer, build_server

log = logging.getLogger(__name__)

SERVICE_NAME = model_pb2.DESCRIPTOR.services_by_name["ModelService"].full_name


class TrainerServicer(model_pb2_grpc.ModelServiceServicer):
    """Train, ImportModel and ExportModel; every other ModelService method is UNIMPLEMENTED here
    (serving processes answer them)."""

    def __init__(
        self,
        trainer: TrainingManager,
        recycle_after: int,
        store: StoredArtifacts,
        importer: ModelImporter,
        graphs: StoredGraphs,
    ) -> None:
        self._trainer = trainer
        self._store = store
        self._importer = importer
        self._graphs = graphs
        self._recycle_after = recycle_after
        self._jobs_done = 0

    @map_errors
    async def Train(
        self, request: model_pb2.TrainRequest, context: grpc.aio.ServicerContext
    ) -> AsyncIterator[model_pb2.TrainEvent]:
        job = await asyncio.to_thread(lambda: self._trainer.start(model_messages.train_input(request)))
        # Client cancel, deadline, a forwarding process that went away, or this server stopping:
        # the coroutine is cancelled, the finally cancels the job, which stops within one batch and
        # leaves nothing.
        try:
            events = job.events()
            while (event := await asyncio.to_thread(next, events, None)) is not None:
                if isinstance(event, TrainStarted):
                    yield model_pb2.TrainEvent(started=model_messages.started_to_proto(event))
                elif isinstance(event, EpochProgress):
                    yield model_pb2.TrainEvent(epoch=model_messages.epoch_to_proto(event))
                elif isinstance(event, ModelRecord):
                    yield model_pb2.TrainEvent(
                        done=model_messages.record_to_info(
                            VersionView(event, VersionState.READY), logdir(self._store, event)
                        )
                    )
        finally:
            job.cancel()
            self._jobs_done += 1
            # Checked a moment after the stream ended, so its status reaches the forwarding process first.
            asyncio.get_running_loop().call_later(0.5, self._recycle_if_due)

    @map_errors
    async def ImportModel(
        self, request_iterator: AsyncIterator[model_pb2.ImportModelChunk], context: grpc.aio.ServicerContext
    ) -> model_pb2.ModelInfo:
        header, data = await model_messages.read_import(request_iterator, lambda n: None)
        imported, x_ref, y_ref = model_messages.import_request(header, data)
        record = await asyncio.to_thread(self._importer.run, imported, x_ref, y_ref)
        return model_messages.record_to_info(VersionView(record, VersionState.READY))

    @map_errors
    async def ExportModel(
        self, request: model_pb2.ExportModelRequest, context: grpc.aio.ServicerContext
    ) -> AsyncIterator[model_pb2.ExportModelChunk]:
        # The serving process resolved the version (0 = latest) and checked it is stored.
        fmt = model_messages.export_format(request.format)
        if fmt is ExportFormat.ONNX:
            exported = await asyncio.to_thread(self._graphs.ensure, request.model_id, request.version)
        else:
            exported = await asyncio.to_thread(self._graphs.saved_model, request.model_id, request.version)
        for chunk in model_messages.export_chunks(exported, fmt):
            yield chunk

    def _recycle_if_due(self) -> None:
        """After ``recycle_after`` jobs (0 = never), stop this process once no job runs; its owner
        starts a fresh one, and the memory the jobs left behind goes back to the system."""
        if not self._recycle_after or self._jobs_done < self._recycle_after or self._trainer.running():
            return
        log.info("trainer: %d jobs done; exiting so a fresh process takes over", self._jobs_done)
        self._recycle_after = 0  # once
        os.kill(os.getpid(), signal.SIGTERM)


def create_trainer_server(settings: ModelSettings) -> tuple[ManagedServer, int]:
    """The trainer's server (not started): store writer, scaler channel, job manager, Train servicer."""
    if settings.trainer_nice:
        os.nice(settings.trainer_nice)
    store = open_model_store(settings)
    gateway = ScalerGateway.from_settings(settings)
    serving = serving_options(settings)
    trainer = TrainingManager(
        ModelPublisher(store),
        gateway,
        serving,
        max_jobs=settings.max_training_jobs,
        max_work=settings.max_training_work,
        datasets=open_dataset_store(settings),
        dataset_options=DatasetOptions(
            shuffle_buffer=settings.dataset_shuffle_buffer,
            in_memory_fit_bytes=settings.dataset_in_memory_fit_mb << 20,
        ),
    )
    # The generated base answers UNIMPLEMENTED for every method not overridden, which is the point here;
    # mypy-protobuf's stubs declare them abstract all the same.
    importer = ModelImporter(ModelPublisher(store), gateway, serving.admission)
    graphs = StoredGraphs(store, open_graph_store(settings))
    servicer = TrainerServicer(  # type: ignore[abstract]
        trainer, settings.trainer_recycle_jobs, store, importer, graphs
    )

    def register(server: grpc.aio.Server) -> list[str]:
        model_pb2_grpc.add_ModelServiceServicer_to_server(servicer, server)
        return [SERVICE_NAME]

    # The serving processes count the Train streams they forward (lstm_training_jobs_running).
    managed, port = build_server(settings, register)
    managed.on_stop(gateway.close)
    managed.on_stop(trainer.shutdown)
    return managed, port
