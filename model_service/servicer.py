"""The ModelService gRPC servicer: proto in, domain call, proto out. No model logic lives here."""

from __future__ import annotations

from collections.abc import Iterator

import grpc

from model_service import builder, convert
from model_service.records import EpochProgress, ModelRecord
from model_service.registry import VersionState, VersionView
from model_service.runtime import ModelRuntime
from model_service.spec import resolve
from model_service.training import TrainingManager, TrainStarted
from protos.lstm_stack.v1 import model_pb2, model_pb2_grpc
from service_common import codec
from service_common.grpc_errors import map_errors


class ModelServicer(model_pb2_grpc.ModelServiceServicer):
    def __init__(self, runtime: ModelRuntime, trainer: TrainingManager) -> None:
        self._runtime = runtime
        self._registry = runtime.registry
        self._trainer = trainer

    @map_errors
    def ValidateSpec(
        self, request: model_pb2.ValidateSpecRequest, context: grpc.ServicerContext
    ) -> model_pb2.ValidateSpecResponse:
        plan = builder.describe(resolve(convert.spec_from_proto(request.spec)))
        return convert.validate_response(plan)

    @map_errors
    def Train(
        self, request: model_pb2.TrainRequest, context: grpc.ServicerContext
    ) -> Iterator[model_pb2.TrainEvent]:
        job = self._trainer.start(convert.train_input(request))
        # Client cancel, deadline or server stop: the job stops within one batch and leaves nothing.
        context.add_callback(job.cancel)
        try:
            for event in job.events(context.is_active):
                if isinstance(event, TrainStarted):
                    yield model_pb2.TrainEvent(started=convert.started_to_proto(event))
                elif isinstance(event, EpochProgress):
                    yield model_pb2.TrainEvent(epoch=convert.epoch_to_proto(event))
                elif isinstance(event, ModelRecord):
                    yield model_pb2.TrainEvent(
                        done=convert.record_to_info(VersionView(event, VersionState.READY))
                    )
        finally:
            # Reached early only when the stream is closed before the job ended (the client went away).
            job.cancel()

    @map_errors
    def Predict(
        self, request: model_pb2.PredictRequest, context: grpc.ServicerContext
    ) -> model_pb2.PredictResponse:
        model = self._runtime.resolve(request.model_id, request.version)
        x = convert.required_tensor(request, "x", "x")
        prediction = model.infer(x)
        return convert.predict_response(
            model.model_id, model.version, prediction, codec.uses_values(request.x)
        )

    @map_errors
    def Evaluate(
        self, request: model_pb2.EvaluateRequest, context: grpc.ServicerContext
    ) -> model_pb2.EvaluateResponse:
        model = self._runtime.resolve(request.model_id, request.version)
        x = convert.required_tensor(request, "x", "x")
        y = convert.required_tensor(request, "y", "y")
        metrics = model.evaluate(x, y)
        return model_pb2.EvaluateResponse(
            model_id=model.model_id, version=model.version, metrics=metrics, n_samples=int(x.shape[0])
        )

    @map_errors
    def GetModel(
        self, request: model_pb2.GetModelRequest, context: grpc.ServicerContext
    ) -> model_pb2.ModelInfo:
        return convert.record_to_info(self._registry.get(request.model_id, request.version))

    @map_errors
    def ListModels(
        self, request: model_pb2.ListModelsRequest, context: grpc.ServicerContext
    ) -> model_pb2.ListModelsResponse:
        page, next_token = self._registry.list(request.model_id, request.page_size, request.page_token)
        return model_pb2.ListModelsResponse(
            models=[convert.record_to_info(view) for view in page], next_page_token=next_token
        )

    @map_errors
    def DeleteModel(
        self, request: model_pb2.DeleteModelRequest, context: grpc.ServicerContext
    ) -> model_pb2.DeleteModelResponse:
        return model_pb2.DeleteModelResponse(
            deleted_versions=self._registry.delete(request.model_id, request.version)
        )
