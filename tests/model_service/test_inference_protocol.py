"""The model service speaks the Open Inference Protocol: driven by tritonclient, a client none of us wrote.

tritonclient runs in a child process (tests/tritonclient_process.py: it cannot share a process with our
generated contract). Each test sends one script; the client's protobuf replies come back serialized and are
read with our own message classes, arrays as {"dtype", "shape", "data"}.
"""

from __future__ import annotations

import logging
import textwrap
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import grpc
import numpy as np
import pytest

from model_service.inference_protocol import oip_tensors
from protos.inference import grpc_service_pb2 as pb
from protos.inference import grpc_service_pb2_grpc as oip_grpc
from protos.lstm_stack.v1 import model_pb2
from service_common.errors import InvalidArgument
from tests.model_service.conftest import ModelServerHandle
from tests.model_service.helpers import (
    lstm,
    make_spec,
    predict,
    scaler,
    seed_example,
    seed_spec,
    tiny_spec,
    train,
    train_request,
    values,
)
from tests.tritonclient_process import run_tritonclient, unb64

REGRESSION_ID = "oip-seed"
BINARY_ID = "oip-binary"
REPOSITORY_ID = "oip-repository"

# What every script starts with: a client on the server under test and the helpers the tests share.
CLIENT = """
import base64
import queue
import numpy as np
import tritonclient.grpc as triton
from tritonclient.utils import InferenceServerException

client = triton.InferenceServerClient(inputs["address"])


def array(sent):
    return np.asarray(sent["data"], dtype=sent["dtype"]).reshape(sent["shape"])


def encoded(a):
    return None if a is None else {"dtype": str(a.dtype), "shape": list(a.shape), "data": a.ravel().tolist()}


def message(m):
    return base64.b64encode(m.SerializeToString()).decode()


def response(result):
    # The response message, and every output the models have as InferResult.as_numpy reads it.
    names = ("values", "probabilities", "labels")
    return {"response": message(result.get_response()), "arrays": {n: encoded(result.as_numpy(n)) for n in names}}


def raw_input(x, datatype="FP32"):
    tensor = triton.InferInput("x", list(x.shape), datatype)
    tensor.set_data_from_numpy(x.astype(np.float32 if datatype == "FP32" else np.float64))
    return tensor


def typed_input(x, datatype):
    tensor = triton.InferInput("x", list(x.shape), datatype)
    field = "fp32_contents" if datatype == "FP32" else "fp64_contents"
    getattr(tensor._get_tensor().contents, field).extend(x.ravel().tolist())
    return tensor


def failure(call, *args, **kwargs):
    try:
        call(*args, **kwargs)
    except InferenceServerException as exc:
        return [exc.status(), exc.message()]
    raise AssertionError("the call succeeded but was expected to fail")
"""


@dataclass
class Served:
    server: ModelServerHandle

    def run(self, script: str, **inputs: Any) -> Any:
        """``script`` (after CLIENT) in a tritonclient process; its ``result``."""
        return run_tritonclient(CLIENT + textwrap.dedent(script), address=self.server.address, **inputs)


@dataclass
class Inferred:
    """One InferResult as the client saw it."""

    response: Any  # pb.ModelInferResponse
    arrays: dict[str, np.ndarray | None]

    def as_numpy(self, name: str) -> np.ndarray | None:
        return self.arrays[name]


def sent(x: np.ndarray) -> dict[str, Any]:
    return {"dtype": str(x.dtype), "shape": list(x.shape), "data": x.ravel().tolist()}


def received(data: dict[str, Any] | None) -> np.ndarray | None:
    if data is None:
        return None
    return np.asarray(data["data"], dtype=data["dtype"]).reshape(data["shape"])


def inferred(data: dict[str, Any]) -> Inferred:
    return Inferred(
        pb.ModelInferResponse.FromString(unb64(data["response"])),
        {name: received(a) for name, a in data["arrays"].items()},
    )


def parsed(message_type: Any, data: str) -> Any:
    return message_type.FromString(unb64(data))


