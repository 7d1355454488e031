"""A stored version as a file other runtimes load: ONNX (tf2onnx) or a SavedModel directory in a tar.

The scalers are folded into the graph, so the file answers what Predict answers: it takes x in raw
units, FLOAT64 (batch, timesteps, features), applies the x scaler in float64 (the cached affine form
of model_service/affine_scalers.py, clip included), runs the model in float32 as the serving path does, and
gives ``values`` in original units (the y scaler inverted in float64) for regression, or
``probabilities`` and ``labels`` (INT64) for classification. The version's metadata (spec, scaler
parameters, history) travels with it as well: ONNX metadata_props["lstm_stack"], ``lstm_stack.json``
in the SavedModel tar.

ONNX goes through ``tf2onnx.convert.from_function`` on that serving tf.function:
``tf2onnx.convert.from_keras`` does not work with Keras 3 (it looks the model's outputs up by their
Keras 2 tensor names and fails with KeyError 'keras_tensor_N').

Domain code: no grpc. TensorFlow, tf2onnx and onnx are imported here only.
"""

from __future__ import annotations

import enum
import hashlib
import io
import json
import tarfile
import tempfile
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import keras
import numpy as np
import tensorflow as tf

from model_service import builder
from model_service.affine_scalers import PER_COLUMN, AffineScaler
from model_service.model_registry import ModelRegistry
from model_service.records import ModelRecord
from model_service.spec import Task

INPUT_NAME = "x"
ONNX_OPSET = 17
METADATA_KEY = "lstm_stack"
METADATA_FILE = "lstm_stack.json"
SIGNATURE_KEY = "serving_default"
# Conversions build a second copy of the model and its graphs: one at a time per process bounds what
# exports add to the serving process's memory.
_EXPORT_LOCK = threading.Lock()


class ExportFormat(enum.StrEnum):
    ONNX = "onnx"
    SAVED_MODEL = "savedmodel"


@dataclass(frozen=True)
class Exported:
    model_id: str
    version: int
    file_name: str
    data: bytes
    input_name: str
    output_names: tuple[str, ...]
    metadata_json: str

    @property
    def sha256(self) -> str:
        return hashlib.sha256(self.data).hexdigest()


def output_names(task: Task) -> tuple[str, ...]:
    return ("values",) if task is Task.REGRESSION else ("labels", "probabilities")


def metadata(record: ModelRecord) -> str:
    """What the export carries besides the graph: the version's record, scalers in affine form."""
    body = json.loads(record.to_json())
    body["input"] = {
        "name": INPUT_NAME,
        "dtype": "float64",
        "shape": [-1, record.spec.timesteps, record.spec.features],
    }
    body["outputs"] = list(output_names(record.spec.task))
    body["scalers_in_graph"] = True
    return json.dumps(body, sort_keys=True)


def _columns(scaler: AffineScaler, x: tf.Tensor) -> tuple[tf.Tensor, tf.Tensor | None]:
    # As AffineScaler._columns: 2-D samples scaled per column are flattened, then reshaped back.
    if len(scaler.sample_shape) == 2 and scaler.layout == PER_COLUMN:
        return tf.reshape(x, [-1, int(np.prod(scaler.sample_shape))]), tf.shape(x)
    return x, None


def _transform(scaler: AffineScaler, x: tf.Tensor) -> tf.Tensor:
    columns, shape = _columns(scaler, x)
    out = columns * tf.constant(scaler.scale, tf.float64) + tf.constant(scaler.offset, tf.float64)
    if scaler.clip is not None:
        out = tf.clip_by_value(out, scaler.clip[0], scaler.clip[1])
    return out if shape is None else tf.reshape(out, shape)


def _inverse(scaler: AffineScaler, y: tf.Tensor) -> tf.Tensor:
    columns, shape = _columns(scaler, y)
    safe = np.where(scaler.scale == 0, 1.0, scaler.scale)
    out = (columns - tf.constant(scaler.offset, tf.float64)) / tf.constant(safe, tf.float64)
    return out if shape is None else tf.reshape(out, shape)


def serving_function(record: ModelRecord, model: keras.Model) -> Any:
    """Raw-unit float64 x -> {output name: tensor}, what Predict computes, as one tf.function."""
    spec = record.spec
    x_scaler, y_scaler, task = record.x_scaler, record.y_scaler, spec.task

    @tf.function(
        input_signature=[tf.TensorSpec([None, spec.timesteps, spec.features], tf.float64, name=INPUT_NAME)]
    )
    def serve(x: tf.Tensor) -> dict[str, tf.Tensor]:
        if x_scaler is not None:
            x = _transform(x_scaler, x)
        out = tf.cast(model(tf.cast(x, tf.float32), training=False), tf.float64)
        if task is Task.REGRESSION:
            return {"values": _inverse(y_scaler, out) if y_scaler is not None else out}
        if task is Task.BINARY:
            labels = tf.cast(out[:, 0] >= 0.5, tf.int64)
        else:
            labels = tf.argmax(out, axis=1, output_type=tf.int64)
        return {"probabilities": out, "labels": labels}

    return serve


def _onnx(record: ModelRecord, model: keras.Model, meta: str) -> bytes:
    import onnx
    import tf2onnx

    serve = serving_function(record, model)
    names = output_names(record.spec.task)
    proto, _ = tf2onnx.convert.from_function(serve, input_signature=serve.input_signature, opset=ONNX_OPSET)
    # tf2onnx names the graph's outputs after the function's output keys.
    got = tuple(sorted(output.name for output in proto.graph.output))
    if got != tuple(sorted(names)):
        raise RuntimeError(f"tf2onnx named the outputs {got}, expected {names}")
    entry = proto.metadata_props.add()
    entry.key, entry.value = METADATA_KEY, meta
    proto.producer_name = "lstm-stack"
    onnx.checker.check_model(proto)
    return proto.SerializeToString()


def _saved_model(record: ModelRecord, model: keras.Model, meta: str, root: str) -> bytes:
    serve = serving_function(record, model)
    module = tf.Module()
    module.model = model  # tracks the weights
    module.serve = serve
    with tempfile.TemporaryDirectory(prefix="lstm-export-") as folder:
        path = Path(folder) / root
        tf.saved_model.save(module, str(path), signatures={SIGNATURE_KEY: serve.get_concrete_function()})
        (path / METADATA_FILE).write_text(meta)
        buffer = io.BytesIO()
        with tarfile.open(fileobj=buffer, mode="w") as tar:
            tar.add(path, arcname=root)
        return buffer.getvalue()


def export(record: ModelRecord, model: keras.Model, fmt: ExportFormat) -> Exported:
    """The version as an ONNX file or a SavedModel tar (blocking work: run it off the event loop)."""
    meta = metadata(record)
    stem = f"{record.model_id}-v{record.version}"
    with _EXPORT_LOCK:
        if fmt is ExportFormat.ONNX:
            name, data = f"{stem}.onnx", _onnx(record, model, meta)
        else:
            name, data = f"{stem}.savedmodel.tar", _saved_model(record, model, meta, stem)
    return Exported(
        record.model_id, record.version, name, data, INPUT_NAME, output_names(record.spec.task), meta
    )


class ModelExporter:
    """Exports stored versions of the registry's store (read again from it, signature verified)."""

    def __init__(self, registry: ModelRegistry) -> None:
        self._registry = registry

    def run(self, model_id: str, version: int, fmt: ExportFormat) -> Exported:
        record, keras_bytes = self._registry.read_stored(model_id, version)
        model = builder.from_keras_bytes(keras_bytes, record.spec, f"{record.model_id} v{record.version}")
        return export(record, model, fmt)
