"""ExportModel: ONNX and SavedModel files that answer what Predict answers, scalers folded into the graph."""

from __future__ import annotations

import hashlib
import io
import json
import tarfile
from pathlib import Path

import grpc
import numpy as np
import onnx
import onnxruntime
import pytest
import tensorflow as tf

from model_service import builder
from model_service.affine_scalers import PER_COLUMN, AffineScaler, ScalerRef
from model_service.export import METADATA_FILE, METADATA_KEY, onnx_export
from model_service.model_store import GRAPH_FILE
from model_service.records import ModelRecord
from model_service.spec import Head, Lstm, ModelSpec, Task, with_defaults
from model_service.training.graph import serving_graph
from protos.lstm_stack.v1 import model_pb2, model_pb2_grpc, scaler_pb2
from service_common import codec
from service_common.artifacts import ArtifactStore, load_signing_key
from tests.model_service.conftest import ModelServerHandle
from tests.model_service.helpers import (
    lstm,
    make_spec,
    outlier_example,
    predict,
    scaler,
    seed_example,
    status_of,
    tiny_spec,
    train,
    train_request,
    values,
)

# Predict and the exported graph both compute the model in float32; they may differ by its rounding.
RTOL = ATOL = 1e-5


def export(
    stub: model_pb2_grpc.ModelServiceStub, model_id: str, fmt: int, version: int = 0
) -> tuple[model_pb2.ExportInfo, bytes]:
    chunks = list(
        stub.ExportModel(
            model_pb2.ExportModelRequest(model_id=model_id, version=version, format=fmt), timeout=120
        )
    )
    assert chunks and chunks[0].HasField("info")
    assert not any(chunk.HasField("info") for chunk in chunks[1:])
    return chunks[0].info, b"".join(chunk.data for chunk in chunks)


def onnx_outputs(data: bytes, x: np.ndarray) -> dict[str, np.ndarray]:
    session = onnxruntime.InferenceSession(data, providers=["CPUExecutionProvider"])
    names = [output.name for output in session.get_outputs()]
    return dict(zip(names, session.run(names, {"x": x}), strict=True))


@pytest.fixture(scope="module")
def regression(model_server: ModelServerHandle) -> model_pb2.ModelInfo:
    """The seed's outlier data, x scaled with robust, y with minmax: both scalers matter to the outputs."""
    x, y = outlier_example()
    request = train_request(
        tiny_spec(), x, y, epochs=2, x_scaling=scaler(kind=scaler_pb2.ROBUST), y_scaling=scaler()
    )
    return train(model_server.stub, request)[1]


@pytest.fixture(scope="module")
def classifier(model_server: ModelServerHandle) -> model_pb2.ModelInfo:
    x, _ = seed_example()
    labels = np.array([0, 1, 2] * 4 + [0], dtype=np.int64)
    spec = make_spec([lstm(4)], task=model_pb2.MULTICLASS, n_classes=3)
    return train(model_server.stub, train_request(spec, x, labels, epochs=2, x_scaling=scaler()))[1]


@pytest.fixture(scope="module")
def regression_onnx(
    model_server: ModelServerHandle, regression: model_pb2.ModelInfo
) -> tuple[model_pb2.ExportInfo, bytes]:
    return export(model_server.stub, regression.id, model_pb2.EXPORT_ONNX)


def test_onnx_of_a_scaled_regression_gives_predicts_values_from_raw_input(
    model_server: ModelServerHandle,
    regression: model_pb2.ModelInfo,
    regression_onnx: tuple[model_pb2.ExportInfo, bytes],
) -> None:
    assert regression.x_scaler.scaler_id and regression.y_scaler.scaler_id
    info, data = regression_onnx
    assert (info.model_id, info.version, info.format) == (
        regression.id,
        regression.version,
        model_pb2.EXPORT_ONNX,
    )
    assert info.file_name == f"{regression.id}-v{regression.version}.onnx"
    assert info.size_bytes == len(data) and info.sha256 == hashlib.sha256(data).hexdigest()
    assert (info.input_name, list(info.output_names)) == ("x", ["values"])
    x, _ = outlier_example()
    x = np.concatenate([x, x * 1.5 + 7.0])  # raw units, outliers and all
    want = values(predict(model_server.stub, regression.id, x))
    got = onnx_outputs(data, x)["values"]
    assert got.dtype == np.float64 and got.shape == want.shape == (len(x), 1)
    np.testing.assert_allclose(got, want, rtol=RTOL, atol=ATOL)
    # Without the scalers the outputs would be in scaled units, nowhere near these.
    assert np.max(np.abs(want)) > 10


def test_onnx_carries_the_scaler_parameters_in_its_metadata_too(
    regression: model_pb2.ModelInfo, regression_onnx: tuple[model_pb2.ExportInfo, bytes]
) -> None:
    info, data = regression_onnx
    props = {p.key: p.value for p in onnx.load_from_string(data).metadata_props}
    meta = json.loads(props[METADATA_KEY])
    assert meta == json.loads(info.metadata_json)
    assert meta["scalers_in_graph"] is True
    assert meta["x_scaler"]["scaler_id"] == regression.x_scaler.scaler_id
    assert len(meta["y_scaler"]["scale"]) == 1 and meta["input"]["dtype"] == "float64"


