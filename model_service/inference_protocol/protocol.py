"""Open Inference Protocol semantics on registry.ServedModels; protocol messages in, messages out.

Model name = model id, version string = model version ("" = the latest ready one). One input "x",
FP32 or FP64, shape [batch, timesteps, features], from raw_input_contents or typed contents. Outputs are
always raw: regression "values" FP64 [batch, outputs]; classification "probabilities" FP64
[batch, 1 | n_classes] and "labels" INT64 [batch]. Predictions go through ServedModel.infer, i.e. the
same scaling, inverse scaling and adaptive batcher as the Predict RPC; each one is counted in the
statistics extension (statistics.py). Series models (trained on TrainRequest.series) also have a
"forecast" output FP64 [batch, horizon, targets] in original units, and with a quantile head
"forecast_quantiles" FP64 [batch, horizon, targets, levels] (sorted); "x" is then one window of the input
columns, and the request parameter "horizon" (int, default the model's) says how many steps. Forecasts
go through the same batcher (forecaster.forecast_async). ModelConfig describes the same tensors in Triton's model
configuration terms: dims without the batch dimension, max_batch_size = the rows one forward pass takes.
Imports no grpc: errors are the domain's (service_common.errors), mapped to status codes by the servicer.
"""

from __future__ import annotations

import functools
import importlib.metadata
import time
from dataclasses import dataclass
from typing import Any

import numpy as np

from model_service.forecasting.forecaster import forecast_async
from model_service.forecasting.point import check_point, point_prediction
from model_service.inference_protocol import oip_tensors
from model_service.inference_protocol.statistics import Duration, InferenceStatistics, SuccessTiming
from model_service.model_registry import ServedModels, VersionState
from model_service.serving import ServedModel
from model_service.spec import Task
from protos.inference import grpc_service_pb2 as pb
from service_common.errors import FailedPrecondition, InvalidArgument, NotFound, echo

SERVER_NAME = "lstm-stack"
EXTENSIONS = ("model_repository", "statistics")
PLATFORM = "keras_lstm"
BACKEND = "keras"  # ModelConfig.backend: what executes the model
INPUT_NAME = "x"
INPUT_DATATYPES = ("FP32", "FP64")
INPUT_DATATYPE = "FP32"  # advertised in metadata; FP64 is accepted as well
# Request/tensor parameters asking for features we do not offer; silently ignoring them would return
# something other than what the caller asked for.
UNSUPPORTED_PARAMETERS = {
    "sequence_id": "sequence batching",
    "shared_memory_region": "shared memory",
    "classification": "the classification extension",
}


@dataclass(frozen=True)
class TensorSpec:
    name: str
    datatype: str
    shape: tuple[int, ...]  # -1 = any size
    dtype: np.dtype


def server_version() -> str:
    try:
        return importlib.metadata.version(SERVER_NAME)
    except importlib.metadata.PackageNotFoundError:
        return "0+unknown"


def parse_version(model_id: str, version: str) -> int:
    """Protocol version string -> registry version (0 = the latest). Non-numbers name no version."""
    if version == "":
        return 0
    # isascii: str.isdigit() also accepts digits such as '¹' that int() rejects.
    if not (version.isascii() and version.isdigit()) or int(version) == 0:
        raise NotFound(
            f"model {echo(model_id)} has no version {echo(version)}: versions are positive integers"
        )
    return int(version)


def served_by_name(models: ServedModels, model_id: str, version: str) -> ServedModel:
    """The served model a protocol (name, version string) pair names."""
    if not model_id:
        raise NotFound("model name is empty")
    return models.served(model_id, parse_version(model_id, version))


def is_ready(models: ServedModels, model_id: str, version: str) -> bool:
    try:
        served_by_name(models, model_id, version)
    except (NotFound, FailedPrecondition):
        return False
    return True


@functools.lru_cache(maxsize=1024)  # signatures are frozen dataclasses; specs are asked per request
def input_spec(signature: Any) -> TensorSpec:
    return TensorSpec(
        INPUT_NAME, INPUT_DATATYPE, (-1, signature.timesteps, signature.features), np.dtype(np.float32)
    )