@pytest.fixture(scope="module")
def served(model_server: ModelServerHandle) -> Iterator[Served]:
    """The seed stack (x and y MinMax-scaled, so Predict's scaling path is exercised), a binary classifier
    and a two-version model for the repository extension, all trained briefly on the module's server."""
    x, y = seed_example()
    stub = model_server.stub
    train(
        stub,
        train_request(
            seed_spec(), x, y, model_id=REGRESSION_ID, epochs=3, x_scaling=scaler(), y_scaling=scaler()
        ),
    )
    rng = np.random.default_rng(0)
    bx = rng.normal(size=(32, 3, 1))
    by = (bx.sum(axis=(1, 2)) > 0).astype(np.float64)
    train(
        stub, train_request(make_spec([lstm(4)], task=model_pb2.BINARY), bx, by, model_id=BINARY_ID, epochs=2)
    )
    for seed in (1, 2):
        train(stub, train_request(tiny_spec(), x, y, model_id=REPOSITORY_ID, epochs=1, seed=seed))
    yield Served(model_server)


def query(batch: int) -> np.ndarray:
    """(batch, 3, 1) windows of small integers: exact in FP32 and FP64, so both paths see the same numbers."""
    start = np.arange(batch, dtype=np.float64)[:, None] + np.array([0.0, 1.0, 2.0])
    return start.reshape(batch, 3, 1)


# ---- health and metadata ----------------------------------------------------------------------------


def test_server_live_ready_and_metadata(served: Served) -> None:
    live, ready, metadata = served.run(
        "result = [client.is_server_live(), client.is_server_ready(), message(client.get_server_metadata())]"
    )
    assert live
    assert ready
    metadata = parsed(pb.ServerMetadataResponse, metadata)
    assert metadata.name == "lstm-stack"
    assert metadata.version
    assert list(metadata.extensions) == ["model_repository", "statistics"]


def test_model_ready_by_name_and_version(served: Served) -> None:
    asked = [
        [REGRESSION_ID],
        [REGRESSION_ID, "1"],
        [REPOSITORY_ID, "2"],
        [REGRESSION_ID, "7"],
        [REGRESSION_ID, "latest"],
        ["no-such-model"],
    ]
    ready = served.run("result = [client.is_model_ready(*args) for args in inputs['asked']]", asked=asked)
    assert ready[0]
    assert ready[1]
    assert ready[2]
    assert not ready[3]
    assert not ready[4]
    assert not ready[5]


def test_model_metadata_describes_tensors_with_a_variable_batch(served: Served) -> None:
    found = served.run(
        """
        result = [
            message(client.get_model_metadata(inputs["regression"])),
            message(client.get_model_metadata(inputs["binary"], "1")),
            message(client.get_model_metadata(inputs["repository"])),
        ]
        """,
        regression=REGRESSION_ID,
        binary=BINARY_ID,
        repository=REPOSITORY_ID,
    )
    regression, binary, repository = (parsed(pb.ModelMetadataResponse, m) for m in found)
    assert regression.name == REGRESSION_ID
    assert list(regression.versions) == ["1"]
    assert [(t.name, t.datatype, list(t.shape)) for t in regression.inputs] == [("x", "FP32", [-1, 3, 1])]
    assert [(t.name, t.datatype, list(t.shape)) for t in regression.outputs] == [("values", "FP64", [-1, 1])]

    assert [(t.name, t.datatype, list(t.shape)) for t in binary.outputs] == [
        ("probabilities", "FP64", [-1, 1]),
        ("labels", "INT64", [-1]),
    ]
    assert list(repository.versions) == ["1", "2"]


def test_model_config_describes_the_same_tensors_in_tritons_terms(served: Served) -> None:
    found = served.run(
        """
        result = [
            message(client.get_model_config(inputs["regression"])),
            message(client.get_model_config(inputs["binary"], "1")),
            message(client.get_model_config(inputs["repository"], "2")),
            failure(client.get_model_config, "no-such-model"),
            failure(client.get_model_config, inputs["regression"], "9"),
        ]
        """,
        regression=REGRESSION_ID,
        binary=BINARY_ID,
        repository=REPOSITORY_ID,
    )
    regression, binary, repository = (parsed(pb.ModelConfigResponse, m).config for m in found[:3])
    assert (regression.name, regression.platform, regression.backend) == (
        REGRESSION_ID,
        "keras_lstm",
        "keras",
    )
    # Batching models: dims leave the batch dimension out (ModelMetadata's leading -1).
    assert regression.max_batch_size == served.server.settings.max_batch_size
    assert [(t.name, t.data_type, list(t.dims)) for t in regression.input] == [("x", pb.TYPE_FP32, [3, 1])]
    assert [(t.name, t.data_type, list(t.dims)) for t in regression.output] == [("values", pb.TYPE_FP64, [1])]
    assert [(t.name, t.data_type, list(t.dims)) for t in binary.output] == [
        ("probabilities", pb.TYPE_FP64, [1]),
        ("labels", pb.TYPE_INT64, []),
    ]
    assert repository.name == REPOSITORY_ID and list(repository.input[0].dims) == [3, 1]
    assert found[3][0] == found[4][0] == str(grpc.StatusCode.NOT_FOUND)
    assert "no-such-model" in found[3][1]


