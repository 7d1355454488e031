"""Property-based fuzzing of every RPC of the real services (subprocesses): malformed tensors, specs and
requests get documented status codes only (never UNKNOWN, INTERNAL, DATA_LOSS) with short messages, and
the server stays SERVING. Per class a hostile-input battery once broke, a sharper property: integers
beyond their dtype, finite floats beyond float32 and ids that match only up to a newline are never
answered OK; costly but well-formed requests are answered or refused RESOURCE_EXHAUSTED, within the
model service's memory budget.

Examples are derandomized so CI sees the same inputs every run, and bounded to keep the module short.
"""

from __future__ import annotations

import os
import re
from collections import Counter
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import grpc
import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from protos.inference import grpc_service_pb2 as inference_pb2
from protos.inference import grpc_service_pb2_grpc as inference_pb2_grpc
from protos.lstm_stack.v1 import model_pb2, model_pb2_grpc, scaler_pb2, scaler_pb2_grpc
from service_common import codec
from tests.system import fuzz_strategies as fz
from tests.system import workloads
from tests.system.conftest import MODEL_MAX_MESSAGE_MB, MODEL_MEMORY_BUDGET_MB
from tests.system.procs import ServiceProcess, scaler_process

DOCUMENTED = {
    grpc.StatusCode.OK,
    grpc.StatusCode.INVALID_ARGUMENT,
    grpc.StatusCode.NOT_FOUND,
    grpc.StatusCode.FAILED_PRECONDITION,
    grpc.StatusCode.RESOURCE_EXHAUSTED,
    grpc.StatusCode.ALREADY_EXISTS,
    grpc.StatusCode.OUT_OF_RANGE,
}
FUZZ = settings(
    max_examples=150,
    deadline=None,
    derandomize=True,
    database=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)
BASE_SCALER = "fuzz-base"
COLUMN_SCALER = "fuzz-columns"
ROWS = np.arange(6, dtype=np.float64).reshape(2, 3)
# A status message travels in a trailer under gRPC's 8 KiB metadata soft limit; ours stay far below.
MAX_DETAILS_BYTES = 2048
# The id rule, written out independently of the services' code: whole-string, ASCII.
ID_RULE = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,127}")


def valid_id(text: str) -> bool:
    return ID_RULE.fullmatch(text) is not None and ".." not in text


class Outcomes:
    """Every status seen per RPC; an undocumented one fails the test with the request that caused it."""

    def __init__(self) -> None:
        self.seen: dict[str, Counter[str]] = {}
        self.messages: dict[str, set[str]] = {}

    def call(self, rpc: str, invoke: Callable[[], Any], request: Any) -> grpc.StatusCode:
        try:
            invoke()
            code = grpc.StatusCode.OK
            details = ""
        except grpc.RpcError as error:
            code, details = error.code(), error.details()
        self.seen.setdefault(rpc, Counter())[code.name] += 1
        self.messages.setdefault(f"{rpc} {code.name}", set()).add(details[:90])
        assert code in DOCUMENTED, f"{rpc} answered {code.name} ({details}) to {request!r:.600}"
        if code != grpc.StatusCode.OK:
            assert details, f"{rpc} answered {code.name} without a message"
            assert len(details.encode()) <= MAX_DETAILS_BYTES, f"{rpc}: {len(details)} chars: {details[:300]}"
        return code


@pytest.fixture(scope="module")
def outcomes() -> Iterator[Outcomes]:
    record = Outcomes()
    yield record
    for rpc, counts in sorted(record.seen.items()):
        print(f"{rpc}: {dict(counts)}")
    if os.environ.get("FUZZ_VERBOSE"):
        for key, messages in sorted(record.messages.items()):
            print(key, len(messages), sorted(messages)[:8])


