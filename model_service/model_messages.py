"""Proto <-> domain conversions for the model service (specs, reports, records, events, tensors)."""

from __future__ import annotations

import dataclasses
from collections.abc import AsyncIterator, Callable, Iterator
from typing import Literal

import numpy as np

from model_service import spec as specs
from model_service.affine_scalers import ScalerRef
from model_service.export import Exported, ExportFormat
from model_service.forecasting.backtest import BacktestWindow
from model_service.forecasting.config import ForecastConfig, SeriesRequest, Strategy
from model_service.forecasting.forecaster import Forecast
from model_service.import_request import ImportRequest
from model_service.model_registry import VersionState, VersionView
from model_service.records import EpochProgress, ModelRecord
from model_service.serving import Prediction
from model_service.training import DatasetRequest, TrainInput, TrainOptions, TrainStarted
from protos.lstm_stack.v1 import model_pb2, tensor_pb2
from service_common import codec
from service_common.errors import InvalidArgument

TASK_FROM_PROTO = {
    model_pb2.REGRESSION: specs.Task.REGRESSION,
    model_pb2.BINARY: specs.Task.BINARY,
    model_pb2.MULTICLASS: specs.Task.MULTICLASS,
}
TASK_TO_PROTO = {task: code for code, task in TASK_FROM_PROTO.items()}
STRATEGY_FROM_PROTO = {
    model_pb2.FORECAST_STRATEGY_UNSPECIFIED: Strategy.DIRECT,
    model_pb2.DIRECT: Strategy.DIRECT,
    model_pb2.RECURSIVE: Strategy.RECURSIVE,
}
STRATEGY_TO_PROTO = {Strategy.DIRECT: model_pb2.DIRECT, Strategy.RECURSIVE: model_pb2.RECURSIVE}


# ---- specs ---------------------------------------------------------------------------------------


def _layer_from_proto(index: int, layer: model_pb2.Layer) -> specs.LayerSpec:
    which = layer.WhichOneof("kind")
    if which == "lstm":
        sequences = layer.lstm.return_sequences if layer.lstm.HasField("return_sequences") else None
        return specs.Lstm(layer.lstm.units, layer.lstm.activation, sequences)
    if which == "dense":
        return specs.Dense(layer.dense.units, layer.dense.activation)
    if which == "reshape":
        return specs.Reshape(tuple(int(d) for d in layer.reshape.target_shape))
    if which == "dropout":
        return specs.Dropout(layer.dropout.rate)
    raise InvalidArgument(
        f"layers[{index}]: no layer kind set; expected one of lstm, dense, reshape, dropout"
    )


def spec_from_proto(spec: model_pb2.ModelSpec) -> specs.ModelSpec:
    task = spec.head.task
    if task != model_pb2.TASK_UNSPECIFIED and task not in TASK_FROM_PROTO:
        raise InvalidArgument(f"head.task {task} is not known; expected REGRESSION, BINARY or MULTICLASS")
    return specs.ModelSpec(
        timesteps=spec.input.timesteps,
        features=spec.input.features,
        layers=tuple(_layer_from_proto(i, layer) for i, layer in enumerate(spec.layers)),
        head=specs.Head(TASK_FROM_PROTO.get(task), spec.head.outputs, spec.head.n_classes),
        optimizer=specs.Optimizer(spec.optimizer.name, spec.optimizer.learning_rate),
    )


def _layer_to_proto(layer: specs.LayerSpec) -> model_pb2.Layer:
    if isinstance(layer, specs.Lstm):
        return model_pb2.Layer(
            lstm=model_pb2.LstmLayer(
                units=layer.units, activation=layer.activation, return_sequences=bool(layer.return_sequences)
            )
        )
    if isinstance(layer, specs.Dense):
        return model_pb2.Layer(dense=model_pb2.DenseLayer(units=layer.units, activation=layer.activation))
    if isinstance(layer, specs.Reshape):
        return model_pb2.Layer(reshape=model_pb2.ReshapeLayer(target_shape=list(layer.target_shape)))
    return model_pb2.Layer(dropout=model_pb2.DropoutLayer(rate=layer.rate))


def spec_to_proto(spec: specs.ModelSpec) -> model_pb2.ModelSpec:
    return model_pb2.ModelSpec(
        input=model_pb2.InputShape(timesteps=spec.timesteps, features=spec.features),
        layers=[_layer_to_proto(layer) for layer in spec.layers],
        head=model_pb2.Head(
            task=TASK_TO_PROTO[spec.task], outputs=spec.head.outputs, n_classes=spec.head.n_classes
        ),
        optimizer=model_pb2.Optimizer(name=spec.optimizer.name, learning_rate=spec.optimizer.learning_rate),
    )


def _shape_list(shape: specs.Shape) -> list[int]:
    return [-1 if d is None else int(d) for d in shape]