# ---- inference ----------------------------------------------------------------------------------------


@pytest.mark.parametrize("batch", [1, 64])
def test_infer_equals_predict(served: Served, batch: int) -> None:
    x = query(batch)
    result = inferred(
        served.run(
            "result = response(client.infer(inputs['model'], [raw_input(array(inputs['x']))], request_id=inputs['id']))",
            model=REGRESSION_ID,
            x=sent(x),
            id=f"batch-{batch}",
        )
    )
    response = result.response
    assert (response.model_name, response.model_version, response.id) == (
        REGRESSION_ID,
        "1",
        f"batch-{batch}",
    )
    # Outputs travel in raw_output_contents only (the reference client reads nothing else).
    assert [o.name for o in response.outputs] == ["values"] and len(response.raw_output_contents) == 1
    assert not response.outputs[0].HasField("contents")
    got = result.as_numpy("values")
    assert got is not None and got.dtype == np.float64 and got.shape == (batch, 1)
    expected = values(predict(served.server.stub, REGRESSION_ID, x))
    np.testing.assert_allclose(got, expected, rtol=1e-5, atol=1e-6)
    # The y scaler was applied inversely: outputs are in the data's units, not in [0, 1] squashed form.
    assert not np.allclose(got, 0.0)


def test_infer_goes_through_the_adaptive_batcher_like_predict(served: Served) -> None:
    metrics = served.server.server.metrics.registry

    def batches() -> tuple[float, float]:
        labels = {"operation": "predict"}
        count = metrics.get_sample_value("lstm_batch_rows_count", labels) or 0.0
        return count, metrics.get_sample_value("lstm_batch_rows_sum", labels) or 0.0

    before = batches()
    served.run(
        "result = response(client.infer(inputs['model'], [raw_input(array(inputs['x']))]))",
        model=REGRESSION_ID,
        x=sent(query(5)),
    )
    values(predict(served.server.stub, REGRESSION_ID, query(3)))
    after = batches()
    # Every forward pass is counted by the batcher, whichever protocol the request came in by.
    assert (after[0] - before[0], after[1] - before[1]) == (2, 8)


@pytest.mark.parametrize(
    ("make_input", "datatype"),
    [("raw_input", "FP64"), ("typed_input", "FP32"), ("typed_input", "FP64")],
    ids=["raw-fp64", "typed-fp32", "typed-fp64"],
)
def test_fp64_and_typed_contents_give_the_same_values(served: Served, make_input: str, datatype: str) -> None:
    reference, got = served.run(
        """
        x = array(inputs["x"])
        make_input = {"raw_input": raw_input, "typed_input": typed_input}[inputs["make_input"]]
        result = [
            encoded(client.infer(inputs["model"], [raw_input(x)]).as_numpy("values")),
            encoded(client.infer(inputs["model"], [make_input(x, inputs["datatype"])]).as_numpy("values")),
        ]
        """,
        model=REGRESSION_ID,
        x=sent(query(5)),
        make_input=make_input,
        datatype=datatype,
    )
    np.testing.assert_allclose(received(got), received(reference), rtol=1e-6)  # type: ignore[arg-type]


def test_classification_outputs_and_requested_outputs(served: Served) -> None:
    both, only = served.run(
        """
        x = array(inputs["x"])
        result = [
            response(client.infer(inputs["model"], [raw_input(x)])),
            response(
                client.infer(inputs["model"], [raw_input(x)], outputs=[triton.InferRequestedOutput("labels")])
            ),
        ]
        """,
        model=BINARY_ID,
        x=sent(query(6) - 3.0),
    )
    result = inferred(both)
    probabilities, labels = result.as_numpy("probabilities"), result.as_numpy("labels")
    assert probabilities is not None and labels is not None
    assert probabilities.shape == (6, 1) and labels.dtype == np.int64 and labels.shape == (6,)
    assert np.all((probabilities >= 0) & (probabilities <= 1))
    np.testing.assert_array_equal(labels, (probabilities[:, 0] >= 0.5).astype(np.int64))

    only_labels = inferred(only)
    assert [o.name for o in only_labels.response.outputs] == ["labels"]
    assert only_labels.as_numpy("probabilities") is None
    np.testing.assert_array_equal(only_labels.as_numpy("labels"), labels)  # type: ignore[arg-type]


