"""A stored version as a SavedModel directory in a tar, for TensorFlow Serving and friends.

The scalers are folded in, as in the serving graph: it takes x in raw units, FLOAT64 (batch, timesteps,
features), applies the x scaler in float64 (the cached affine form of model_service/affine_scalers.py,
clip included), runs the model in float32 as the serving path does, and gives ``values`` in original
units (the y scaler inverted in float64) for regression, or ``probabilities`` and ``labels`` (INT64) for
classification; ``lstm_stack.json`` in the tar carries the version's metadata.

Trainer process only (it imports TensorFlow): serving processes forward SavedModel exports to it.
Domain code: no grpc.
"""

from __future__ import annotations

import io
import tarfile
import tempfile
import threading
from pathlib import Path
from typing import Any

import keras
import numpy as np
import tensorflow as tf

from model_service.affine_scalers import PER_COLUMN, AffineScaler
from model_service.export import INPUT_NAME, METADATA_FILE, Exported, metadata, output_names
from model_service.records import ModelRecord
from model_service.serving_graph import y_affine
from model_service.spec import Task

SIGNATURE_KEY = "serving_default"
# A conversion builds a second copy of the model and its graphs: one at a time bounds what exports add.
_EXPORT_LOCK = threading.Lock()


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


def _inverse(affine: tuple[np.ndarray, np.ndarray], y: tf.Tensor) -> tf.Tensor:
    # Per head output, quantile levels included (the serving graph's y_affine).
    scale, offset = affine
    return (y - tf.constant(offset, tf.float64)) / tf.constant(scale, tf.float64)


def serving_function(record: ModelRecord, model: keras.Model) -> Any:
    """Raw-unit float64 x -> {output name: tensor}, what Predict computes, as one tf.function."""
    spec = record.spec
    x_scaler, y_inverse, task = record.x_scaler, y_affine(record), spec.task

    @tf.function(
        input_signature=[tf.TensorSpec([None, spec.timesteps, spec.features], tf.float64, name=INPUT_NAME)]
    )
    def serve(x: tf.Tensor) -> dict[str, tf.Tensor]:
        if x_scaler is not None:
            x = _transform(x_scaler, x)
        out = tf.cast(model(tf.cast(x, tf.float32), training=False), tf.float64)
        if task is Task.REGRESSION:
            return {"values": _inverse(y_inverse, out) if y_inverse is not None else out}
        if task is Task.BINARY:
            labels = tf.cast(out[:, 0] >= 0.5, tf.int64)
        else:
            labels = tf.argmax(out, axis=1, output_type=tf.int64)
        return {"probabilities": out, "labels": labels}

    return serve


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


def saved_model_export(record: ModelRecord, model: keras.Model) -> Exported:
    """The version as a SavedModel tar (blocking work)."""
    meta = metadata(record)
    stem = f"{record.model_id}-v{record.version}"
    with _EXPORT_LOCK:
        data = _saved_model(record, model, meta, stem)
    return Exported(
        record.model_id,
        record.version,
        f"{stem}.savedmodel.tar",
        data,
        INPUT_NAME,
        output_names(record.spec.task),
        meta,
    )