@pytest.fixture(scope="module")
def scaler(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServiceProcess]:
    root: Path = tmp_path_factory.mktemp("fuzz-scaler")
    service = scaler_process(root / "store", root / "logs", "--executor-threads", "8")
    service.start()
    channel = service.channel()
    stub = scaler_pb2_grpc.ScalerServiceStub(channel)
    data = np.arange(30, dtype=np.float64).reshape(10, 3)
    stub.Fit(
        scaler_pb2.FitRequest(
            scaler_id=BASE_SCALER,
            spec=scaler_pb2.ScalerSpec(kind=scaler_pb2.MINMAX),
            data=codec.from_numpy(data),
        ),
        timeout=30,
    )
    stub.Fit(
        scaler_pb2.FitRequest(
            scaler_id=COLUMN_SCALER,
            spec=scaler_pb2.ScalerSpec(kind=scaler_pb2.STANDARD, layout=scaler_pb2.PER_COLUMN),
            data=codec.from_numpy(data.reshape(10, 3, 1)),
        ),
        timeout=30,
    )
    channel.close()
    try:
        yield service
    finally:
        service.stop()


@pytest.fixture(scope="module")
def scaler_stub(scaler: ServiceProcess) -> Iterator[scaler_pb2_grpc.ScalerServiceStub]:
    with scaler.channel() as channel:
        yield scaler_pb2_grpc.ScalerServiceStub(channel)


def _assert_serving(service: ServiceProcess) -> None:
    assert service.running(), f"{service.module} died:\n{service.log_tail()}"
    assert service.health() == "SERVING"


# The fitted scalers most of the time, so requests reach the transform code.
known_scalers = st.sampled_from([BASE_SCALER, COLUMN_SCALER])
scaler_ids = st.one_of(known_scalers, fz.ids)


# ---- scaler service ----


@FUZZ
@given(scaler_id=fz.ids, spec=fz.scaler_specs(), data=st.one_of(st.none(), fz.tensors()))
def test_fuzz_fit(scaler, scaler_stub, outcomes, scaler_id, spec, data) -> None:
    request = scaler_pb2.FitRequest(scaler_id=scaler_id, spec=spec)
    if data is not None:
        request.data.CopyFrom(data)
    code = outcomes.call("Fit", lambda: scaler_stub.Fit(request, timeout=30), request)
    if code == grpc.StatusCode.OK:
        assert not scaler_id or valid_id(scaler_id), f"stored under the id {scaler_id!r}"
        assert data is not None and fz.fits_its_dtype(data), f"fitted on values its dtype cannot hold: {data}"
    if data is not None and len(data.shape) > codec.MAX_RANK:
        assert code == grpc.StatusCode.INVALID_ARGUMENT
    _assert_serving(scaler)


@settings(FUZZ, max_examples=30)
@given(
    first_id=fz.ids,
    spec=fz.scaler_specs(),
    chunks=st.lists(st.one_of(st.none(), fz.tensors()), max_size=4),
    respec=st.booleans(),
)
def test_fuzz_fit_stream(scaler, scaler_stub, outcomes, first_id, spec, chunks, respec) -> None:
    messages = []
    for index, data in enumerate(chunks):
        chunk = scaler_pb2.FitChunk()
        if index == 0 or respec:
            chunk.scaler_id = first_id
            chunk.spec.CopyFrom(spec)
        if data is not None:
            chunk.data.CopyFrom(data)
        messages.append(chunk)
    outcomes.call("FitStream", lambda: scaler_stub.FitStream(iter(messages), timeout=30), messages)
    _assert_serving(scaler)


@settings(FUZZ, max_examples=40)
@given(
    spec=fz.scaler_specs(),
    train=st.one_of(st.none(), fz.tensors()),
    others=st.dictionaries(st.text(max_size=8), fz.tensors(), max_size=3),
)
def test_fuzz_fit_transform(scaler, scaler_stub, outcomes, spec, train, others) -> None:
    request = scaler_pb2.FitTransformRequest(spec=spec)
    if train is not None:
        request.train.CopyFrom(train)
    for name, tensor in others.items():
        request.others[name].CopyFrom(tensor)
    outcomes.call("FitTransform", lambda: scaler_stub.FitTransform(request, timeout=30), request)
    _assert_serving(scaler)


