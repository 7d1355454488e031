"""ImportModel: a Keras model trained elsewhere becomes a served version, or is refused saying why."""

from __future__ import annotations

import tempfile
from collections.abc import Iterator
from pathlib import Path

import grpc
import keras
import numpy as np
import pytest

from model_service.cost import MIB
from protos.inference import grpc_service_pb2 as oip
from protos.inference import grpc_service_pb2_grpc as oip_grpc
from protos.lstm_stack.v1 import model_pb2, scaler_pb2
from service_common import codec
from tests.model_service.conftest import ModelServerHandle, running_model_server
from tests.model_service.helpers import predict, seed_example, status_of, values
from tests.scaler_service.harness import ScalerServerHandle

CHUNK = 64 * 1024


def keras_bytes(model: keras.Model) -> bytes:
    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / "m.keras"
        model.save(path)
        return path.read_bytes()


def chunks(
    data: bytes, head: model_pb2.Head | None = None, **header: object
) -> Iterator[model_pb2.ImportModelChunk]:
    yield model_pb2.ImportModelChunk(
        header=model_pb2.ImportHeader(head=head or model_pb2.Head(task=model_pb2.REGRESSION), **header)
    )
    for start in range(0, len(data), CHUNK):
        yield model_pb2.ImportModelChunk(data=data[start : start + CHUNK])


def run(model: keras.Model, x: np.ndarray) -> np.ndarray:
    return keras.ops.convert_to_numpy(model(x.astype(np.float32), training=False)).astype(np.float64)


def shared_dense() -> keras.Model:
    """A chain in its layer list, but one Dense is applied twice: not the stack its layers describe."""
    inputs = keras.Input((3, 1))
    twice = keras.layers.Dense(2, activation="tanh")
    hidden = twice(twice(keras.layers.LSTM(2)(inputs)))
    return keras.Model(inputs, keras.layers.Dense(1)(hidden))


def stack(*layers: keras.layers.Layer, shape: tuple[int, ...] = (3, 1)) -> keras.Model:
    keras.utils.set_random_seed(7)
    return keras.Sequential([keras.Input(shape), *layers])


def regression_model(features: int = 1) -> keras.Model:
    return stack(
        keras.layers.LSTM(5, activation="relu", return_sequences=True),
        keras.layers.Dropout(0.2),
        keras.layers.LSTM(3),
        keras.layers.Dense(1),
        shape=(3, features),
    )


def test_an_imported_stack_is_served_and_predicts_what_keras_computes(
    model_server: ModelServerHandle,
) -> None:
    model = regression_model()
    info = model_server.stub.ImportModel(chunks(keras_bytes(model), model_id="imported"), timeout=60)
    assert (info.id, info.state, info.origin) == ("imported", model_pb2.READY, "import")
    assert [layer.kind for layer in info.layers] == ["lstm", "dropout", "lstm", "head"]
    assert info.spec.layers[0].lstm.activation == "relu" and info.spec.layers[0].lstm.return_sequences
    assert info.tensorboard_logdir == ""  # nothing was trained here
    x, _ = seed_example()
    want = run(model, x)
    np.testing.assert_allclose(values(predict(model_server.stub, "imported", x)), want, rtol=1e-5, atol=1e-5)
    # The Open Inference Protocol serves it too.
    inferred = oip_grpc.GRPCInferenceServiceStub(model_server.channel).ModelInfer(
        oip.ModelInferRequest(
            model_name="imported",
            inputs=[
                oip.ModelInferRequest.InferInputTensor(
                    name="x",
                    datatype="FP64",
                    shape=list(x.shape),
                    contents=oip.InferTensorContents(fp64_contents=x.ravel().tolist()),
                )
            ],
        ),
        timeout=30,
    )
    (output,) = inferred.outputs
    dtype = {"FP64": np.float64, "FP32": np.float32}[output.datatype]
    got = np.frombuffer(inferred.raw_output_contents[0], dtype=f"<{np.dtype(dtype).char}").reshape(
        output.shape
    )
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)
    again = model_server.stub.ImportModel(chunks(keras_bytes(model), model_id="imported"), timeout=60)
    assert again.version == info.version + 1  # a new version of the id, like a Train