FORECAST = "forecast"
FORECAST_QUANTILES = "forecast_quantiles"
HORIZON_PARAMETER = "horizon"


def output_specs(signature: Any, record: Any = None) -> dict[str, TensorSpec]:
    """The model's outputs; ``record`` (its ModelRecord) adds the forecast outputs of series models."""
    specs = dict(_plain_output_specs(signature))
    config = getattr(record, "forecast", None)
    if config is not None:
        f64 = np.dtype(np.float64)
        if config.quantiles:  # "values" is the median of each (step, target): forecasting/point.py
            specs["values"] = TensorSpec("values", "FP64", (-1, config.horizon * config.targets), f64)
        specs[FORECAST] = TensorSpec(FORECAST, "FP64", (-1, -1, config.targets), f64)
        if config.quantiles:
            shape = (-1, -1, config.targets, config.levels)
            specs[FORECAST_QUANTILES] = TensorSpec(FORECAST_QUANTILES, "FP64", shape, f64)
    return specs


@functools.lru_cache(maxsize=1024)
def _plain_output_specs(signature: Any) -> dict[str, TensorSpec]:
    if signature.task is Task.REGRESSION:
        specs = [TensorSpec("values", "FP64", (-1, signature.outputs), np.dtype(np.float64))]
    else:
        specs = [
            TensorSpec("probabilities", "FP64", (-1, signature.outputs), np.dtype(np.float64)),
            TensorSpec("labels", "INT64", (-1,), np.dtype(np.int64)),
        ]
    return {spec.name: spec for spec in specs}


def _tensor_metadata(spec: TensorSpec) -> Any:
    return pb.ModelMetadataResponse.TensorMetadata(name=spec.name, datatype=spec.datatype, shape=spec.shape)


def model_metadata(models: ServedModels, request: Any) -> Any:
    model = served_by_name(models, request.name, request.version)
    versions = sorted(
        {
            int(e.version)
            for e in models.index()
            if e.model_id == model.model_id and e.state is VersionState.READY
        }
        | {int(model.version)}
    )
    return pb.ModelMetadataResponse(
        name=model.model_id,
        versions=[str(v) for v in versions],
        platform=PLATFORM,
        inputs=[_tensor_metadata(input_spec(model.signature))],
        outputs=[_tensor_metadata(s) for s in output_specs(model.signature, model.record).values()],
    )


def _reject_unsupported(parameters: Any, where: str) -> None:
    for key, feature in UNSUPPORTED_PARAMETERS.items():
        if key in parameters:
            raise InvalidArgument(
                f"{where}: parameter {echo(key)} asks for {feature}, which is not supported"
            )


def decode_input(request: Any, signature: Any) -> np.ndarray:
    """The request's single input as a (batch, timesteps, features) float array, checked against the model."""
    if len(request.inputs) != 1:
        names = [t.name for t in request.inputs]
        raise InvalidArgument(f"expected exactly 1 input '{INPUT_NAME}', got {len(names)}: {echo(names)}")
    tensor = request.inputs[0]
    if tensor.name != INPUT_NAME:
        raise InvalidArgument(f"expected input '{INPUT_NAME}', got {echo(tensor.name)}")
    _reject_unsupported(tensor.parameters, f"input '{tensor.name}'")
    oip_tensors.dtype_of(tensor.datatype, tensor.name, INPUT_DATATYPES)
    expected = input_spec(signature).shape
    shape = list(tensor.shape)
    if len(shape) != 3 or shape[1:] != list(expected[1:]) or shape[0] < 1:
        raise InvalidArgument(
            f"input '{tensor.name}': expected shape [batch>=1, {expected[1]}, {expected[2]}], got {echo(shape)}"
        )
    if request.raw_input_contents:
        if len(request.raw_input_contents) != 1:
            raise InvalidArgument(
                f"expected 1 raw_input_contents entry (one per input), got {len(request.raw_input_contents)}"
            )
        if tensor.HasField("contents"):
            raise InvalidArgument(f"input '{tensor.name}': set raw_input_contents or contents, not both")
        return oip_tensors.decode_raw(request.raw_input_contents[0], tensor.datatype, shape, tensor.name)
    return oip_tensors.decode_contents(tensor.contents, tensor.datatype, shape, tensor.name)