@FUZZ
@given(
    scaler_id=known_scalers,
    version=st.sampled_from([0, 1]),
    data=st.one_of(
        st.none(),
        fz.tensors(),
        fz.shaped_data((3,)),
        fz.shaped_data((3,), finite=True),
        fz.shaped_data((3, 1), finite=True),
    ),
    inverse=st.booleans(),
)
def test_fuzz_transform(scaler, scaler_stub, outcomes, scaler_id, version, data, inverse) -> None:
    request = scaler_pb2.TransformRequest(scaler_id=scaler_id, version=version)
    if data is not None:
        request.data.CopyFrom(data)
    rpc = scaler_stub.InverseTransform if inverse else scaler_stub.Transform
    name = "InverseTransform" if inverse else "Transform"
    code = outcomes.call(name, lambda: rpc(request, timeout=30), request)
    if data is not None and not fz.fits_its_dtype(data):
        assert code == grpc.StatusCode.INVALID_ARGUMENT, f"{name} answered {code.name} to {data}"
    _assert_serving(scaler)


@settings(FUZZ, max_examples=40)
@given(
    scaler_id=scaler_ids,
    version=fz.versions,
    page_size=fz.page_sizes,
    page_token=fz.page_tokens,
    delete_id=fz.ids,
)
def test_fuzz_get_list_delete(
    scaler, scaler_stub, outcomes, scaler_id, version, page_size, page_token, delete_id
) -> None:
    get = scaler_pb2.GetScalerRequest(scaler_id=scaler_id, version=version)
    outcomes.call("GetScaler", lambda: scaler_stub.GetScaler(get, timeout=30), get)
    transform = scaler_pb2.TransformRequest(scaler_id=scaler_id, version=version, data=codec.from_numpy(ROWS))
    outcomes.call("Transform", lambda: scaler_stub.Transform(transform, timeout=30), transform)
    listing = scaler_pb2.ListScalersRequest(scaler_id=scaler_id, page_size=page_size, page_token=page_token)
    outcomes.call("ListScalers", lambda: scaler_stub.ListScalers(listing, timeout=30), listing)
    # Random ids only: the base scalers other examples rely on stay.
    delete = scaler_pb2.DeleteScalerRequest(scaler_id=delete_id, version=version)
    outcomes.call("DeleteScaler", lambda: scaler_stub.DeleteScaler(delete, timeout=30), delete)
    _assert_serving(scaler)


def test_scalers_still_answer_after_fuzzing(scaler, scaler_stub) -> None:
    data = codec.from_numpy(np.array([[0.0, 1.0, 2.0], [27.0, 28.0, 29.0]]))
    reply = scaler_stub.Transform(scaler_pb2.TransformRequest(scaler_id=BASE_SCALER, data=data), timeout=30)
    np.testing.assert_allclose(codec.to_numpy(reply.data), [[0, 0, 0], [1, 1, 1]])
    _assert_serving(scaler)


# ---- model service (and its Open Inference Protocol endpoint) ----

MODEL_FUZZ = settings(FUZZ, max_examples=60)
model_ids = st.one_of(st.just(workloads.BASE_MODEL), fz.ids)


def _resident_mib(service: ServiceProcess, field: str = "VmRSS") -> int:
    assert service.proc is not None
    with open(f"/proc/{service.proc.pid}/status") as status:
        for line in status:
            if line.startswith(field):
                return int(line.split()[1]) // 1024
    raise AssertionError(f"no {field} in /proc/{service.proc.pid}/status")


@pytest.fixture(scope="module")
def memory_baseline(model_stack) -> int:
    """The model service's resident size before the model fuzzing; its peak is measured from here."""
    model = model_stack[1]
    assert model.proc is not None
    with open(f"/proc/{model.proc.pid}/clear_refs", "w") as refs:
        refs.write("5")  # reset the peak (VmHWM) to the current size
    return _resident_mib(model)