def layer_reports(plan: specs.SpecPlan) -> list[model_pb2.LayerReport]:
    return [
        model_pb2.LayerReport(
            index=layer.index,
            name=layer.name,
            kind=layer.kind,
            output_shape=_shape_list(layer.output_shape),
            output_shape_text=layer.output_shape_text,
            params=layer.params,
            return_sequences=layer.return_sequences,
            activation=layer.activation,
        )
        for layer in plan.layers
    ]


def validate_response(plan: specs.SpecPlan) -> model_pb2.ValidateSpecResponse:
    return model_pb2.ValidateSpecResponse(
        layers=layer_reports(plan),
        input_shape=_shape_list(plan.input_shape),
        total_params=plan.total_params,
        resolved_spec=spec_to_proto(plan.spec),
    )


# ---- records and events --------------------------------------------------------------------------


def _ref(ref: ScalerRef | None) -> model_pb2.ScalerRef | None:
    return model_pb2.ScalerRef(scaler_id=ref.scaler_id, version=ref.version) if ref else None


def epoch_to_proto(epoch: EpochProgress) -> model_pb2.EpochEvent:
    event = model_pb2.EpochEvent(
        epoch=epoch.epoch,
        epochs=epoch.epochs,
        loss=epoch.loss,
        metrics=epoch.metrics,
        elapsed_seconds=epoch.elapsed_seconds,
        rows_per_second=epoch.rows_per_second,
    )
    if epoch.val_loss is not None:
        event.val_loss = epoch.val_loss
    return event


def record_to_info(view: VersionView, tensorboard_logdir: str = "") -> model_pb2.ModelInfo:
    """``tensorboard_logdir``: the version's directory when it holds event files (model_store.logdir)."""
    record: ModelRecord = view.record
    plan = record.plan
    return model_pb2.ModelInfo(
        id=record.model_id,
        version=record.version,
        state=model_pb2.TRAINING if view.state is VersionState.TRAINING else model_pb2.READY,
        spec=spec_to_proto(record.spec),
        layers=layer_reports(plan),
        total_params=plan.total_params,
        x_scaler=_ref(record.x_scaler.ref if record.x_scaler else None),
        y_scaler=_ref(record.y_scaler.ref if record.y_scaler else None),
        history=[epoch_to_proto(e) for e in record.history],
        holdout_metrics=record.holdout_metrics,
        n_train=record.n_train,
        n_validation=record.n_validation,
        epochs_run=record.epochs_run,
        seed=record.seed,
        created_at=record.created_at,
        train_seconds=record.train_seconds,
        tensorboard_logdir=tensorboard_logdir,
        origin=record.origin,
        forecast=forecast_config_to_proto(record.forecast) if record.forecast else None,
        holdout_coverage=record.holdout_coverage,
        dataset_id=record.dataset_id,
    )


def forecast_config_to_proto(config: ForecastConfig) -> model_pb2.ForecastConfig:
    return model_pb2.ForecastConfig(
        window=config.window,
        horizon=config.horizon,
        strategy=STRATEGY_TO_PROTO[config.strategy],
        input_columns=list(config.input_columns),
        target_columns=list(config.target_columns),
        series_columns=config.series_columns,
        stride=config.stride,
        quantiles=list(config.quantiles),
        calibration_fraction=config.calibration_fraction,
        interval_widening=list(config.widening),
        calibration_windows=config.calibration_windows,
    )


def started_to_proto(started: TrainStarted) -> model_pb2.TrainStarted:
    return model_pb2.TrainStarted(
        model_id=started.model_id,
        version=started.version,
        n_train=started.n_train,
        n_validation=started.n_validation,
        x_scaler=_ref(started.x_scaler),
        y_scaler=_ref(started.y_scaler),
    )


# ---- tensors -------------------------------------------------------------------------------------


def required_tensor(message: object, field: str, name: str) -> np.ndarray:
    if not message.HasField(field):  # type: ignore[attr-defined]
        raise InvalidArgument(f"{name} is required")
    return codec.to_numpy(getattr(message, field), name)