def test_version_string_selects_the_model_version(served: Served) -> None:
    x = query(2)
    found = served.run(
        """
        result = {
            version: response(client.infer(inputs["model"], [raw_input(array(inputs["x"]))], model_version=version))
            for version in ("1", "2", "")
        }
        """,
        model=REPOSITORY_ID,
        x=sent(x),
    )
    by_version = {}
    for version in ("1", "2", ""):
        result = inferred(found[version])
        by_version[version] = (result.response.model_version, result.as_numpy("values"))
    assert [by_version[v][0] for v in ("1", "2", "")] == ["1", "2", "2"]
    np.testing.assert_array_equal(by_version[""][1], by_version["2"][1])  # type: ignore[arg-type]
    np.testing.assert_array_equal(
        by_version["1"][1],  # type: ignore[arg-type]
        values(predict(served.server.stub, REPOSITORY_ID, x, 1)),
    )


STREAM = """
results = queue.Queue()
client.start_stream(callback=lambda result, error: results.put((result, error)))
try:
    x = array(inputs["x"])
    client.async_stream_infer(inputs["model"], [raw_input(x)], request_id="first")
    client.async_stream_infer("no-such-model", [raw_input(x)], request_id="missing")
    client.async_stream_infer(inputs["model"], [raw_input(x, "FP64")], request_id="third")
    answers = [results.get(timeout=30) for _ in range(3)]
finally:
    client.stop_stream()
result = [
    [
        None if result is None else response(result),
        None if error is None else error.message(),
        isinstance(error, InferenceServerException),
    ]
    for result, error in answers
]
"""


def test_stream_infer_reports_errors_in_stream_and_keeps_going(served: Served) -> None:
    first, missing, third = served.run(STREAM, model=REGRESSION_ID, x=sent(query(3)))
    assert first[1] is None and third[1] is None
    first_result, third_result = inferred(first[0]), inferred(third[0])
    assert first_result.response.id == "first" and third_result.response.id == "third"
    np.testing.assert_allclose(
        third_result.as_numpy("values"),  # type: ignore[arg-type]
        first_result.as_numpy("values"),  # type: ignore[arg-type]
        rtol=1e-6,
    )
    assert missing[0] is None and missing[2]
    assert "no-such-model" in missing[1]


def test_a_client_cancelling_a_stream_is_never_counted_as_an_error_nor_logged_with_a_traceback(
    served: Served, caplog: pytest.LogCaptureFixture
) -> None:
    handle = served.server
    method = {"grpc_service": "inference.GRPCInferenceService", "grpc_method": "ModelStreamInfer"}

    def count(code: str) -> float:
        labels = {**method, "grpc_code": code}
        return handle.server.metrics.registry.get_sample_value("grpc_server_handled_total", labels) or 0.0

    codes = ("CANCELLED", "OK", "INTERNAL", "UNKNOWN")
    before = {code: count(code) for code in codes}
    x = query(1).astype(np.float32)
    request = pb.ModelInferRequest(
        model_name=REGRESSION_ID,
        inputs=[pb.ModelInferRequest.InferInputTensor(name="x", datatype="FP32", shape=list(x.shape))],
        raw_input_contents=[x.tobytes()],
    )
    more = threading.Event()

    def requests() -> Iterator[pb.ModelInferRequest]:
        yield request
        more.wait(30)  # the client holds the stream open, then cancels it

    def added() -> dict[str, float]:
        return {code: count(code) - before[code] for code in codes}

    with caplog.at_level(logging.INFO):
        stream = oip_grpc.GRPCInferenceServiceStub(handle.channel).ModelStreamInfer(requests(), timeout=30)
        assert next(stream).infer_response.model_name == REGRESSION_ID
        stream.cancel()
        deadline = time.monotonic() + 10
        while sum(added().values()) == 0:
            assert time.monotonic() < deadline, "the cancelled stream was never counted"
            time.sleep(0.02)
        more.set()
    # Counted once, never as an error of ours. (grpc.aio first ends a cancelled request stream as if it
    # were complete and cancels the handler a moment later; the interceptor gives that moment one turn
    # of the loop, so on a loaded machine the call can still be counted OK: never INTERNAL.)
    assert added()["INTERNAL"] == added()["UNKNOWN"] == 0
    assert added()["CANCELLED"] + added()["OK"] == 1
    assert not [r for r in caplog.records if r.levelno >= logging.ERROR or r.exc_info]


