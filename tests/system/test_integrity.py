"""Artifact integrity on the real services: tampered or foreign artifacts are reported and skipped on
start, never deserialized; a model holding a Lambda layer is refused even with a valid signature."""

from __future__ import annotations

import json
import pickle
import time
from collections.abc import Iterator
from pathlib import Path

import grpc
import numpy as np
import pytest

from protos.lstm_stack.v1 import model_pb2, model_pb2_grpc, scaler_pb2, scaler_pb2_grpc
from service_common import codec
from service_common.artifacts import SIGNATURE_FILE, ArtifactStore, load_signing_key
from tests.system import workloads
from tests.system.procs import ServiceProcess, model_process, running, scaler_process

SCALER_DIR = "scalers"
MODEL_DIR = "models"


class _OpensAFileWhenUnpickled:
    """A hostile payload: unpickling it creates ``marker``. Never loaded = marker never appears."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):  # type: ignore[no-untyped-def]
        return (open, (str(self.marker), "w"))


def _fit(stub: scaler_pb2_grpc.ScalerServiceStub, scaler_id: str) -> scaler_pb2.ScalerInfo:
    data = codec.from_numpy(np.arange(12, dtype=np.float64).reshape(4, 3))
    spec = scaler_pb2.ScalerSpec(kind=scaler_pb2.STANDARD)
    return stub.Fit(scaler_pb2.FitRequest(scaler_id=scaler_id, spec=spec, data=data), timeout=30)


def _listed(stub: scaler_pb2_grpc.ScalerServiceStub) -> set[tuple[str, int]]:
    reply = stub.ListScalers(scaler_pb2.ListScalersRequest(page_size=1000), timeout=30)
    return {(s.id, s.version) for s in reply.scalers}


@pytest.fixture
def scaler(tmp_path: Path) -> Iterator[ServiceProcess]:
    service = scaler_process(tmp_path / "store", tmp_path / "logs")
    try:
        yield service
    finally:
        service.stop()


def test_tampered_and_foreign_scalers_are_skipped_and_never_unpickled(
    scaler: ServiceProcess, tmp_path: Path
) -> None:
    scaler.start()
    with scaler.channel() as channel:
        stub = scaler_pb2_grpc.ScalerServiceStub(channel)
        for name in ("flipped", "hostile", "resigned", "truncated", "intact"):
            _fit(stub, name)
        assert len(_listed(stub)) == 5
    scaler.stop()

    root = scaler.store / SCALER_DIR
    marker = tmp_path / "unpickled-marker"
    # 1. One flipped bit in the fitted estimator.
    joblib_file = root / "flipped" / "1" / "scaler.joblib"
    data = bytearray(joblib_file.read_bytes())
    data[len(data) // 2] ^= 0x01
    joblib_file.write_bytes(bytes(data))
    # 2. The estimator swapped for a hostile pickle (signature left as it was).
    (root / "hostile" / "1" / "scaler.joblib").write_bytes(pickle.dumps(_OpensAFileWhenUnpickled(marker)))
    # 3. A hostile pickle with a valid-looking signature made with another key.
    resigned = root / "resigned" / "1"
    payload = {name.name: name.read_bytes() for name in resigned.iterdir() if name.name != SIGNATURE_FILE}
    payload["scaler.joblib"] = pickle.dumps(_OpensAFileWhenUnpickled(marker))
    foreign = ArtifactStore(tmp_path / "foreign", b"not-the-service-key-0123456789")
    foreign_dir = foreign.write("resigned", 1, payload)
    (resigned / SIGNATURE_FILE).write_bytes((foreign_dir / SIGNATURE_FILE).read_bytes())
    (resigned / "scaler.joblib").write_bytes(payload["scaler.joblib"])
    # 4. A payload file cut short.
    truncated = root / "truncated" / "1" / "meta.json"
    truncated.write_bytes(truncated.read_bytes()[:10])

    scaler.start()
    with scaler.channel() as channel:
        stub = scaler_pb2_grpc.ScalerServiceStub(channel)
        assert _listed(stub) == {("intact", 1)}
        for name in ("flipped", "hostile", "resigned", "truncated"):
            with pytest.raises(grpc.RpcError) as info:
                stub.GetScaler(scaler_pb2.GetScalerRequest(scaler_id=name), timeout=30)
            assert info.value.code() == grpc.StatusCode.NOT_FOUND
        # A new fit of a skipped id takes a fresh version: the refused one is never overwritten or reused.
        assert _fit(stub, "flipped").version == 2
        assert scaler.health() == "SERVING"
    assert not marker.exists(), "a payload whose signature did not verify was unpickled"
    log = scaler.log_tail(400)
    for name in ("flipped", "hostile", "resigned", "truncated"):
        assert f"{SCALER_DIR}/{name}/1" in log, f"refusing {name} was not reported:\n{log}"
    assert "does not match its signature" in log
    assert "signature does not verify" in log


def _lambda_model_bytes(marker: Path, workdir: Path) -> bytes:
    """A Keras model (3, 1) -> (1,) whose Lambda layer (serialized Python bytecode) creates ``marker``
    whenever it runs. Loading it without safe_mode runs it: the payload is live."""
    import keras  # deferred: TensorFlow is only needed for this test

    inputs = keras.Input(shape=(3, 1))
    hidden = keras.layers.LSTM(4)(inputs)
    # The marker's path is a constant inside the lambda's code (Keras cannot reload lambda defaults).
    payload = eval(f"lambda tensor: (open({str(marker)!r}, 'w').close(), tensor)[1]")  # noqa: S307
    hidden = keras.layers.Lambda(payload, output_shape=(4,))(hidden)
    model = keras.Model(inputs, keras.layers.Dense(1)(hidden))
    path = workdir / "lambda.keras"
    model.save(path)
    unsafe = keras.saving.load_model(path, safe_mode=False)
    unsafe(np.zeros((1, 3, 1), dtype=np.float32))
    assert marker.exists(), "the Lambda payload does not run when loaded unsafely"
    marker.unlink()
    return path.read_bytes()


def test_tampered_model_and_lambda_model_are_refused(tmp_path: Path) -> None:
    scaler = scaler_process(tmp_path / "scaler-store", tmp_path / "logs")
    model = model_process(tmp_path / "model-store", tmp_path / "logs", scaler, "--warm-on-start", "false")
    with running(scaler):
        model.start()
        try:
            with model.channel() as channel:
                for name in ("intact", "flipped"):
                    workloads.train(channel, workloads.train_request(name, epochs=1, scaled=False))
        finally:
            model.stop()

        root = model.store / MODEL_DIR
        keras_file = root / "flipped" / "1" / "model.keras"
        data = bytearray(keras_file.read_bytes())
        data[len(data) // 3] ^= 0x40
        keras_file.write_bytes(bytes(data))
        # A Lambda model signed with the service's own key: only safe_mode stands in the way.
        marker = tmp_path / "lambda-ran"
        meta = json.loads((root / "intact" / "1" / "meta.json").read_text())
        meta["model_id"] = "lambda"
        store = ArtifactStore(root, load_signing_key("", "", model.store))
        store.write(
            "lambda",
            1,
            {"model.keras": _lambda_model_bytes(marker, tmp_path), "meta.json": json.dumps(meta).encode()},
        )
        store.read("lambda", 1)  # the signature is valid

        model.start()
        try:
            with model.channel() as channel:
                stub = model_pb2_grpc.ModelServiceStub(channel)

                def listed() -> set[tuple[str, int]]:
                    models = stub.ListModels(model_pb2.ListModelsRequest(page_size=100), timeout=30).models
                    return {(m.id, m.version) for m in models}

                # The tampered file fails its signature when the store is listed. The Lambda version,
                # stored without a serving graph as versions once were, is refused once the trainer
                # process, asked for its graph in the background, finds safe_mode refusing it.
                assert ("flipped", 1) not in listed()
                deadline = time.monotonic() + 180
                while listed() != {("intact", 1)}:
                    assert time.monotonic() < deadline, listed()
                    time.sleep(0.5)
                for name in ("flipped", "lambda"):
                    with pytest.raises(grpc.RpcError) as info:
                        workloads.predict_seed(channel, name)
                    assert info.value.code() == grpc.StatusCode.NOT_FOUND
                assert workloads.predict_seed(channel, "intact").shape == (1, 1)
                assert model.health() == "SERVING"
        finally:
            model.stop()
    assert not marker.exists(), "the Lambda layer's code ran inside the service"
    log = model.log_tail(400)
    assert f"{MODEL_DIR}/flipped/1" in log and "does not match its signature" in log, log
    lambda_lines = [line for line in log.splitlines() if f"{MODEL_DIR}/lambda/1" in line]
    assert lambda_lines and "Lambda" in lambda_lines[0] and "safe_mode" in lambda_lines[0], lambda_lines