def train_input(request: model_pb2.TrainRequest) -> TrainInput:
    options = TrainOptions(
        epochs=request.epochs,
        batch_size=request.batch_size,
        seed=request.seed,
        shuffle=request.shuffle,
        validation_fraction=request.validation_fraction,
        patience=request.early_stopping.patience,
        min_delta=request.early_stopping.min_delta,
        restore_best_weights=request.early_stopping.restore_best_weights,
    )
    common = TrainInput(
        recipe=train_recipe(request),
        model_id=request.model_id,
        spec=spec_from_proto(request.spec),
        options=options,
        x_scaling=request.x_scaling if request.HasField("x_scaling") else None,
        y_scaling=request.y_scaling if request.HasField("y_scaling") else None,
    )
    which = request.WhichOneof("data")
    if which != "series" and request.calibration_fraction:
        raise InvalidArgument(
            f"calibration_fraction {request.calibration_fraction:g} calibrates a quantile head: it is for "
            "series training with quantiles"
        )
    if which != "series" and request.quantiles:
        raise InvalidArgument(
            f"quantiles {list(request.quantiles)} are for series training: send series {{series, window, "
            "horizon}} (supervised y has no steps to put intervals on)"
        )
    if which == "supervised":
        supervised = request.supervised
        return dataclasses.replace(
            common,
            x=required_tensor(supervised, "x", "supervised.x"),
            y=required_tensor(supervised, "y", "supervised.y"),
        )
    if which == "series":
        series = request.series
        if series.window < 0:
            raise InvalidArgument(f"series.window must be > 0, got {series.window}")
        if series.strategy not in STRATEGY_FROM_PROTO:
            raise InvalidArgument(
                f"series.strategy {series.strategy} is not known; expected DIRECT or RECURSIVE"
            )
        return dataclasses.replace(
            common,
            series=required_tensor(series, "series", "series.series"),
            series_request=SeriesRequest(
                window=series.window,
                target_feature=series.target_feature,
                horizon=series.horizon,
                strategy=STRATEGY_FROM_PROTO[series.strategy],
                target_columns=tuple(series.target_columns),
                stride=series.stride,
                input_columns=tuple(series.input_columns),
                quantiles=tuple(request.quantiles),
                calibration_fraction=request.calibration_fraction,
            ),
        )
    if which == "dataset":
        source = request.dataset
        return dataclasses.replace(
            common,
            dataset=DatasetRequest(
                dataset_id=source.dataset_id,
                window=source.window,
                stride=source.stride,
                input_columns=tuple(source.input_columns),
                target_columns=tuple(source.target_columns),
            ),
        )
    raise InvalidArgument(
        "training data is missing: set supervised {x, y}, series {series, window} or dataset {dataset_id}"
    )


def train_recipe(request: model_pb2.TrainRequest) -> bytes:
    """The request's settings without its data or id: what Backtest retrains a version with."""
    recipe = model_pb2.TrainRequest()
    recipe.CopyFrom(request)
    recipe.model_id = ""
    if recipe.WhichOneof("data") == "series":
        recipe.series.ClearField("series")
    else:
        recipe.ClearField("supervised")
    return recipe.SerializeToString(deterministic=True)


def retrain_request(recipe: bytes, model_id: str, series: np.ndarray) -> model_pb2.TrainRequest:
    """A version's recipe trained on ``series`` (raw rows) under a scratch ``model_id``."""
    request = model_pb2.TrainRequest.FromString(recipe)
    request.model_id = model_id
    request.series.series.CopyFrom(codec.from_numpy(series))
    return request


def _labels_tensor(labels: np.ndarray, as_values: bool) -> tensor_pb2.Tensor:
    if as_values:
        return tensor_pb2.Tensor(
            dtype=tensor_pb2.INT64, shape=list(labels.shape), values=labels.astype(np.float64).tolist()
        )
    return codec.from_numpy(labels.astype(np.int64))


def _float_tensor(array: np.ndarray, as_values: bool) -> tensor_pb2.Tensor:
    return codec.from_numpy_values(array) if as_values else codec.from_numpy(array.astype(np.float64))


def predict_response(
    model_id: str, version: int, prediction: Prediction, as_values: bool
) -> model_pb2.PredictResponse:
    """Raw bytes, or ``values`` when the caller sent values (JSON callers such as grpcurl)."""
    response = model_pb2.PredictResponse(model_id=model_id, version=version)
    if prediction.values is not None:
        response.values.CopyFrom(_float_tensor(prediction.values, as_values))
    if prediction.probabilities is not None:
        response.probabilities.CopyFrom(_float_tensor(prediction.probabilities, as_values))
    if prediction.labels is not None:
        response.labels.CopyFrom(_labels_tensor(prediction.labels, as_values))
    return response


# ---- export and import ---------------------------------------------------------------------------

EXPORT_FORMAT_FROM_PROTO = {
    model_pb2.EXPORT_ONNX: ExportFormat.ONNX,
    model_pb2.EXPORT_SAVED_MODEL: ExportFormat.SAVED_MODEL,
}
EXPORT_FORMAT_TO_PROTO = {fmt: code for code, fmt in EXPORT_FORMAT_FROM_PROTO.items()}


def export_format(code: int) -> ExportFormat:
    fmt = EXPORT_FORMAT_FROM_PROTO.get(model_pb2.ExportFormat.ValueType(code))
    if fmt is None:
        raise InvalidArgument(f"format must be EXPORT_ONNX or EXPORT_SAVED_MODEL, got {code}")
    return fmt