@pytest.fixture(scope="module")
def model_stubs(model_stack, memory_baseline) -> Iterator[tuple[model_pb2_grpc.ModelServiceStub, Any]]:
    _scaler, model = model_stack
    with model.channel() as channel:
        yield model_pb2_grpc.ModelServiceStub(channel), inference_pb2_grpc.GRPCInferenceServiceStub(channel)


@MODEL_FUZZ
@given(spec=fz.model_specs())
def test_fuzz_validate_spec(model_stack, model_stubs, outcomes, spec) -> None:
    request = model_pb2.ValidateSpecRequest(spec=spec)
    outcomes.call("ValidateSpec", lambda: model_stubs[0].ValidateSpec(request, timeout=60), request)
    _assert_serving(model_stack[1])


@settings(FUZZ, max_examples=30)
@given(request=fz.train_requests())
def test_fuzz_train(model_stack, model_stubs, outcomes, request) -> None:
    code = outcomes.call("Train", lambda: list(model_stubs[0].Train(request, timeout=120)), request)
    if code == grpc.StatusCode.OK:
        assert not request.model_id or valid_id(request.model_id), f"trained as {request.model_id!r}"
        data = [request.supervised.x, request.supervised.y, request.series.series]
        assert all(fz.fits_its_dtype(t) for t in data), f"trained on wrapped values: {request!r:.600}"
        # Unscaled, the values reach the model as they came: float32 must hold them. (A scaler may
        # bring 1e300 into range.)
        unscaled = [
            *([request.supervised.x] if not request.HasField("x_scaling") else []),
            *([request.supervised.y] if not request.HasField("y_scaling") else []),
            *([request.series.series] if not request.HasField("x_scaling") else []),
        ]
        assert not any(fz.holds_values_beyond_float32(t) for t in unscaled), f"{request!r:.600}"
    _assert_serving(model_stack[1])


@MODEL_FUZZ
@given(
    model_id=model_ids,
    version=st.one_of(st.sampled_from([0, 1]), fz.versions),
    x=st.one_of(st.none(), fz.tensors(), fz.shaped_data((3, 1)), fz.shaped_data((3,), finite=True)),
    y=st.one_of(st.none(), fz.tensors(), fz.shaped_data(())),
    evaluate=st.booleans(),
)
def test_fuzz_predict_and_evaluate(
    model_stack, model_stubs, outcomes, model_id, version, x, y, evaluate
) -> None:
    stub = model_stubs[0]
    if evaluate:
        request = model_pb2.EvaluateRequest(model_id=model_id, version=version)
        if y is not None:
            request.y.CopyFrom(y)
        rpc, name = stub.Evaluate, "Evaluate"
    else:
        request = model_pb2.PredictRequest(model_id=model_id, version=version)
        rpc, name = stub.Predict, "Predict"
    if x is not None:
        request.x.CopyFrom(x)
    code = outcomes.call(name, lambda: rpc(request, timeout=60), request)
    if code == grpc.StatusCode.OK:
        # (The base model's MinMax x scaler may bring values beyond float32 into range: the costly
        # inference test below, on unscaled models, holds the float32 property.)
        assert x is not None and fz.fits_its_dtype(x), f"{name} answered OK to wrapped values: {x}"
    _assert_serving(model_stack[1])


@settings(FUZZ, max_examples=40)
@given(
    model_id=model_ids,
    version=fz.versions,
    page_size=fz.page_sizes,
    page_token=fz.page_tokens,
    delete_id=fz.ids,
)
def test_fuzz_model_get_list_delete(
    model_stack, model_stubs, outcomes, model_id, version, page_size, page_token, delete_id
) -> None:
    stub = model_stubs[0]
    get = model_pb2.GetModelRequest(model_id=model_id, version=version)
    outcomes.call("GetModel", lambda: stub.GetModel(get, timeout=30), get)
    listing = model_pb2.ListModelsRequest(model_id=model_id, page_size=page_size, page_token=page_token)
    outcomes.call("ListModels", lambda: stub.ListModels(listing, timeout=30), listing)
    delete = model_pb2.DeleteModelRequest(model_id=delete_id, version=version)
    outcomes.call("DeleteModel", lambda: stub.DeleteModel(delete, timeout=30), delete)
    _assert_serving(model_stack[1])


