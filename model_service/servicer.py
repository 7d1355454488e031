"""The ModelService gRPC servicer: proto in, domain call, proto out. No model logic lives here."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Callable
from typing import Any

import grpc

from model_service import builder, convert
from model_service.export import ModelExporter
from model_service.importing import ModelImporter
from model_service.runtime import ModelRuntime
from model_service.spec import resolve
from model_service.trainer_link import TrainerLink
from protos.lstm_stack.v1 import model_pb2, model_pb2_grpc
from service_common import codec
from service_common.errors import InvalidArgument
from service_common.grpc_errors import map_errors
from service_common.handlers import confirm_client_is_there

# Export files travel in chunks of this size, well under any message limit.
EXPORT_CHUNK_BYTES = 1024 * 1024


class ModelServicer(model_pb2_grpc.ModelServiceServicer):
    def __init__(
        self,
        runtime: ModelRuntime,
        trainer: TrainerLink,
        track_training: Callable[[], contextlib.AbstractContextManager[Any]] = contextlib.nullcontext,
        *,
        exporter: ModelExporter,
        importer: ModelImporter,
    ) -> None:
        self._exporter = exporter
        self._importer = importer
        self._runtime = runtime
        self._registry = runtime.registry
        self._trainer = trainer
        self._track_training = track_training

    @map_errors
    async def ValidateSpec(
        self, request: model_pb2.ValidateSpecRequest, context: grpc.aio.ServicerContext
    ) -> model_pb2.ValidateSpecResponse:
        # Building the Keras model to describe it is blocking work.
        plan = await asyncio.to_thread(builder.describe, resolve(convert.spec_from_proto(request.spec)))
        return convert.validate_response(plan)

    @map_errors
    async def Train(
        self, request: model_pb2.TrainRequest, context: grpc.aio.ServicerContext
    ) -> AsyncIterator[model_pb2.TrainEvent]:
        # The job runs in the trainer process; a client cancel or deadline cancels this coroutine,
        # which cancels the forwarded call, which stops the job within one batch, leaving nothing.
        with self._track_training():
            async for event in self._trainer.train(request, context.time_remaining()):
                if event.HasField("done"):
                    # Served here before the client hears it is done (other processes see it by polling
                    # the store, or at once on their first miss).
                    await asyncio.to_thread(self._registry.sync, event.done.id)
                yield event

    @map_errors
    async def Predict(
        self, request: model_pb2.PredictRequest, context: grpc.aio.ServicerContext
    ) -> model_pb2.PredictResponse:
        model = self._runtime.resolve(request.model_id, request.version)
        x = convert.required_tensor(request, "x", "x")
        prediction = await model.infer_async(x)
        return convert.predict_response(
            model.model_id, model.version, prediction, codec.uses_values(request.x)
        )

    @map_errors
    async def Evaluate(
        self, request: model_pb2.EvaluateRequest, context: grpc.aio.ServicerContext
    ) -> model_pb2.EvaluateResponse:
        model = self._runtime.resolve(request.model_id, request.version)
        x = convert.required_tensor(request, "x", "x")
        y = convert.required_tensor(request, "y", "y")
        metrics = await asyncio.to_thread(model.evaluate, x, y)
        return model_pb2.EvaluateResponse(
            model_id=model.model_id, version=model.version, metrics=metrics, n_samples=int(x.shape[0])
        )

    @map_errors
    async def GetModel(
        self, request: model_pb2.GetModelRequest, context: grpc.aio.ServicerContext
    ) -> model_pb2.ModelInfo:
        view = self._registry.get(request.model_id, request.version)
        return convert.record_to_info(view, self._registry.logdir(view.record))

    @map_errors
    async def ListModels(
        self, request: model_pb2.ListModelsRequest, context: grpc.aio.ServicerContext
    ) -> model_pb2.ListModelsResponse:
        page, next_token = self._registry.list(request.model_id, request.page_size, request.page_token)
        return model_pb2.ListModelsResponse(
            models=[convert.record_to_info(view, self._registry.logdir(view.record)) for view in page],
            next_page_token=next_token,
        )

    @map_errors
    async def DeleteModel(
        self, request: model_pb2.DeleteModelRequest, context: grpc.aio.ServicerContext
    ) -> model_pb2.DeleteModelResponse:
        deleted = await asyncio.to_thread(self._registry.delete, request.model_id, request.version)
        return model_pb2.DeleteModelResponse(deleted_versions=deleted)

    @map_errors
    async def ExportModel(
        self, request: model_pb2.ExportModelRequest, context: grpc.aio.ServicerContext
    ) -> AsyncIterator[model_pb2.ExportModelChunk]:
        fmt = convert.export_format(request.format)
        exported = await asyncio.to_thread(self._exporter.run, request.model_id, request.version, fmt)
        info = convert.export_info(exported.model_id, exported.version, exported, fmt)
        data = memoryview(exported.data)
        yield model_pb2.ExportModelChunk(info=info, data=bytes(data[:EXPORT_CHUNK_BYTES]))
        for start in range(EXPORT_CHUNK_BYTES, len(data), EXPORT_CHUNK_BYTES):
            yield model_pb2.ExportModelChunk(data=bytes(data[start : start + EXPORT_CHUNK_BYTES]))

    @map_errors
    async def ImportModel(
        self, request_iterator: AsyncIterator[model_pb2.ImportModelChunk], context: grpc.aio.ServicerContext
    ) -> model_pb2.ModelInfo:
        header: model_pb2.ImportHeader | None = None
        parts: list[bytes] = []
        size = 0
        async for chunk in request_iterator:
            which = chunk.WhichOneof("part")
            if header is None:
                if which != "header":
                    raise InvalidArgument(
                        f"the first ImportModelChunk must be the header, got {which or 'an empty chunk'}"
                    )
                header = chunk.header
            elif which == "header":
                raise InvalidArgument("only the first ImportModelChunk may be a header; got a second one")
            else:
                size += len(chunk.data)
                self._importer.check_size(size)  # refused as soon as it cannot fit, not once whole
                parts.append(chunk.data)
        if header is None:
            raise InvalidArgument("the import stream was empty: send the header, then the archive's bytes")
        imported, x_ref, y_ref = convert.import_request(header, b"".join(parts))
        parts.clear()
        # A cancelled upload ends the request stream like a finished one: nothing is stored for it.
        await confirm_client_is_there(context)
        view = await asyncio.to_thread(self._importer.run, imported, x_ref, y_ref)
        return convert.record_to_info(view, self._registry.logdir(view.record))
