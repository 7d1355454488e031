"""The model service speaks the Open Inference Protocol: driven by tritonclient, a client none of us wrote."""

from __future__ import annotations

import queue
from collections.abc import Iterator
from dataclasses import dataclass

import grpc
import numpy as np
import pytest
import tritonclient.grpc as triton
from tritonclient.utils import InferenceServerException

from model_service.inference_protocol import codec
from protos.inference import grpc_service_pb2 as pb
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

REGRESSION_ID = "oip-seed"
BINARY_ID = "oip-binary"
REPOSITORY_ID = "oip-repository"


@dataclass
class Served:
    server: ModelServerHandle
    client: triton.InferenceServerClient


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
    client = triton.InferenceServerClient(model_server.address)
    try:
        yield Served(model_server, client)
    finally:
        client.close()


def query(batch: int) -> np.ndarray:
    """(batch, 3, 1) windows of small integers: exact in FP32 and FP64, so both paths see the same numbers."""
    start = np.arange(batch, dtype=np.float64)[:, None] + np.array([0.0, 1.0, 2.0])
    return start.reshape(batch, 3, 1)


def raw_input(x: np.ndarray, datatype: str = "FP32") -> triton.InferInput:
    tensor = triton.InferInput("x", list(x.shape), datatype)
    tensor.set_data_from_numpy(x.astype(np.float32 if datatype == "FP32" else np.float64))
    return tensor


def typed_input(x: np.ndarray, datatype: str) -> triton.InferInput:
    tensor = triton.InferInput("x", list(x.shape), datatype)
    field = "fp32_contents" if datatype == "FP32" else "fp64_contents"
    getattr(tensor._get_tensor().contents, field).extend(x.ravel().tolist())
    return tensor


def failure(call: object, *args: object, **kwargs: object) -> tuple[str, str]:
    try:
        call(*args, **kwargs)  # type: ignore[operator]
    except InferenceServerException as exc:
        return exc.status(), exc.message()
    raise AssertionError("the call succeeded but was expected to fail")


# ---- health and metadata ----------------------------------------------------------------------------


def test_server_live_ready_and_metadata(served: Served) -> None:
    assert served.client.is_server_live()
    assert served.client.is_server_ready()
    metadata = served.client.get_server_metadata()
    assert metadata.name == "lstm-stack"
    assert metadata.version
    assert list(metadata.extensions) == ["model_repository"]


def test_model_ready_by_name_and_version(served: Served) -> None:
    client = served.client
    assert client.is_model_ready(REGRESSION_ID)
    assert client.is_model_ready(REGRESSION_ID, "1")
    assert client.is_model_ready(REPOSITORY_ID, "2")
    assert not client.is_model_ready(REGRESSION_ID, "7")
    assert not client.is_model_ready(REGRESSION_ID, "latest")
    assert not client.is_model_ready("no-such-model")


def test_model_metadata_describes_tensors_with_a_variable_batch(served: Served) -> None:
    regression = served.client.get_model_metadata(REGRESSION_ID)
    assert regression.name == REGRESSION_ID
    assert list(regression.versions) == ["1"]
    assert [(t.name, t.datatype, list(t.shape)) for t in regression.inputs] == [("x", "FP32", [-1, 3, 1])]
    assert [(t.name, t.datatype, list(t.shape)) for t in regression.outputs] == [("values", "FP64", [-1, 1])]

    binary = served.client.get_model_metadata(BINARY_ID, "1")
    assert [(t.name, t.datatype, list(t.shape)) for t in binary.outputs] == [
        ("probabilities", "FP64", [-1, 1]),
        ("labels", "INT64", [-1]),
    ]
    assert list(served.client.get_model_metadata(REPOSITORY_ID).versions) == ["1", "2"]


# ---- inference ----------------------------------------------------------------------------------------


@pytest.mark.parametrize("batch", [1, 64])
def test_infer_equals_predict(served: Served, batch: int) -> None:
    x = query(batch)
    result = served.client.infer(REGRESSION_ID, [raw_input(x)], request_id=f"batch-{batch}")
    response = result.get_response()
    assert (response.model_name, response.model_version, response.id) == (
        REGRESSION_ID,
        "1",
        f"batch-{batch}",
    )
    # Outputs travel in raw_output_contents only (the reference client reads nothing else).
    assert [o.name for o in response.outputs] == ["values"] and len(response.raw_output_contents) == 1
    assert not response.outputs[0].HasField("contents")
    got = result.as_numpy("values")
    assert got.dtype == np.float64 and got.shape == (batch, 1)
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
    served.client.infer(REGRESSION_ID, [raw_input(query(5))])
    values(predict(served.server.stub, REGRESSION_ID, query(3)))
    after = batches()
    # Every forward pass is counted by the batcher, whichever protocol the request came in by.
    assert (after[0] - before[0], after[1] - before[1]) == (2, 8)