def export_info(model_id: str, version: int, exported: Exported, fmt: ExportFormat) -> model_pb2.ExportInfo:
    return model_pb2.ExportInfo(
        model_id=model_id,
        version=version,
        format=EXPORT_FORMAT_TO_PROTO[fmt],
        file_name=exported.file_name,
        size_bytes=len(exported.data),
        sha256=exported.sha256,
        input_name=exported.input_name,
        output_names=list(exported.output_names),
        metadata_json=exported.metadata_json,
    )


def _scaler_ref(message: model_pb2.ImportHeader, field: Literal["x_scaler", "y_scaler"]) -> ScalerRef | None:
    if not message.HasField(field):
        return None
    ref = getattr(message, field)
    if not ref.scaler_id:
        raise InvalidArgument(f"header.{field}.scaler_id is required when header.{field} is set")
    return ScalerRef(ref.scaler_id, ref.version)


def import_request(
    header: model_pb2.ImportHeader, data: bytes
) -> tuple[ImportRequest, ScalerRef | None, ScalerRef | None]:
    """The import in domain terms, and the scaler versions it names (looked up by the importer)."""
    task = header.head.task
    if task not in TASK_FROM_PROTO:
        raise InvalidArgument(
            f"header.head.task is required: REGRESSION, BINARY or MULTICLASS (the head the model ends in), got {task}"
        )
    request = ImportRequest(
        model_id=header.model_id,
        head=specs.Head(TASK_FROM_PROTO[task], header.head.outputs, header.head.n_classes),
        data=data,
        timesteps=header.input.timesteps,
        features=header.input.features,
        optimizer=specs.Optimizer(header.optimizer.name, header.optimizer.learning_rate),
    )
    return request, _scaler_ref(header, "x_scaler"), _scaler_ref(header, "y_scaler")


def forecast_response(
    model_id: str, version: int, forecast: Forecast, as_values: bool
) -> model_pb2.ForecastResponse:
    response = model_pb2.ForecastResponse(
        model_id=model_id,
        version=version,
        horizon=forecast.horizon,
        target_columns=list(forecast.target_columns),
        point=_float_tensor(forecast.point, as_values),
        quantiles=list(forecast.levels),
    )
    if forecast.quantiles is not None:
        response.quantile_values.CopyFrom(_float_tensor(forecast.quantiles, as_values))
    return response


def backtest_window_to_proto(window: BacktestWindow, as_values: bool) -> model_pb2.BacktestEvent:
    message = model_pb2.BacktestWindow(
        index=window.index,
        origin=window.origin,
        metrics=window.metrics,
        forecast=_float_tensor(window.forecast, as_values),
        actual=_float_tensor(window.actual, as_values),
        model_id=window.model_id,
        model_version=window.model_version,
    )
    if window.lower is not None and window.upper is not None:
        message.lower.CopyFrom(_float_tensor(window.lower, as_values))
        message.upper.CopyFrom(_float_tensor(window.upper, as_values))
    return model_pb2.BacktestEvent(window=message)


def backtest_summary_to_proto(windows: int, metrics: dict[str, float]) -> model_pb2.BacktestEvent:
    return model_pb2.BacktestEvent(summary=model_pb2.BacktestSummary(windows=windows, metrics=metrics))


# Export files travel in chunks of this size, well under any message limit.
EXPORT_CHUNK_BYTES = 1024 * 1024


def export_chunks(exported: Exported, fmt: ExportFormat) -> Iterator[model_pb2.ExportModelChunk]:
    """The ExportModel stream of a file: its info with the first chunk, then the rest."""
    info = export_info(exported.model_id, exported.version, exported, fmt)
    data = memoryview(exported.data)
    yield model_pb2.ExportModelChunk(info=info, data=bytes(data[:EXPORT_CHUNK_BYTES]))
    for start in range(EXPORT_CHUNK_BYTES, len(data), EXPORT_CHUNK_BYTES):
        yield model_pb2.ExportModelChunk(data=bytes(data[start : start + EXPORT_CHUNK_BYTES]))


async def read_import(
    chunks: AsyncIterator[model_pb2.ImportModelChunk], check_size: Callable[[int], None]
) -> tuple[model_pb2.ImportHeader, bytes]:
    """An ImportModel stream's header and archive bytes; ``check_size`` sees the running total, so an
    archive that cannot fit is refused as soon as it cannot, not once whole."""
    header: model_pb2.ImportHeader | None = None
    parts: list[bytes] = []
    size = 0
    async for chunk in chunks:
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
            check_size(size)
            parts.append(chunk.data)
    if header is None:
        raise InvalidArgument("the import stream was empty: send the header, then the archive's bytes")
    return header, b"".join(parts)