def test_an_import_with_scalers_takes_raw_units_as_a_trained_version_does(
    model_server: ModelServerHandle, shared_scaler: ScalerServerHandle
) -> None:
    x, y = seed_example()
    fit_x = shared_scaler.stub.Fit(
        scaler_pb2.FitRequest(spec=scaler_pb2.ScalerSpec(kind=scaler_pb2.STANDARD), data=codec.from_numpy(x)),
        timeout=30,
    )
    fit_y = shared_scaler.stub.Fit(
        scaler_pb2.FitRequest(
            spec=scaler_pb2.ScalerSpec(kind=scaler_pb2.MINMAX), data=codec.from_numpy(y.reshape(-1, 1))
        ),
        timeout=30,
    )
    model = regression_model()
    info = model_server.stub.ImportModel(
        chunks(
            keras_bytes(model),
            x_scaler=model_pb2.ScalerRef(scaler_id=fit_x.id, version=fit_x.version),
            y_scaler=model_pb2.ScalerRef(scaler_id=fit_y.id, version=fit_y.version),
            input=model_pb2.InputShape(timesteps=3, features=1),
        ),
        timeout=60,
    )
    assert (info.x_scaler.scaler_id, info.y_scaler.scaler_id) == (fit_x.id, fit_y.id)
    scaled = shared_scaler.stub.Transform(
        scaler_pb2.TransformRequest(scaler_id=fit_x.id, data=codec.from_numpy(x)), timeout=30
    )
    out = run(model, codec.to_numpy(scaled.data))
    want = shared_scaler.stub.InverseTransform(
        scaler_pb2.TransformRequest(scaler_id=fit_y.id, data=codec.from_numpy(out)), timeout=30
    )
    got = values(predict(model_server.stub, info.id, x))
    np.testing.assert_allclose(got, codec.to_numpy(want.data), rtol=1e-5, atol=1e-5)


def test_a_chain_shaped_functional_classifier_is_accepted(model_server: ModelServerHandle) -> None:
    inputs = keras.Input((3, 2))
    hidden = keras.layers.LSTM(4)(inputs)
    model = keras.Model(inputs, keras.layers.Dense(3, activation="softmax")(hidden))
    head = model_pb2.Head(task=model_pb2.MULTICLASS, n_classes=3)
    info = model_server.stub.ImportModel(chunks(keras_bytes(model), head), timeout=60)
    x = np.random.default_rng(1).normal(size=(6, 3, 2))
    reply = predict(model_server.stub, info.id, x)
    want = run(model, x)
    np.testing.assert_allclose(codec.to_numpy(reply.probabilities), want, rtol=1e-5, atol=1e-5)


REFUSALS = {
    "a Lambda layer": (
        lambda: stack(keras.layers.LSTM(2), keras.layers.Lambda(lambda t: t * 2), keras.layers.Dense(1)),
        "is a 'Lambda' (it runs arbitrary Python code)",
    ),
    "an unknown layer kind": (
        lambda: stack(keras.layers.GRU(2), keras.layers.Dense(1)),
        "is a 'GRU'; the model service serves only these layer kinds: InputLayer, LSTM, Dense",
    ),
    "a wrong input rank": (
        lambda: stack(keras.layers.Reshape((3, 1)), keras.layers.LSTM(2), keras.layers.Dense(1), shape=(3,)),
        "input is (None, 3) (rank 2); expected rank 3",
    ),
    "a head other than the declared one": (
        lambda: stack(keras.layers.LSTM(2), keras.layers.Dense(1, activation="sigmoid")),
        "is Dense(1, sigmoid); a regression model with this head ends in Dense(1, linear)",
    ),
    "an LSTM setting serving would not reproduce": (
        lambda: stack(keras.layers.LSTM(2, go_backwards=True), keras.layers.Dense(1)),
        "go_backwards=True is not supported",
    ),
    "a layer applied twice": (shared_dense, "does not compute what the chain of its layers computes"),
    "a branching model": (
        lambda: (
            lambda i: keras.Model(i, keras.layers.Dense(1)(keras.layers.Add()([keras.layers.LSTM(2)(i)] * 2)))
        )(keras.Input((3, 1))),
        "is a 'Add'",
    ),
    "no LSTM at all": (
        lambda: stack(keras.layers.Reshape((3,)), keras.layers.Dense(1)),
        "spec has no LSTM layer",
    ),
}