# ---- repository extension ---------------------------------------------------------------------------

REPOSITORY_CYCLE = """
def index():
    return [[m.name, m.version, m.state, m.reason] for m in client.get_model_repository_index().models]


name, x = inputs["model"], array(inputs["x"])
before = index()
client.unload_model(name)
try:
    unloaded, unloaded_again = index(), index()
    ready_when_unloaded = client.is_model_ready(name)
    refused = failure(client.infer, name, [raw_input(x)])
finally:
    client.load_model(name)
result = {
    "before": before,
    "unloaded": unloaded,
    "unloaded_again": unloaded_again,
    "ready_when_unloaded": ready_when_unloaded,
    "refused": refused,
    "ready_after_load": [client.is_model_ready(name, "1"), client.is_model_ready(name, "2")],
    "shape_after_load": list(client.infer(name, [raw_input(x)]).as_numpy("values").shape),
}
"""


def test_repository_index_unload_and_load(served: Served) -> None:
    found = served.run(REPOSITORY_CYCLE, model=REPOSITORY_ID, x=sent(query(1)))
    states = {(name, version): state for name, version, state, _ in found["before"]}
    assert states[(REPOSITORY_ID, "1")] == states[(REPOSITORY_ID, "2")] == "READY"
    assert states[(REGRESSION_ID, "1")] == "READY"

    unloaded = {(name, version): (state, reason) for name, version, state, reason in found["unloaded"]}
    assert unloaded[(REPOSITORY_ID, "2")] == ("UNAVAILABLE", "unloaded")
    ready_only = {name for name, _, state, _ in found["unloaded_again"] if state == "READY"}
    assert REPOSITORY_ID not in ready_only
    assert not found["ready_when_unloaded"]
    status, message = found["refused"]
    assert status == str(grpc.StatusCode.FAILED_PRECONDITION) and "unloaded" in message
    assert found["ready_after_load"] == [True, True]
    assert found["shape_after_load"] == [1, 1]


def test_repository_index_ready_filter(served: Served) -> None:
    # tritonclient has no flag for `ready`, so this one request goes through its generated stub.
    reply = parsed(
        pb.RepositoryIndexResponse,
        served.run(
            "result = message(client._client_stub.RepositoryIndex(triton.service_pb2.RepositoryIndexRequest(ready=True)))"
        ),
    )
    assert reply.models and all(m.state == "READY" for m in reply.models)


# ---- statistics extension -----------------------------------------------------------------------------

STATISTICS_RUN = """
name = inputs["model"]
before = message(client.get_inference_statistics(name, "1"))
for rows in inputs["batches"]:
    client.infer(name, [raw_input(array(inputs["x"])[:rows])])
refused = failure(client.infer, name, [raw_input(np.ones((2, 4, 1)))])
streamed = queue.Queue()
client.start_stream(callback=lambda result, error: streamed.put(error))
try:
    client.async_stream_infer(name, [raw_input(array(inputs["x"])[:1])])
    stream_error = streamed.get(timeout=30)
finally:
    client.stop_stream()
result = {
    "before": before,
    "after": message(client.get_inference_statistics(name, "1")),
    "refused": refused,
    "stream_error": None if stream_error is None else stream_error.message(),
}
"""


