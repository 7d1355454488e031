"""Resolved spec -> Keras 3 model; Keras confirms the shape arithmetic of spec.py; .keras (de)serialization.

Every random initializer and Dropout gets its own seed derived from the training seed, and models
are built under BUILD_LOCK right after ``keras.utils.set_random_seed``: the same seed builds the same
weights even while other jobs build or train in other threads.
"""

from __future__ import annotations

import contextlib
import os
import tempfile
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import keras
import numpy as np

from model_service.spec import (
    HEAD_ACTIVATION,
    HEAD_LOSS,
    UNROLL_MAX_TIMESTEPS,
    Dense,
    Dropout,
    Lstm,
    ModelSpec,
    Reshape,
    SpecPlan,
    Task,
    layer_name,
    plan,
    shape_text,
)
from service_common.errors import IntegrityError, InvalidArgument

# Global Keras/TF random state is touched only under this lock (set_random_seed, then build).
BUILD_LOCK = threading.Lock()
# Models built only to be looked at (ValidateSpec) are built one at a time: each holds its weights
# (up to spec.MAX_PARAMS) until it is dropped, and callers are many.
_DESCRIBE_LOCK = threading.Lock()
SEED_MODULUS = 2**31 - 1
# ReLU-type activations output exactly 0 for negative inputs. With Keras' zero biases, an LSTM of a
# few relu units fed by a relu LSTM (whose outputs are all >= 0) is often dead from the first step:
# the seed's LSTM(2, relu) bottleneck was, for 10 of 20 seeds. A small positive bias (the usual remedy
# for ReLU layers) keeps units alive at the start; the forget gate keeps Keras' bias of 1.
RELU_LIKE = frozenset({"relu", "relu6"})
RELU_BIAS = 0.1


def seed_stream(seed: int) -> Iterator[int]:
    """Independent 31-bit seeds derived from one training seed (any int64, negative too)."""
    sequence = np.random.SeedSequence(seed % 2**64)
    while True:
        for value in sequence.generate_state(16, dtype=np.uint32):
            yield int(value) % SEED_MODULUS
        sequence = sequence.spawn(1)[0]


def _optimizer(spec: ModelSpec) -> keras.optimizers.Optimizer:
    classes: dict[str, Any] = {
        "adam": keras.optimizers.Adam,
        "adamw": keras.optimizers.AdamW,
        "sgd": keras.optimizers.SGD,
        "rmsprop": keras.optimizers.RMSprop,
        "adagrad": keras.optimizers.Adagrad,
        "adamax": keras.optimizers.Adamax,
        "nadam": keras.optimizers.Nadam,
    }
    return classes[spec.optimizer.name](learning_rate=spec.optimizer.learning_rate)


def _metrics(task: Task) -> list[keras.metrics.Metric]:
    if task is Task.REGRESSION:
        return [keras.metrics.MeanAbsoluteError(name="mae")]
    if task is Task.BINARY:
        return [keras.metrics.BinaryAccuracy(name="accuracy")]
    return [keras.metrics.SparseCategoricalAccuracy(name="accuracy")]


def _bias(activation: str) -> keras.initializers.Initializer:
    if activation in RELU_LIKE:
        return keras.initializers.Constant(RELU_BIAS)
    return keras.initializers.Zeros()


def _layers(spec: ModelSpec, seeds: Iterator[int], initialize: bool) -> list[keras.layers.Layer]:
    def initial(initializer: keras.initializers.Initializer) -> keras.initializers.Initializer:
        # Zeros cost nothing to make; Orthogonal's QR decomposition of a wide LSTM takes seconds.
        return initializer if initialize else keras.initializers.Zeros()

    built: list[keras.layers.Layer] = []
    shapes = [(None, spec.timesteps, spec.features), *(p.output_shape for p in plan(spec).layers)]
    for index, layer in enumerate(spec.layers):
        name = layer_name(index, layer.kind)
        if isinstance(layer, Lstm):
            steps = shapes[index][1] or 0  # what the LSTM walks: a Reshape before it may have changed it
            built.append(
                keras.layers.LSTM(
                    layer.units,
                    activation=layer.activation,
                    return_sequences=bool(layer.return_sequences),
                    kernel_initializer=initial(keras.initializers.GlorotUniform(seed=next(seeds))),
                    recurrent_initializer=initial(keras.initializers.Orthogonal(seed=next(seeds))),
                    bias_initializer=_bias(layer.activation),
                    unroll=steps <= UNROLL_MAX_TIMESTEPS,
                    name=name,
                )
            )
        elif isinstance(layer, Dense):
            built.append(
                keras.layers.Dense(
                    layer.units,
                    activation=layer.activation,
                    kernel_initializer=initial(keras.initializers.GlorotUniform(seed=next(seeds))),
                    bias_initializer=_bias(layer.activation),
                    name=name,
                )
            )
        elif isinstance(layer, Reshape):
            built.append(keras.layers.Reshape(layer.target_shape, name=name))
        elif isinstance(layer, Dropout):
            built.append(keras.layers.Dropout(layer.rate, seed=next(seeds), name=name))
    built.append(
        keras.layers.Dense(
            spec.head.units,
            activation=HEAD_ACTIVATION[spec.task],
            kernel_initializer=initial(keras.initializers.GlorotUniform(seed=next(seeds))),
            name="head",
        )
    )
    return built