@MODEL_FUZZ
@given(request=fz.infer_requests(model_ids), stream=st.booleans())
def test_fuzz_model_infer(model_stack, model_stubs, outcomes, request, stream) -> None:
    stub = model_stubs[1]
    if stream:
        # Errors travel inside the stream as error_message; the call itself must end OK.
        outcomes.call(
            "ModelStreamInfer", lambda: list(stub.ModelStreamInfer(iter([request] * 2), timeout=60)), request
        )
    else:
        outcomes.call("ModelInfer", lambda: stub.ModelInfer(request, timeout=60), request)
    _assert_serving(model_stack[1])


@settings(FUZZ, max_examples=30)
@given(name=model_ids, version=st.one_of(st.just(""), st.text(max_size=5)))
def test_fuzz_inference_metadata_and_repository(model_stack, model_stubs, outcomes, name, version) -> None:
    stub = model_stubs[1]
    ready = inference_pb2.ModelReadyRequest(name=name, version=version)
    outcomes.call("ModelReady", lambda: stub.ModelReady(ready, timeout=30), ready)
    metadata = inference_pb2.ModelMetadataRequest(name=name, version=version)
    outcomes.call("ModelMetadata", lambda: stub.ModelMetadata(metadata, timeout=30), metadata)
    config = inference_pb2.ModelConfigRequest(name=name, version=version)
    outcomes.call("ModelConfig", lambda: stub.ModelConfig(config, timeout=30), config)
    statistics = inference_pb2.ModelStatisticsRequest(name=name, version=version)
    outcomes.call("ModelStatistics", lambda: stub.ModelStatistics(statistics, timeout=30), statistics)
    index = inference_pb2.RepositoryIndexRequest(repository_name=version, ready=bool(version))
    outcomes.call("RepositoryIndex", lambda: stub.RepositoryIndex(index, timeout=30), index)
    load = inference_pb2.RepositoryModelLoadRequest(model_name=name, repository_name=version)
    outcomes.call("RepositoryModelLoad", lambda: stub.RepositoryModelLoad(load, timeout=60), load)
    if name != workloads.BASE_MODEL:  # the base model stays loaded for the other examples
        unload = inference_pb2.RepositoryModelUnloadRequest(model_name=name, repository_name=version)
        outcomes.call("RepositoryModelUnload", lambda: stub.RepositoryModelUnload(unload, timeout=30), unload)
    for rpc_name, rpc, empty in (
        ("ServerLive", stub.ServerLive, inference_pb2.ServerLiveRequest()),
        ("ServerReady", stub.ServerReady, inference_pb2.ServerReadyRequest()),
        ("ServerMetadata", stub.ServerMetadata, inference_pb2.ServerMetadataRequest()),
    ):
        outcomes.call(rpc_name, lambda rpc=rpc, empty=empty: rpc(empty, timeout=30), empty)
    _assert_serving(model_stack[1])


# ---- costly but well-formed requests: answered, or refused RESOURCE_EXHAUSTED, within the budget ----

COST = {grpc.StatusCode.OK, grpc.StatusCode.RESOURCE_EXHAUSTED}
WIDE_MODEL, OUTPUTS_MODEL = "fuzz-wide", "fuzz-outputs"
MAX_REQUEST_BYTES = int(MODEL_MAX_MESSAGE_MB * 1024 * 1024 * 0.9)


@pytest.fixture(scope="module")
def costly_models(model_stack, model_stubs) -> dict[str, int]:
    """A long, wide model (500 timesteps through Dense(1024)) and one of 5000 outputs; id -> timesteps."""
    models = {WIDE_MODEL: fz.wide_spec(500, 16, 1024), OUTPUTS_MODEL: fz.wide_spec(3, 2, 16, outputs=5000)}
    with model_stack[1].channel() as channel:
        for model_id, spec in models.items():
            rows = 2
            x = np.random.default_rng(0).normal(size=(rows, spec.input.timesteps, 1))
            request = model_pb2.TrainRequest(
                model_id=model_id,
                spec=spec,
                supervised=model_pb2.SupervisedData(
                    x=fz.tensor_from(x), y=fz.tensor_from(np.zeros((rows, spec.head.outputs)))
                ),
                epochs=1,
                batch_size=1,
            )
            workloads.train_when_a_slot_is_free(channel, request, timeout=300)
    return {model_id: spec.input.timesteps for model_id, spec in models.items()}