@pytest.mark.parametrize("case", sorted(REFUSALS))
def test_a_model_outside_the_contract_is_refused_naming_why(
    model_server: ModelServerHandle, case: str
) -> None:
    make, expected = REFUSALS[case]
    code, message = status_of(model_server.stub.ImportModel, chunks(keras_bytes(make())), timeout=60)
    assert code is grpc.StatusCode.INVALID_ARGUMENT, message
    assert expected in message, message


def test_bad_streams_are_refused_and_the_server_stays_healthy(model_server: ModelServerHandle) -> None:
    stub = model_server.stub
    code, message = status_of(stub.ImportModel, chunks(b"PK\x03\x04 not really a zip" * 10))
    assert code is grpc.StatusCode.INVALID_ARGUMENT and "not a Keras archive" in message
    code, message = status_of(stub.ImportModel, iter([model_pb2.ImportModelChunk(data=b"x")]))
    assert code is grpc.StatusCode.INVALID_ARGUMENT and "first ImportModelChunk must be the header" in message
    code, message = status_of(stub.ImportModel, iter([]))
    assert code is grpc.StatusCode.INVALID_ARGUMENT and "empty" in message
    code, message = status_of(stub.ImportModel, chunks(b"", model_pb2.Head()))
    assert code is grpc.StatusCode.INVALID_ARGUMENT and "head.task is required" in message
    data = keras_bytes(regression_model(features=2))
    code, message = status_of(
        stub.ImportModel, chunks(data, input=model_pb2.InputShape(timesteps=3, features=1))
    )
    assert code is grpc.StatusCode.INVALID_ARGUMENT and "declares (None, 3, 1)" in message
    code, message = status_of(
        stub.ImportModel, chunks(data, x_scaler=model_pb2.ScalerRef(scaler_id="no-such-scaler"))
    )
    assert code is grpc.StatusCode.NOT_FOUND and "no-such-scaler" in message
    code, message = status_of(
        stub.ImportModel,
        chunks(data, model_pb2.Head(task=model_pb2.BINARY), y_scaler=model_pb2.ScalerRef(scaler_id="s")),
    )
    assert code is grpc.StatusCode.INVALID_ARGUMENT and "y_scaler is for REGRESSION only" in message
    x = np.zeros((1, 3, 2))
    info = stub.ImportModel(chunks(data), timeout=60)
    assert values(predict(stub, info.id, x)).shape == (1, 1)


def test_an_archive_too_large_for_the_memory_budget_is_resource_exhausted_before_it_is_read(
    shared_scaler: ScalerServerHandle, tmp_path: Path
) -> None:
    with running_model_server(tmp_path / "store", shared_scaler.address, memory_budget_mb=1) as small:
        code, message = status_of(small.stub.ImportModel, chunks(b"\0" * (MIB // 4)), timeout=30)
        assert code is grpc.StatusCode.RESOURCE_EXHAUSTED, message
        assert "memory_budget_mb=1" in message and "import a smaller model" in message
        assert not any((tmp_path / "store" / "models").glob("*/*"))  # nothing stored, nothing reserved
        code, _ = status_of(small.stub.ImportModel, chunks(b"tiny"))
        assert code is grpc.StatusCode.INVALID_ARGUMENT  # still answering