def build(
    spec: ModelSpec,
    seed: int,
    compile_model: bool = True,
    initialize: bool = True,
    loss: keras.losses.Loss | None = None,
) -> keras.Sequential:
    """A (compiled) model for a resolved spec. Call under BUILD_LOCK when determinism matters.
    ``initialize=False`` starts every kernel at zero: a model only looked at, never trained. A ``loss``
    given (the quantile head's) replaces the task's, and its outputs no longer match y one to one, so
    the task's metrics are left out."""
    seeds = seed_stream(seed)
    try:
        model = keras.Sequential(
            [keras.Input((spec.timesteps, spec.features), name="x"), *_layers(spec, seeds, initialize)],
            name="lstm_stack",
        )
    except (ValueError, TypeError) as exc:
        raise InvalidArgument(f"Keras rejected the spec: {exc}") from exc
    if compile_model:
        model.compile(
            optimizer=_optimizer(spec),
            loss=loss or HEAD_LOSS[spec.task],
            metrics=_metrics(spec.task) if loss is None else [],
            jit_compile=False,
        )
    return model


@contextlib.contextmanager
def seeded(seed: int) -> Iterator[None]:
    """Hold BUILD_LOCK with the global Keras/TF/numpy seeds set from ``seed``: build models and seeded
    datasets inside, so whatever is not seeded explicitly is still reproducible."""
    with BUILD_LOCK:
        keras.utils.set_random_seed(next(seed_stream(seed ^ 0x5EED)))
        yield


def _keras_shape(shape: Any) -> tuple[int | None, ...]:
    return tuple(None if d is None else int(d) for d in shape)


def describe(spec: ModelSpec) -> SpecPlan:
    """The plan for a resolved spec, confirmed by building it in Keras (no training, no compile)."""
    expected = plan(spec)
    with _DESCRIBE_LOCK:
        model = build(spec, 0, compile_model=False, initialize=False)
        built = [(_keras_shape(layer.output.shape), layer.count_params()) for layer in model.layers]
        del model
    if len(built) != len(expected.layers):
        raise RuntimeError(f"Keras built {len(built)} layers, the plan has {len(expected.layers)}")
    for (actual, params), planned in zip(built, expected.layers, strict=True):
        if actual != planned.output_shape or params != planned.params:
            raise RuntimeError(
                f"layer {planned.index} ({planned.kind}): Keras says {shape_text(actual)} with "
                f"{params} params, the plan {planned.output_shape_text} with {planned.params}"
            )
    return expected


def to_keras_bytes(model: keras.Model) -> bytes:
    with tempfile.TemporaryDirectory(prefix="lstm-save-") as folder:
        path = Path(folder) / "model.keras"
        model.save(path)
        return path.read_bytes()


def from_keras_bytes(data: bytes, spec: ModelSpec, where: str) -> keras.Model:
    """Deserialize verified bytes with safe_mode (no Lambda / arbitrary code) and check the shapes."""
    fd, temp = tempfile.mkstemp(prefix="lstm-load-", suffix=".keras")
    try:
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
        model = keras.saving.load_model(temp, compile=False, safe_mode=True)
    except Exception as exc:  # noqa: BLE001 - anything Keras refuses is a bad artifact
        raise IntegrityError(f"{where}: Keras refused the model ({type(exc).__name__}: {exc})") from exc
    finally:
        Path(temp).unlink(missing_ok=True)
    want_in = (None, spec.timesteps, spec.features)
    want_out = (None, spec.head.units)
    got_in = _keras_shape(model.input_shape)
    got_out = _keras_shape(model.output_shape)
    if got_in != want_in or got_out != want_out:
        raise IntegrityError(
            f"{where}: the model maps {shape_text(got_in)} -> {shape_text(got_out)}, its metadata says "
            f"{shape_text(want_in)} -> {shape_text(want_out)}"
        )
    return model