@settings(FUZZ, max_examples=12)
@given(request=fz.costly_train_requests())
def test_fuzz_costly_train(model_stack, model_stubs, outcomes, request) -> None:
    stub = model_stubs[0]
    code = outcomes.call("Train (costly)", lambda: list(stub.Train(request, timeout=300)), request)
    assert code in COST, code
    if code == grpc.StatusCode.OK:  # keep the process's memory for the next examples
        for info in stub.ListModels(model_pb2.ListModelsRequest(), timeout=30).models:
            if info.id.startswith("model-"):
                stub.DeleteModel(model_pb2.DeleteModelRequest(model_id=info.id), timeout=30)
    _assert_serving(model_stack[1])


@settings(FUZZ, max_examples=20)
@given(
    data=st.data(),
    model_id=st.sampled_from([WIDE_MODEL, OUTPUTS_MODEL]),
    how=st.sampled_from(["predict", "evaluate", "infer"]),
)
def test_fuzz_costly_inference(
    model_stack, model_stubs, costly_models, outcomes, data, model_id, how
) -> None:
    stub, oip = model_stubs
    timesteps = costly_models[model_id]
    x = data.draw(fz.costly_rows(timesteps, MAX_REQUEST_BYTES))
    rows = x.shape[0]
    replies: list[Any] = []
    if how == "predict":
        request: Any = model_pb2.PredictRequest(model_id=model_id, x=x)
        rpc = "Predict (costly)"
        code = outcomes.call(rpc, lambda: replies.append(stub.Predict(request, timeout=300)), request)
    elif how == "evaluate" and model_id == WIDE_MODEL:
        request = model_pb2.EvaluateRequest(model_id=model_id, x=x, y=fz.tensor_from(np.zeros(rows)))
        rpc = "Evaluate (costly)"
        code = outcomes.call(rpc, lambda: replies.append(stub.Evaluate(request, timeout=300)), request)
    else:
        request = inference_pb2.ModelInferRequest(model_name=model_id)
        request.inputs.add(name="x", datatype="FP64", shape=list(x.shape))
        request.raw_input_contents.append(x.raw)
        rpc = "ModelInfer (costly)"
        code = outcomes.call(rpc, lambda: replies.append(oip.ModelInfer(request, timeout=300)), request)
    if fz.holds_values_beyond_float32(x):
        assert code == grpc.StatusCode.INVALID_ARGUMENT, code
    else:
        assert code in COST, code
    if code == grpc.StatusCode.OK and isinstance(replies[0], model_pb2.PredictResponse):
        values = codec.to_numpy(replies[0].values)
        assert values.shape[0] == rows and np.isfinite(values).all()
    _assert_serving(model_stack[1])


def test_model_memory_stayed_within_the_budget_while_fuzzing(model_stack, memory_baseline) -> None:
    """Every costly request was chunked or refused: the peak is the budget plus what the fuzzing left
    resident (the models it trained, compiled batch sizes), not a multiple of it."""
    peak = _resident_mib(model_stack[1], "VmHWM") - memory_baseline
    assert peak <= MODEL_MEMORY_BUDGET_MB + 512, f"peak {peak} MiB above the {memory_baseline} MiB before"


def test_model_still_predicts_after_fuzzing(model_stack) -> None:
    _scaler, model = model_stack
    with model.channel() as channel:
        values = workloads.predict_seed(channel, workloads.BASE_MODEL)
    assert values.shape == (1, 1) and np.isfinite(values).all()
    _assert_serving(model)