def requested_outputs(request: Any, available: dict[str, TensorSpec]) -> list[TensorSpec]:
    if not request.outputs:
        return list(available.values())
    chosen = []
    for output in request.outputs:
        if output.name not in available:
            raise InvalidArgument(f"unknown output {echo(output.name)}; the model has {sorted(available)}")
        _reject_unsupported(output.parameters, f"output '{output.name}'")
        chosen.append(available[output.name])
    return chosen


def horizon_parameter(parameters: Any) -> int:
    """The request's "horizon" parameter (0 when absent: the model's horizon)."""
    if HORIZON_PARAMETER not in parameters:
        return 0
    parameter = parameters[HORIZON_PARAMETER]
    which = parameter.WhichOneof("parameter_choice")
    if which in ("int64_param", "uint64_param"):
        return int(getattr(parameter, which))
    if which == "string_param" and parameter.string_param.strip().lstrip("-").isdigit():
        return int(parameter.string_param)
    raise InvalidArgument(
        f"request parameter 'horizon' must be an integer (int64_param), got {echo(str(parameter).strip())}"
    )


async def _forecast_arrays(model: Any, x: np.ndarray, horizon: int) -> dict[str, np.ndarray | None]:
    """A series model's forecast from one window ``x`` of its input columns: the history rows the
    forecaster reads are rebuilt around it (other columns are never read: a recursive model's inputs
    are all targets, which it fills in itself)."""
    config = model.record.forecast
    rows = np.zeros((x.shape[0], x.shape[1], config.series_columns), dtype=np.float64)
    rows[..., list(config.input_columns)] = x
    result = await forecast_async(model, rows, horizon)
    return {FORECAST: result.point, FORECAST_QUANTILES: result.quantiles}


def _prediction_arrays(prediction: Any) -> dict[str, np.ndarray | None]:
    labels = prediction.labels
    return {
        "values": prediction.values,
        "probabilities": prediction.probabilities,
        "labels": None if labels is None else np.asarray(labels).reshape(-1),
    }


async def infer(models: ServedModels, request: Any, statistics: InferenceStatistics) -> Any:
    """One inference request, counted in ``statistics`` once it names a servable model version; the
    forward pass runs on the model's batcher thread, awaited here."""
    started = time.perf_counter_ns()
    model = served_by_name(models, request.model_name, request.model_version)
    try:
        _reject_unsupported(request.parameters, "request")
        outputs = requested_outputs(request, output_specs(model.signature, model.record))
        horizon = horizon_parameter(request.parameters)
        x = decode_input(request, model.signature)
        decoded = time.perf_counter_ns()
        names = {spec.name for spec in outputs}
        if "values" in names:
            check_point(model)
        prediction = await model.infer_async(x)
        arrays = _prediction_arrays(point_prediction(model, prediction) if "values" in names else prediction)
        if any(spec.name in (FORECAST, FORECAST_QUANTILES) for spec in outputs):
            arrays.update(await _forecast_arrays(model, x, horizon))
        predicted = time.perf_counter_ns()
        response = pb.ModelInferResponse(
            model_name=model.model_id, model_version=str(model.version), id=request.id
        )
        for spec in outputs:
            array = arrays[spec.name]
            if array is None:
                raise FailedPrecondition(f"model '{model.model_id}' produced no '{spec.name}' output")
            datatype, shape, raw = oip_tensors.encode_raw(np.asarray(array, dtype=spec.dtype))
            response.outputs.add(name=spec.name, datatype=datatype, shape=shape)
            response.raw_output_contents.append(raw)
    except Exception:
        statistics.record_failure(model.model_id, model.version, time.perf_counter_ns() - started)
        raise
    finished = time.perf_counter_ns()
    timing = prediction.timing
    statistics.record_success(
        model.model_id,
        model.version,
        rows=int(x.shape[0]),
        timing=SuccessTiming(
            total_ns=finished - started,
            input_ns=decoded - started + timing.input_ns,
            queue_ns=timing.queue_ns,
            infer_ns=timing.forward.duration_ns,
            output_ns=timing.output_ns + finished - predicted,
        ),
        execution=timing.forward,
        execution_rows=timing.forward.rows,
    )
    return response


