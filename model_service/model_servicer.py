"""The ModelService gRPC servicer: proto in, domain call, proto out. No model logic lives here."""

from __future__ import annotations

import asyncio
import contextlib
import uuid
from collections.abc import AsyncIterator, Callable
from typing import Any

import grpc
import numpy as np

from model_service import model_messages
from model_service.cost import Admission
from model_service.datasets.dataset_store import NEEDS_A_DIRECTORY, DatasetStore
from model_service.export import ExportFormat, onnx_export
from model_service.forecasting import backtest, point
from model_service.forecasting.config import ForecastConfig
from model_service.forecasting.forecaster import config_of, forecast_async
from model_service.forecasting.point import check_point, point_prediction
from model_service.import_request import check_size
from model_service.model_registry import ModelRegistry
from model_service.serving import ServedModel
from model_service.spec import plan, with_defaults
from model_service.trainer_link import TrainerLink
from protos.lstm_stack.v1 import model_pb2, model_pb2_grpc
from service_common import codec
from service_common.errors import FailedPrecondition, InvalidArgument
from service_common.grpc_errors import map_errors
from service_common.handlers import confirm_client_is_there


class ModelServicer(model_pb2_grpc.ModelServiceServicer):
    def __init__(
        self,
        registry: ModelRegistry,
        trainer: TrainerLink,
        track_training: Callable[[], contextlib.AbstractContextManager[Any]] = contextlib.nullcontext,
        *,
        admission: Admission | None = None,
        forget_scalers: Callable[[model_pb2.TrainStarted], None] = lambda started: None,
        datasets: DatasetStore | None = None,
    ) -> None:
        self._datasets = datasets
        self._admission = admission
        self._registry = registry
        self._trainer = trainer
        self._track_training = track_training
        # Deletes the scalers a job fitted (Backtest's scratch versions are not kept).
        self._forget_scalers = forget_scalers

    @map_errors
    async def ValidateSpec(
        self, request: model_pb2.ValidateSpecRequest, context: grpc.aio.ServicerContext
    ) -> model_pb2.ValidateSpecResponse:
        # The shape arithmetic of spec.py, which tests hold to what Keras builds (no Keras here).
        return model_messages.validate_response(
            plan(with_defaults(model_messages.spec_from_proto(request.spec)))
        )

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
        model = self._registry.served(request.model_id, request.version)
        x = model_messages.required_tensor(request, "x", "x")
        check_point(model)  # before the pass: a quantile head without a median is refused outright
        prediction = point_prediction(model, await model.infer_async(x))
        return model_messages.predict_response(
            model.model_id, model.version, prediction, codec.uses_values(request.x)
        )

    @map_errors
    async def Evaluate(
        self, request: model_pb2.EvaluateRequest, context: grpc.aio.ServicerContext
    ) -> model_pb2.EvaluateResponse:
        model = self._registry.served(request.model_id, request.version)
        x = model_messages.required_tensor(request, "x", "x")
        y = model_messages.required_tensor(request, "y", "y")
        metrics = await asyncio.to_thread(point.evaluate, model, x, y)
        return model_pb2.EvaluateResponse(
            model_id=model.model_id, version=model.version, metrics=metrics, n_samples=int(x.shape[0])
        )

    @map_errors
    async def Forecast(
        self, request: model_pb2.ForecastRequest, context: grpc.aio.ServicerContext
    ) -> model_pb2.ForecastResponse:
        model = self._registry.served(request.model_id, request.version)
        if request.dataset_id:
            if request.HasField("history"):
                raise InvalidArgument("give history or dataset_id, not both")
            history = await asyncio.to_thread(self._dataset_tail, model, request.dataset_id)
        else:
            history = model_messages.required_tensor(request, "history", "history")
        forecast = await forecast_async(model, history, request.horizon)
        return model_messages.forecast_response(
            model.model_id, model.version, forecast, codec.uses_values(request.history)
        )

    def _dataset_tail(self, model: ServedModel, dataset_id: str) -> np.ndarray:
        if self._datasets is None:
            raise FailedPrecondition(NEEDS_A_DIRECTORY)
        config = config_of(model)
        return self._datasets.tail(dataset_id, config.window, config.column_names)

    @map_errors
    async def Backtest(
        self, request: model_pb2.BacktestRequest, context: grpc.aio.ServicerContext
    ) -> AsyncIterator[model_pb2.BacktestEvent]:
        model = self._registry.served(request.model_id, request.version)
        series = model_messages.required_tensor(request, "series", "series")
        plan = await asyncio.to_thread(
            backtest.plan, model, series, request.windows, request.origin_step, request.horizon,
            request.season_length,
        )  # fmt: skip
        as_values = codec.uses_values(request.series)
        metrics = []
        if request.retrain:
            if not model.record.recipe:
                raise FailedPrecondition(
                    f"model {model.model_id!r} v{model.version} was stored without its training settings "
                    "(trained before they were kept); retrain it, or backtest with retrain=false"
                )
            for index in range(len(plan.origins)):
                window = await self._retrained_window(
                    model.record.recipe, model.record.forecast, plan, index, context
                )
                metrics.append(window.metrics)
                yield model_messages.backtest_window_to_proto(window, as_values)
        else:
            for window in await backtest.score(model, plan, list(range(len(plan.origins)))):
                metrics.append(window.metrics)
                yield model_messages.backtest_window_to_proto(window, as_values)
        yield model_messages.backtest_summary_to_proto(len(metrics), backtest.aggregate(metrics))

    async def _retrained_window(
        self,
        recipe: bytes,
        config: ForecastConfig | None,
        plan: backtest.BacktestPlan,
        index: int,
        context: grpc.aio.ServicerContext,
    ) -> backtest.BacktestWindow:
        """Window ``index`` forecast by a scratch version trained (in the trainer process, like Train) on
        the rows before its origin only; the scratch model and its scalers are deleted afterwards."""
        origin = plan.origins[index]
        request = model_messages.retrain_request(
            recipe, f"backtest-{uuid.uuid4().hex[:16]}", plan.rows[:origin]
        )
        if config is not None and model_pb2.TrainRequest.FromString(recipe).WhichOneof("data") == "dataset":
            # Trained on a series dataset (columns by name): the rows come inline, windowed the same way.
            request.series.window, request.series.stride = config.window, config.stride
            request.series.input_columns[:] = config.input_columns
            request.series.target_columns[:] = config.target_columns
        started = done = None
        try:
            with self._track_training():
                async for event in self._trainer.train(request, context.time_remaining()):
                    if event.HasField("started"):
                        started = event.started
                    elif event.HasField("done"):
                        done = event.done
            if done is None:
                raise FailedPrecondition(f"retraining for backtest window {index} ended without a model")
            await asyncio.to_thread(self._registry.sync, done.id)
            scratch = self._registry.served(done.id, done.version)
            return (await backtest.score(scratch, plan, [index]))[0]
        finally:
            if done is not None:
                await asyncio.to_thread(self._registry.delete, done.id, 0)
            if started is not None:
                await asyncio.to_thread(self._forget_scalers, started)

    @map_errors
    async def GetModel(
        self, request: model_pb2.GetModelRequest, context: grpc.aio.ServicerContext
    ) -> model_pb2.ModelInfo:
        view = self._registry.get(request.model_id, request.version)
        return model_messages.record_to_info(view, self._registry.logdir(view.record))

    @map_errors
    async def ListModels(
        self, request: model_pb2.ListModelsRequest, context: grpc.aio.ServicerContext
    ) -> model_pb2.ListModelsResponse:
        page, next_token = self._registry.list(request.model_id, request.page_size, request.page_token)
        return model_pb2.ListModelsResponse(
            models=[model_messages.record_to_info(view, self._registry.logdir(view.record)) for view in page],
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
        fmt = model_messages.export_format(request.format)
        record = await asyncio.to_thread(self._registry.stored_record, request.model_id, request.version)
        if fmt is ExportFormat.ONNX:
            # The serving graph this process runs, byte for byte (made by the trainer first for a
            # version stored before versions carried one).
            graph = await asyncio.to_thread(self._registry.graph, record.model_id, record.version)
            for chunk in model_messages.export_chunks(onnx_export(record, graph), fmt):
                yield chunk
            return
        forwarded = model_pb2.ExportModelRequest(
            model_id=record.model_id, version=record.version, format=request.format
        )
        async for chunk in self._trainer.export(forwarded, context.time_remaining()):
            yield chunk

    @map_errors
    async def ImportModel(
        self, request_iterator: AsyncIterator[model_pb2.ImportModelChunk], context: grpc.aio.ServicerContext
    ) -> model_pb2.ModelInfo:
        header, data = await model_messages.read_import(
            request_iterator, lambda size: check_size(self._admission, size)
        )
        model_messages.import_request(header, data)  # the header's mistakes, before the trainer is asked
        # A cancelled upload ends the request stream like a finished one: nothing is stored for it.
        await confirm_client_is_there(context)
        # Keras reads the archive in the trainer process; it commits the version with its serving graph.
        info = await self._trainer.import_model(header, data, context.time_remaining())
        await asyncio.to_thread(self._registry.sync, info.id)
        view = self._registry.get(info.id, info.version)
        return model_messages.record_to_info(view, self._registry.logdir(view.record))
