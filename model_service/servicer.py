"""The ModelService gRPC servicer: proto in, domain call, proto out. No model logic lives here."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Callable
from typing import Any

import grpc

from model_service import builder, convert
from model_service.forecasting import backtest
from model_service.forecasting.forecaster import forecast_async
from model_service.runtime import ModelRuntime
from model_service.spec import resolve
from model_service.trainer_link import TrainerLink
from protos.lstm_stack.v1 import model_pb2, model_pb2_grpc
from service_common import codec
from service_common.errors import FailedPrecondition
from service_common.grpc_errors import map_errors


class ModelServicer(model_pb2_grpc.ModelServiceServicer):
    def __init__(
        self,
        runtime: ModelRuntime,
        trainer: TrainerLink,
        track_training: Callable[[], contextlib.AbstractContextManager[Any]] = contextlib.nullcontext,
    ) -> None:
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
    async def Forecast(
        self, request: model_pb2.ForecastRequest, context: grpc.aio.ServicerContext
    ) -> model_pb2.ForecastResponse:
        model = self._runtime.resolve(request.model_id, request.version)
        history = convert.required_tensor(request, "history", "history")
        forecast = await forecast_async(model, history, request.horizon)
        return convert.forecast_response(
            model.model_id, model.version, forecast, codec.uses_values(request.history)
        )

    @map_errors
    async def Backtest(
        self, request: model_pb2.BacktestRequest, context: grpc.aio.ServicerContext
    ) -> AsyncIterator[model_pb2.BacktestEvent]:
        if request.retrain:
            raise FailedPrecondition(
                "Backtest with retrain is not available yet: the given version forecasts every window "
                "(send retrain=false)"
            )
        model = self._runtime.resolve(request.model_id, request.version)
        series = convert.required_tensor(request, "series", "series")
        windows = await backtest.run(
            model, series, request.windows, request.origin_step, request.horizon, request.season_length
        )
        as_values = codec.uses_values(request.series)
        for window in windows:
            yield convert.backtest_window_to_proto(window, as_values)
        yield convert.backtest_summary_to_proto(len(windows), backtest.aggregate([w.metrics for w in windows]))

    @map_errors
    async def GetModel(
        self, request: model_pb2.GetModelRequest, context: grpc.aio.ServicerContext
    ) -> model_pb2.ModelInfo:
        return convert.record_to_info(self._registry.get(request.model_id, request.version))

    @map_errors
    async def ListModels(
        self, request: model_pb2.ListModelsRequest, context: grpc.aio.ServicerContext
    ) -> model_pb2.ListModelsResponse:
        page, next_token = self._registry.list(request.model_id, request.page_size, request.page_token)
        return model_pb2.ListModelsResponse(
            models=[convert.record_to_info(view) for view in page], next_page_token=next_token
        )

    @map_errors
    async def DeleteModel(
        self, request: model_pb2.DeleteModelRequest, context: grpc.aio.ServicerContext
    ) -> model_pb2.DeleteModelResponse:
        deleted = await asyncio.to_thread(self._registry.delete, request.model_id, request.version)
        return model_pb2.DeleteModelResponse(deleted_versions=deleted)