@pytest.mark.parametrize(
    ("make_input", "datatype"),
    [(raw_input, "FP64"), (typed_input, "FP32"), (typed_input, "FP64")],
    ids=["raw-fp64", "typed-fp32", "typed-fp64"],
)
def test_fp64_and_typed_contents_give_the_same_values(
    served: Served, make_input: object, datatype: str
) -> None:
    x = query(5)
    reference = served.client.infer(REGRESSION_ID, [raw_input(x)]).as_numpy("values")
    got = served.client.infer(REGRESSION_ID, [make_input(x, datatype)]).as_numpy("values")  # type: ignore[operator]
    np.testing.assert_allclose(got, reference, rtol=1e-6)


def test_classification_outputs_and_requested_outputs(served: Served) -> None:
    x = query(6) - 3.0
    result = served.client.infer(BINARY_ID, [raw_input(x)])
    probabilities, labels = result.as_numpy("probabilities"), result.as_numpy("labels")
    assert probabilities.shape == (6, 1) and labels.dtype == np.int64 and labels.shape == (6,)
    assert np.all((probabilities >= 0) & (probabilities <= 1))
    np.testing.assert_array_equal(labels, (probabilities[:, 0] >= 0.5).astype(np.int64))

    only_labels = served.client.infer(
        BINARY_ID, [raw_input(x)], outputs=[triton.InferRequestedOutput("labels")]
    )
    assert [o.name for o in only_labels.get_response().outputs] == ["labels"]
    assert only_labels.as_numpy("probabilities") is None
    np.testing.assert_array_equal(only_labels.as_numpy("labels"), labels)


def test_version_string_selects_the_model_version(served: Served) -> None:
    x = query(2)
    by_version = {}
    for version in ("1", "2", ""):
        result = served.client.infer(REPOSITORY_ID, [raw_input(x)], model_version=version)
        by_version[version] = (result.get_response().model_version, result.as_numpy("values"))
    assert [by_version[v][0] for v in ("1", "2", "")] == ["1", "2", "2"]
    np.testing.assert_array_equal(by_version[""][1], by_version["2"][1])
    np.testing.assert_array_equal(
        by_version["1"][1], values(predict(served.server.stub, REPOSITORY_ID, x, 1))
    )


def test_stream_infer_reports_errors_in_stream_and_keeps_going(served: Served) -> None:
    results: queue.Queue[tuple[object, object]] = queue.Queue()
    served.client.start_stream(callback=lambda result, error: results.put((result, error)))
    try:
        x = query(3)
        served.client.async_stream_infer(REGRESSION_ID, [raw_input(x)], request_id="first")
        served.client.async_stream_infer("no-such-model", [raw_input(x)], request_id="missing")
        served.client.async_stream_infer(REGRESSION_ID, [raw_input(x, "FP64")], request_id="third")
        answers = [results.get(timeout=30) for _ in range(3)]
    finally:
        served.client.stop_stream()
    first, missing, third = answers
    assert first[1] is None and third[1] is None
    assert first[0].get_response().id == "first" and third[0].get_response().id == "third"  # type: ignore[attr-defined]
    np.testing.assert_allclose(
        third[0].as_numpy("values"),
        first[0].as_numpy("values"),
        rtol=1e-6,  # type: ignore[attr-defined]
    )
    assert missing[0] is None and isinstance(missing[1], InferenceServerException)
    assert "no-such-model" in missing[1].message()


# ---- repository extension ---------------------------------------------------------------------------


def test_repository_index_unload_and_load(served: Served) -> None:
    client = served.client
    index = client.get_model_repository_index().models
    states = {(m.name, m.version): m.state for m in index}
    assert states[(REPOSITORY_ID, "1")] == states[(REPOSITORY_ID, "2")] == "READY"
    assert states[(REGRESSION_ID, "1")] == "READY"

    client.unload_model(REPOSITORY_ID)
    try:
        unloaded = {
            (m.name, m.version): (m.state, m.reason) for m in client.get_model_repository_index().models
        }
        assert unloaded[(REPOSITORY_ID, "2")] == ("UNAVAILABLE", "unloaded")
        ready_only = {m.name for m in client.get_model_repository_index().models if m.state == "READY"}
        assert REPOSITORY_ID not in ready_only
        assert not client.is_model_ready(REPOSITORY_ID)
        status, message = failure(client.infer, REPOSITORY_ID, [raw_input(query(1))])
        assert status == str(grpc.StatusCode.FAILED_PRECONDITION) and "unloaded" in message
    finally:
        client.load_model(REPOSITORY_ID)
    assert client.is_model_ready(REPOSITORY_ID, "1") and client.is_model_ready(REPOSITORY_ID, "2")
    assert client.infer(REPOSITORY_ID, [raw_input(query(1))]).as_numpy("values").shape == (1, 1)


def test_repository_index_ready_filter(served: Served) -> None:
    # tritonclient has no flag for `ready`, so this one request goes through its generated stub.
    request = triton.service_pb2.RepositoryIndexRequest(ready=True)
    reply = served.client._client_stub.RepositoryIndex(request)
    assert reply.models and all(m.state == "READY" for m in reply.models)