def _config_datatype(datatype: str) -> pb.DataType.ValueType:
    return pb.DataType.Value(oip_tensors.CONFIG_DATATYPES[datatype])


def model_config(models: ServedModels, request: Any) -> Any:
    model = served_by_name(models, request.name, request.version)
    spec = input_spec(model.signature)
    return pb.ModelConfigResponse(
        config=pb.ModelConfig(
            name=model.model_id,
            platform=PLATFORM,
            backend=BACKEND,
            max_batch_size=model.max_batch_size,
            input=[
                pb.ModelInput(name=spec.name, data_type=_config_datatype(spec.datatype), dims=spec.shape[1:])
            ],
            output=[
                pb.ModelOutput(name=s.name, data_type=_config_datatype(s.datatype), dims=s.shape[1:])
                for s in output_specs(model.signature, model.record).values()
            ],
        )
    )


def _statistics_versions(models: ServedModels, request: Any) -> list[tuple[str, int]]:
    """The (model id, version) pairs a ModelStatistics request asks for: ready versions only, as Triton."""
    if not request.name:
        if request.version:
            raise InvalidArgument(f"version '{request.version}' given without a model name")
        return sorted((e.model_id, int(e.version)) for e in models.index() if e.state is VersionState.READY)
    if request.version:
        model = served_by_name(models, request.name, request.version)
        return [(model.model_id, int(model.version))]
    ready = sorted(
        (e.model_id, int(e.version))
        for e in models.index()
        if e.model_id == request.name and e.state is VersionState.READY
    )
    if ready:
        return ready
    # None ready: NotFound or FailedPrecondition saying why (or the version that became ready meanwhile).
    model = served_by_name(models, request.name, "")
    return [(model.model_id, int(model.version))]


def _duration(duration: Duration) -> Any:
    return pb.StatisticDuration(count=duration.count, ns=duration.ns)


def model_statistics(models: ServedModels, request: Any, statistics: InferenceStatistics) -> Any:
    response = pb.ModelStatisticsResponse()
    for model_id, version in _statistics_versions(models, request):
        stats = statistics.snapshot(model_id, version)
        response.model_stats.add(
            name=model_id,
            version=str(version),
            last_inference=stats.last_inference_ms,
            inference_count=stats.inference_count,
            execution_count=stats.execution_count,
            inference_stats=pb.InferStatistics(
                success=_duration(stats.success),
                fail=_duration(stats.fail),
                queue=_duration(stats.queue),
                compute_input=_duration(stats.compute_input),
                compute_infer=_duration(stats.compute_infer),
                compute_output=_duration(stats.compute_output),
            ),
            batch_stats=[
                pb.InferBatchStatistics(batch_size=size, compute_infer=_duration(d))
                for size, d in sorted(stats.batches.items())
            ],
        )
    return response


def repository_index(models: ServedModels, request: Any) -> Any:
    response = pb.RepositoryIndexResponse()
    for entry in models.index():
        if request.ready and entry.state is not VersionState.READY:
            continue
        response.models.add(
            name=entry.model_id, version=str(entry.version), state=entry.state, reason=entry.reason or ""
        )
    return response


def _check_repository_request(request: Any) -> None:
    if not request.model_name:
        raise InvalidArgument("model_name is empty")
    overrides = sorted(k for k in request.parameters if k == "config" or k.startswith("file:"))
    if overrides:
        raise InvalidArgument(
            f"model {echo(request.model_name)}: overriding {echo(overrides)} is not supported; models are "
            "created by training through lstm_stack.v1.ModelService"
        )


def load(models: ServedModels, request: Any) -> Any:
    _check_repository_request(request)
    models.load(request.model_name)
    return pb.RepositoryModelLoadResponse()


def unload(models: ServedModels, request: Any) -> Any:
    _check_repository_request(request)
    models.unload(request.model_name)
    return pb.RepositoryModelUnloadResponse()