def test_onnx_of_a_classifier_gives_predicts_probabilities_and_labels(
    model_server: ModelServerHandle, classifier: model_pb2.ModelInfo
) -> None:
    info, data = export(model_server.stub, classifier.id, model_pb2.EXPORT_ONNX)
    assert sorted(info.output_names) == ["labels", "probabilities"]
    x, _ = seed_example()
    reply = predict(model_server.stub, classifier.id, x)
    got = onnx_outputs(data, x)
    np.testing.assert_allclose(
        got["probabilities"], codec.to_numpy(reply.probabilities), rtol=RTOL, atol=ATOL
    )
    assert got["labels"].dtype == np.int64
    np.testing.assert_array_equal(got["labels"], codec.to_numpy(reply.labels))


def test_a_savedmodel_tar_serves_the_same_outputs_through_its_signature(
    model_server: ModelServerHandle, regression: model_pb2.ModelInfo, tmp_path: Path
) -> None:
    info, data = export(model_server.stub, regression.id, model_pb2.EXPORT_SAVED_MODEL, regression.version)
    assert info.file_name.endswith(".savedmodel.tar")
    with tarfile.open(fileobj=io.BytesIO(data)) as tar:
        tar.extractall(tmp_path, filter="data")
    root = tmp_path / f"{regression.id}-v{regression.version}"
    assert (
        json.loads((root / METADATA_FILE).read_text())["y_scaler"]["scaler_id"]
        == regression.y_scaler.scaler_id
    )
    serve = tf.saved_model.load(str(root)).signatures["serving_default"]
    x, _ = outlier_example()
    got = serve(x=tf.constant(x))["values"].numpy()
    np.testing.assert_allclose(
        got, values(predict(model_server.stub, regression.id, x)), rtol=RTOL, atol=ATOL
    )


def test_bad_export_requests_get_precise_statuses_and_the_server_stays_healthy(
    model_server: ModelServerHandle, regression: model_pb2.ModelInfo
) -> None:
    stub = model_server.stub
    code, message = status_of(
        stub.ExportModel, model_pb2.ExportModelRequest(model_id="no-such-model", format=model_pb2.EXPORT_ONNX)
    )
    assert code is grpc.StatusCode.NOT_FOUND and "no-such-model" in message
    code, message = status_of(
        stub.ExportModel,
        model_pb2.ExportModelRequest(model_id=regression.id, version=99, format=model_pb2.EXPORT_ONNX),
    )
    assert code is grpc.StatusCode.NOT_FOUND and "no version 99" in message
    code, message = status_of(stub.ExportModel, model_pb2.ExportModelRequest(model_id=regression.id))
    assert code is grpc.StatusCode.INVALID_ARGUMENT and "EXPORT_ONNX or EXPORT_SAVED_MODEL" in message
    code, message = status_of(
        stub.ExportModel, model_pb2.ExportModelRequest(model_id="../x", format=model_pb2.EXPORT_ONNX)
    )
    assert code is grpc.StatusCode.INVALID_ARGUMENT
    x, _ = seed_example()
    assert values(predict(stub, regression.id, x)).shape == (13, 1)


def test_per_column_and_clipped_scalers_are_folded_in_as_the_serving_path_applies_them() -> None:
    spec = with_defaults(ModelSpec(3, 2, (Lstm(3),), Head(Task.REGRESSION, outputs=2)))
    rng = np.random.default_rng(4)
    # Per column: one scale per (timestep, feature), on samples flattened to 6 columns; clipped.
    x_scaler = AffineScaler(
        ScalerRef("x", 1), PER_COLUMN, (3, 2), rng.uniform(0.01, 0.1, 6), rng.normal(size=6), (-1.0, 1.0)
    )
    y_scaler = AffineScaler(ScalerRef("y", 1), PER_COLUMN, (2,), np.array([0.5, 0.02]), np.array([1.0, -3.0]))
    record = ModelRecord("cols", 1, spec, 0, "now", x_scaler, y_scaler)
    model = builder.build(spec, 1, compile_model=False)
    x = rng.normal(scale=30, size=(8, 3, 2))
    scaled = x_scaler.transform(x)
    assert np.any(scaled == 1.0) and np.any(scaled == -1.0)  # the clip matters for this input
    forward = model(scaled.astype(np.float32), training=False)
    want = y_scaler.inverse_transform(tf.cast(forward, tf.float64).numpy())
    got = onnx_outputs(onnx_export(record, serving_graph(record, model)).data, x)["values"]
    np.testing.assert_allclose(got, want, rtol=RTOL, atol=ATOL)


def test_the_onnx_export_is_the_stored_serving_graph_with_the_metadata_added(
    model_server: ModelServerHandle,
    regression: model_pb2.ModelInfo,
    regression_onnx: tuple[model_pb2.ExportInfo, bytes],
) -> None:
    _, data = regression_onnx
    store = ArtifactStore(model_server.store / "models", load_signing_key("", "", model_server.store))
    stored = store.read(regression.id, regression.version, (GRAPH_FILE,))[GRAPH_FILE]
    assert data.startswith(stored)  # byte for byte what the service runs, metadata appended
    exported, kept = onnx.load_from_string(data), onnx.load_from_string(stored)
    assert not kept.metadata_props and [p.key for p in exported.metadata_props] == [METADATA_KEY]
    exported.ClearField("metadata_props")
    assert exported.SerializeToString() == kept.SerializeToString()
    assert [n.op_type for n in kept.graph.node].count("LSTM") >= 1  # not an unrolled function graph