# ---- errors --------------------------------------------------------------------------------------------


def test_unknown_model_or_version_is_not_found(served: Served) -> None:
    x = raw_input(query(1))
    for name, version in (("no-such-model", ""), (REGRESSION_ID, "9"), (REGRESSION_ID, "one")):
        status, message = failure(served.client.infer, name, [x], model_version=version)
        assert status == str(grpc.StatusCode.NOT_FOUND), (name, version, message)
    status, _ = failure(served.client.get_model_metadata, "no-such-model")
    assert status == str(grpc.StatusCode.NOT_FOUND)


def _wrong_datatype() -> list[triton.InferInput]:
    tensor = triton.InferInput("x", [1, 3, 1], "INT32")
    tensor.set_data_from_numpy(np.ones((1, 3, 1), dtype=np.int32))
    return [tensor]


def _wrong_shape() -> list[triton.InferInput]:
    return [raw_input(np.ones((2, 4, 1)))]


def _wrong_byte_size() -> list[triton.InferInput]:
    tensor = raw_input(np.ones((2, 3, 1)))
    tensor.set_shape([3, 3, 1])  # 24 bytes sent, 36 declared
    return [tensor]


def _wrong_element_count() -> list[triton.InferInput]:
    tensor = triton.InferInput("x", [2, 3, 1], "FP32")
    tensor._get_tensor().contents.fp32_contents.extend([1.0, 2.0, 3.0])
    return [tensor]


def _wrong_name() -> list[triton.InferInput]:
    tensor = triton.InferInput("input", [1, 3, 1], "FP32")
    tensor.set_data_from_numpy(np.ones((1, 3, 1), dtype=np.float32))
    return [tensor]


@pytest.mark.parametrize(
    ("inputs", "expected_message"),
    [
        (_wrong_datatype, "datatype INT32 is not supported; expected one of FP32, FP64"),
        (_wrong_shape, "expected shape [batch>=1, 3, 1], got [2, 4, 1]"),
        (_wrong_byte_size, "shape [3, 3, 1] of FP32 needs 36 bytes, got 24"),
        (_wrong_element_count, "shape [2, 3, 1] holds 6 elements, got 3 in fp32_contents"),
        (_wrong_name, "expected input 'x', got 'input'"),
    ],
    ids=["datatype", "shape", "byte-size", "element-count", "input-name"],
)
def test_bad_input_is_invalid_argument_naming_expected_and_received(
    served: Served, inputs: object, expected_message: str
) -> None:
    status, message = failure(served.client.infer, REGRESSION_ID, inputs())  # type: ignore[operator]
    assert status == str(grpc.StatusCode.INVALID_ARGUMENT)
    assert expected_message in message


def test_unknown_output_and_unsupported_requests_are_invalid_argument(served: Served) -> None:
    x = [raw_input(query(1))]
    status, message = failure(
        served.client.infer, REGRESSION_ID, x, outputs=[triton.InferRequestedOutput("labels")]
    )
    assert status == str(grpc.StatusCode.INVALID_ARGUMENT) and "unknown output 'labels'" in message
    status, message = failure(
        served.client.infer, BINARY_ID, x, outputs=[triton.InferRequestedOutput("labels", class_count=2)]
    )
    assert status == str(grpc.StatusCode.INVALID_ARGUMENT) and "classification" in message
    status, message = failure(served.client.load_model, REPOSITORY_ID, config='{"max_batch_size": 8}')
    assert status == str(grpc.StatusCode.INVALID_ARGUMENT) and "not supported" in message
    status, _ = failure(served.client.load_model, "no-such-model")
    assert status == str(grpc.StatusCode.NOT_FOUND)


# ---- codec (no server) ---------------------------------------------------------------------------------


def test_codec_reads_little_endian_and_writes_little_endian() -> None:
    big = np.array([1.5, -2.0], dtype=">f8")
    datatype, shape, raw = codec.encode_raw(big)
    assert (datatype, shape, raw) == ("FP64", [2], np.array([1.5, -2.0], dtype="<f8").tobytes())
    decoded = codec.decode_raw(raw, "FP64", [1, 2], "x")
    np.testing.assert_array_equal(decoded, [[1.5, -2.0]])


def test_codec_rejects_contents_in_the_wrong_field_and_out_of_range_ints() -> None:
    contents = pb.InferTensorContents(fp64_contents=[1.0, 2.0])
    with pytest.raises(InvalidArgument, match="expects fp32_contents, got fp64_contents"):
        codec.decode_contents(contents, "FP32", [2], "x")
    with pytest.raises(InvalidArgument, match="out of range for INT8"):
        codec.decode_contents(pb.InferTensorContents(int_contents=[300]), "INT8", [1], "x")
    with pytest.raises(InvalidArgument, match="negative dimension"):
        codec.decode_raw(b"", "FP32", [-1, 3], "x")