def test_statistics_count_exactly_the_calls_made_and_a_failed_call_as_fail(served: Served) -> None:
    batches = [1, 2, 5]
    started_ms = time.time() * 1000
    found = served.run(STATISTICS_RUN, model=BINARY_ID, x=sent(query(5)), batches=batches)
    (before,) = parsed(pb.ModelStatisticsResponse, found["before"]).model_stats
    (after,) = parsed(pb.ModelStatisticsResponse, found["after"]).model_stats
    assert found["refused"][0] == str(grpc.StatusCode.INVALID_ARGUMENT) and found["stream_error"] is None
    assert (after.name, after.version) == (BINARY_ID, "1")

    # Three infers and one streamed request succeeded (1 + 2 + 5 + 1 rows); one infer failed.
    calls = len(batches) + 1
    assert after.inference_count - before.inference_count == sum(batches) + 1
    # One after the other, so each ran in a forward pass of its own.
    assert after.execution_count - before.execution_count == calls
    ours, theirs = after.inference_stats, before.inference_stats
    for phase in ("success", "queue", "compute_input", "compute_infer", "compute_output"):
        assert getattr(ours, phase).count - getattr(theirs, phase).count == calls, phase
    assert ours.fail.count - theirs.fail.count == 1
    assert ours.fail.ns > theirs.fail.ns
    assert ours.compute_infer.ns > theirs.compute_infer.ns
    # A request's time includes each of its phases.
    assert ours.success.ns - theirs.success.ns >= sum(
        getattr(ours, p).ns - getattr(theirs, p).ns
        for p in ("queue", "compute_input", "compute_infer", "compute_output")
    )
    assert (ours.cache_hit.count, ours.cache_miss.count) == (0, 0)
    executions = {b.batch_size: b.compute_infer.count for b in after.batch_stats}
    executed_before = {b.batch_size: b.compute_infer.count for b in before.batch_stats}
    grown = {size: n - executed_before.get(size, 0) for size, n in executions.items()}
    assert {size: n for size, n in grown.items() if n} == {1: 2, 2: 1, 5: 1}
    assert started_ms - 1 <= after.last_inference <= time.time() * 1000 + 1


def test_statistics_cover_every_ready_version_or_the_one_asked_for(served: Served) -> None:
    everything, one_model, refused, unknown_version = served.run(
        """
        result = [
            message(client.get_inference_statistics()),
            message(client.get_inference_statistics(inputs["model"])),
            failure(client.get_inference_statistics, "no-such-model"),
            failure(client.get_inference_statistics, inputs["model"], "9"),
        ]
        """,
        model=REPOSITORY_ID,
    )
    ready = {
        (m.name, m.version)
        for m in served.server.channel.unary_unary(
            "/inference.GRPCInferenceService/RepositoryIndex",
            request_serializer=pb.RepositoryIndexRequest.SerializeToString,
            response_deserializer=pb.RepositoryIndexResponse.FromString,
        )(pb.RepositoryIndexRequest(ready=True), timeout=10).models
    }
    listed = [(m.name, m.version) for m in parsed(pb.ModelStatisticsResponse, everything).model_stats]
    assert set(listed) == ready and len(listed) == len(ready)
    assert {(REGRESSION_ID, "1"), (BINARY_ID, "1"), (REPOSITORY_ID, "2")} <= ready
    versions = [(m.name, m.version) for m in parsed(pb.ModelStatisticsResponse, one_model).model_stats]
    assert versions == [(REPOSITORY_ID, "1"), (REPOSITORY_ID, "2")]
    assert refused[0] == unknown_version[0] == str(grpc.StatusCode.NOT_FOUND)


# ---- errors --------------------------------------------------------------------------------------------


def test_unknown_model_or_version_is_not_found(served: Served) -> None:
    infer_failures, metadata_failure = served.run(
        """
        x = raw_input(array(inputs["x"]))
        result = [
            [failure(client.infer, name, [x], model_version=version) for name, version in inputs["asked"]],
            failure(client.get_model_metadata, "no-such-model"),
        ]
        """,
        x=sent(query(1)),
        asked=[["no-such-model", ""], [REGRESSION_ID, "9"], [REGRESSION_ID, "one"]],
    )
    for (status, message), asked in zip(infer_failures, ["no-such-model", "9", "one"], strict=True):
        assert status == str(grpc.StatusCode.NOT_FOUND), (asked, message)
    assert metadata_failure[0] == str(grpc.StatusCode.NOT_FOUND)


BAD_INPUTS = """
def wrong_datatype():
    tensor = triton.InferInput("x", [1, 3, 1], "INT32")
    tensor.set_data_from_numpy(np.ones((1, 3, 1), dtype=np.int32))
    return [tensor]


def wrong_shape():
    return [raw_input(np.ones((2, 4, 1)))]


def wrong_byte_size():
    tensor = raw_input(np.ones((2, 3, 1)))
    tensor.set_shape([3, 3, 1])  # 24 bytes sent, 36 declared
    return [tensor]


def wrong_element_count():
    tensor = triton.InferInput("x", [2, 3, 1], "FP32")
    tensor._get_tensor().contents.fp32_contents.extend([1.0, 2.0, 3.0])
    return [tensor]


def wrong_name():
    tensor = triton.InferInput("input", [1, 3, 1], "FP32")
    tensor.set_data_from_numpy(np.ones((1, 3, 1), dtype=np.float32))
    return [tensor]


result = failure(client.infer, inputs["model"], globals()[inputs["inputs"]]())
"""


@pytest.mark.parametrize(
    ("inputs", "expected_message"),
    [
        ("wrong_datatype", "datatype INT32 is not supported; expected one of FP32, FP64"),
        ("wrong_shape", "expected shape [batch>=1, 3, 1], got [2, 4, 1]"),
        ("wrong_byte_size", "shape [3, 3, 1] of FP32 needs 36 bytes, got 24"),
        ("wrong_element_count", "shape [2, 3, 1] holds 6 elements, got 3 in fp32_contents"),
        ("wrong_name", "expected input 'x', got 'input'"),
    ],
    ids=["datatype", "shape", "byte-size", "element-count", "input-name"],
)
def test_bad_input_is_invalid_argument_naming_expected_and_received(
    served: Served, inputs: str, expected_message: str
) -> None:
    status, message = served.run(BAD_INPUTS, model=REGRESSION_ID, inputs=inputs)
    assert status == str(grpc.StatusCode.INVALID_ARGUMENT)
    assert expected_message in message


def test_unknown_output_and_unsupported_requests_are_invalid_argument(served: Served) -> None:
    (status, message), (class_status, class_message), (config_status, config_message), (load_status, _) = (
        served.run(
            """
            x = [raw_input(array(inputs["x"]))]
            regression, binary, repository = inputs["models"]
            result = [
                failure(client.infer, regression, x, outputs=[triton.InferRequestedOutput("labels")]),
                failure(client.infer, binary, x, outputs=[triton.InferRequestedOutput("labels", class_count=2)]),
                failure(client.load_model, repository, config='{"max_batch_size": 8}'),
                failure(client.load_model, "no-such-model"),
            ]
            """,
            x=sent(query(1)),
            models=[REGRESSION_ID, BINARY_ID, REPOSITORY_ID],
        )
    )
    assert status == str(grpc.StatusCode.INVALID_ARGUMENT) and "unknown output 'labels'" in message
    assert class_status == str(grpc.StatusCode.INVALID_ARGUMENT) and "classification" in class_message
    assert config_status == str(grpc.StatusCode.INVALID_ARGUMENT) and "not supported" in config_message
    assert load_status == str(grpc.StatusCode.NOT_FOUND)


# ---- codec (no server) ---------------------------------------------------------------------------------


def test_codec_reads_little_endian_and_writes_little_endian() -> None:
    big = np.array([1.5, -2.0], dtype=">f8")
    datatype, shape, raw = oip_tensors.encode_raw(big)
    assert (datatype, shape, raw) == ("FP64", [2], np.array([1.5, -2.0], dtype="<f8").tobytes())
    decoded = oip_tensors.decode_raw(raw, "FP64", [1, 2], "x")
    np.testing.assert_array_equal(decoded, [[1.5, -2.0]])


def test_codec_rejects_contents_in_the_wrong_field_and_out_of_range_ints() -> None:
    contents = pb.InferTensorContents(fp64_contents=[1.0, 2.0])
    with pytest.raises(InvalidArgument, match="expects fp32_contents, got fp64_contents"):
        oip_tensors.decode_contents(contents, "FP32", [2], "x")
    with pytest.raises(InvalidArgument, match="out of range for INT8"):
        oip_tensors.decode_contents(pb.InferTensorContents(int_contents=[300]), "INT8", [1], "x")
    with pytest.raises(InvalidArgument, match="negative dimension"):
        oip_tensors.decode_raw(b"", "FP32", [-1, 3], "x")


def test_codec_names_every_protocol_datatype_as_tritons_model_configuration_does() -> None:
    assert set(oip_tensors.CONFIG_DATATYPES) == {*oip_tensors.NUMPY_DTYPES, "BYTES", "BF16"}
    numbers = {name: pb.DataType.Value(config) for name, config in oip_tensors.CONFIG_DATATYPES.items()}
    assert numbers["FP32"] == pb.TYPE_FP32 and numbers["INT64"] == pb.TYPE_INT64
    assert numbers["BYTES"] == pb.TYPE_STRING and numbers["BF16"] == pb.TYPE_BF16
    assert len(set(numbers.values())) == len(numbers) and pb.TYPE_INVALID not in numbers.values()
