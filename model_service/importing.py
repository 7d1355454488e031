"""A Keras model trained elsewhere (.keras) in as a new version, when it fits the service's contract.

What fits: a Sequential or a chain-shaped Functional model over an input (None, timesteps, features),
of the layer kinds a spec can declare (spec.py: LSTM, Dense, Reshape, Dropout), ending in the output
head the caller declares (REGRESSION: a linear Dense(outputs); BINARY: Dense(1, sigmoid); MULTICLASS:
Dense(n_classes, softmax)). The checks run in this order, each refusal saying what was expected and
what came:

1. the bytes are a Keras archive (a zip with config.json and model.weights.h5);
2. its config, read as JSON before anything is deserialized, names only allowed layer kinds and only
   Keras' own classes (no Lambda, no registered custom objects, no other modules);
3. Keras loads it with safe_mode=True;
4. the input is rank 3 with fixed timesteps and features (and those the caller declared, if any), every
   layer's settings are ones the served model reproduces, and the head matches the declared task;
5. the spec read off it is completed like a declared one (spec.with_defaults: shapes, sizes, parameter count);
6. the service builds its own model from that spec (builder.build), copies the weights over, and the
   two must compute the same outputs on a probe batch (this catches branching or shared layers).

What is stored is the service-built model, so an imported version is served exactly like a trained
one. Domain code: no grpc.
"""

from __future__ import annotations

import contextlib
import io
import json
import os
import tempfile
import zipfile
from collections.abc import Iterator
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, Protocol

import keras
import numpy as np

from model_service import builder
from model_service.affine_scalers import AffineScaler, ScalerRef
from model_service.cost import Admission
from model_service.import_request import ImportRequest, estimate
from model_service.model_store import check_model_id
from model_service.records import ORIGIN_IMPORT, ModelRecord
from model_service.spec import (
    ACTIVATIONS,
    HEAD_ACTIVATION,
    Dense,
    Dropout,
    Head,
    LayerSpec,
    Lstm,
    ModelSpec,
    Reshape,
    Task,
    shape_text,
    with_defaults,
)
from model_service.training.graph import serving_graph
from model_service.training.request import Publisher
from service_common.errors import InvalidArgument, echo

ARCHIVE_FILES = ("config.json", "model.weights.h5")
MODEL_CLASSES = frozenset({"Sequential", "Functional"})
LAYER_CLASSES = {"LSTM": "lstm", "Dense": "dense", "Reshape": "reshape", "Dropout": "dropout"}
ALLOWED_KINDS = ", ".join(["InputLayer", *LAYER_CLASSES])
PROBE_ROWS = 4
PROBE_RTOL = 1e-4
PROBE_ATOL = 1e-5


@dataclass(frozen=True)
class Imported:
    spec: ModelSpec  # resolved
    keras_bytes: bytes  # the service-built model with the imported weights
    model: keras.Model  # the same model, to make its serving graph from


# ---- 1, 2: the archive and its config, before anything is deserialized --------------------------


def _config(data: bytes) -> dict[str, Any]:
    if not data:
        raise InvalidArgument("the import has no data: send the .keras archive's bytes after the header")
    if not zipfile.is_zipfile(io.BytesIO(data)):
        raise InvalidArgument(
            f"not a Keras archive: expected a .keras file (a zip holding {', '.join(ARCHIVE_FILES)}), got "
            f"{len(data)} bytes starting {echo(data[:8])}"
        )
    with zipfile.ZipFile(io.BytesIO(data)) as archive:
        names = set(archive.namelist())
        missing = [name for name in ARCHIVE_FILES if name not in names]
        if missing:
            raise InvalidArgument(
                f"not a Keras archive: the zip has no {', '.join(missing)} (it holds "
                f"{echo(sorted(names))}); save the model with model.save('model.keras')"
            )
        try:
            config = json.loads(archive.read("config.json"))
        except (ValueError, zipfile.BadZipFile) as exc:
            raise InvalidArgument(f"not a Keras archive: config.json is not readable JSON ({exc})") from None
    if not isinstance(config, dict):
        raise InvalidArgument("not a Keras archive: config.json is not a JSON object")
    return config


def _objects(node: Any, where: str) -> Iterator[tuple[str, dict[str, Any]]]:
    """Every serialized Keras object nested in ``node`` (dicts naming a class), with where it is."""
    if isinstance(node, dict):
        if "class_name" in node:
            yield where, node
        for key, value in node.items():
            if key != "inbound_nodes":  # a Functional model's wiring: references to tensors, no classes
                yield from _objects(value, f"{where}.{key}")
    elif isinstance(node, list):
        for index, value in enumerate(node):
            yield from _objects(value, f"{where}[{index}]")


def check_config(config: dict[str, Any]) -> None:
    """Refuse an archive whose config names anything but allowed layers and Keras' own classes."""
    model_class = config.get("class_name")
    if model_class not in MODEL_CLASSES:
        raise InvalidArgument(
            f"the archive holds a {echo(str(model_class))} model; expected a Sequential or Functional model"
        )
    layers = (config.get("config") or {}).get("layers")
    if not isinstance(layers, list) or not layers:
        raise InvalidArgument("the model's config lists no layers")
    for index, layer in enumerate(layers):
        kind = layer.get("class_name") if isinstance(layer, dict) else None
        if kind != "InputLayer" and kind not in LAYER_CLASSES:
            name = layer.get("config", {}).get("name", "") if isinstance(layer, dict) else ""
            why = " (it runs arbitrary Python code)" if kind == "Lambda" else ""
            raise InvalidArgument(
                f"layer {index} {echo(str(name))} is a {echo(str(kind))}{why}; the model service serves only "
                f"these layer kinds: {ALLOWED_KINDS}"
            )
    # compile_config is not looked at: the archive is loaded with compile=False.
    for where, node in _objects(layers, "layers"):
        module = str(node.get("module") or "")
        if node.get("registered_name") or not (module == "keras" or module.startswith("keras.")):
            raise InvalidArgument(
                f"{where} names {echo(str(node.get('class_name')))} from {echo(module or 'no module')}; only "
                "Keras' own built-in classes are accepted (no custom or registered objects)"
            )


# ---- 3: loading --------------------------------------------------------------------------------


def _load(data: bytes) -> keras.Model:
    fd, temp = tempfile.mkstemp(prefix="lstm-import-", suffix=".keras")
    try:
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
        return keras.saving.load_model(temp, compile=False, safe_mode=True)
    except Exception as exc:  # noqa: BLE001 - whatever Keras refuses is the caller's archive
        raise InvalidArgument(
            f"Keras could not load the archive: {type(exc).__name__}: {echo(str(exc), 200)}"
        ) from None
    finally:
        Path(temp).unlink(missing_ok=True)


# ---- 4, 5: the contract and the spec -----------------------------------------------------------


def _activation(config: dict[str, Any], where: str) -> str:
    name = config.get("activation")
    if not isinstance(name, str) or name not in ACTIVATIONS:
        raise InvalidArgument(
            f"{where}: activation {echo(str(name))} is not one the service serves; expected one of "
            f"{', '.join(sorted(ACTIVATIONS))}"
        )
    return name


def _require(config: dict[str, Any], where: str, **expected: Any) -> None:
    for key, want in expected.items():
        if config.get(key, want) != want:
            raise InvalidArgument(
                f"{where}: {key}={echo(config.get(key))} is not supported; the served model has {key}={want!r}"
            )


def _layer_spec(index: int, layer: keras.layers.Layer) -> LayerSpec:
    config = layer.get_config()
    where = f"layer {index} ({layer.name!r}, {type(layer).__name__})"
    if isinstance(layer, keras.layers.LSTM):
        # Dropout inside an LSTM only acts while training: nothing to reproduce when serving.
        _require(
            config,
            where,
            recurrent_activation="sigmoid",
            use_bias=True,
            go_backwards=False,
            stateful=False,
            return_state=False,
        )
        return Lstm(int(config["units"]), _activation(config, where), bool(config["return_sequences"]))
    if isinstance(layer, keras.layers.Dense):
        _require(config, where, use_bias=True)
        return Dense(int(config["units"]), _activation(config, where))
    if isinstance(layer, keras.layers.Reshape):
        return Reshape(tuple(int(d) for d in config["target_shape"]))
    if isinstance(layer, keras.layers.Dropout):
        _require(config, where, noise_shape=None)
        return Dropout(float(config["rate"]))
    raise InvalidArgument(f"{where}: the model service serves only these layer kinds: {ALLOWED_KINDS}")


def _input_shape(model: keras.Model, request: ImportRequest) -> tuple[int, int]:
    if len(model.inputs) != 1:
        raise InvalidArgument(
            f"the model has {len(model.inputs)} inputs; expected one, (None, timesteps, features)"
        )
    shape = tuple(model.inputs[0].shape)
    if len(shape) != 3 or shape[1] is None or shape[2] is None:
        raise InvalidArgument(
            f"the model's input is {shape_text(shape)} (rank {len(shape)}); expected rank 3 "
            "(None, timesteps, features) with timesteps and features fixed"
        )
    timesteps, features = int(shape[1]), int(shape[2])
    declared = (request.timesteps or timesteps, request.features or features)
    if declared != (timesteps, features):
        raise InvalidArgument(
            f"the model's input is {shape_text(shape)}; the import declares (None, {declared[0]}, {declared[1]})"
        )
    return timesteps, features


def _head(layer: keras.layers.Layer, head: Head, index: int) -> None:
    if head.task is None:
        raise InvalidArgument("header.head.task is required: REGRESSION, BINARY or MULTICLASS")
    activation = HEAD_ACTIVATION[head.task]
    want = f"Dense({head.units}, {activation})"
    if not isinstance(layer, keras.layers.Dense):
        raise InvalidArgument(
            f"the last layer ({index}, {layer.name!r}) is a {type(layer).__name__}; a {head.task.value} model "
            f"must end in the head {want}"
        )
    config = layer.get_config()
    got = f"Dense({config['units']}, {config.get('activation')})"
    if int(config["units"]) != head.units or config.get("activation") != activation:
        raise InvalidArgument(
            f"the last layer ({index}, {layer.name!r}) is {got}; a {head.task.value} model with this head ends in {want}"
        )
    _require(config, f"the head ({layer.name!r})", use_bias=True)


def spec_of(model: keras.Model, request: ImportRequest) -> ModelSpec:
    """The resolved spec the model matches; InvalidArgument naming the first thing that does not fit."""
    timesteps, features = _input_shape(model, request)
    layers = [layer for layer in model.layers if not isinstance(layer, keras.layers.InputLayer)]
    if not layers:
        raise InvalidArgument("the model has no layers besides its input")
    _head(layers[-1], request.head, len(layers) - 1)
    body = tuple(_layer_spec(index, layer) for index, layer in enumerate(layers[:-1]))
    return with_defaults(ModelSpec(timesteps, features, body, request.head, request.optimizer))


def _check_scalers(spec: ModelSpec, request: ImportRequest) -> None:
    if request.x_scaler is not None and request.x_scaler.sample_shape != (spec.timesteps, spec.features):
        ref = request.x_scaler.ref
        raise InvalidArgument(
            f"x_scaler {ref.scaler_id!r} v{ref.version} was fitted on samples of shape "
            f"{list(request.x_scaler.sample_shape)}; the model takes [{spec.timesteps}, {spec.features}]"
        )
    if request.y_scaler is not None:
        ref = request.y_scaler.ref
        if spec.task is not Task.REGRESSION:
            raise InvalidArgument(
                f"y_scaler is for REGRESSION only; a {spec.task.value} model predicts class labels"
            )
        if request.y_scaler.sample_shape != (spec.head.units,):
            raise InvalidArgument(
                f"y_scaler {ref.scaler_id!r} v{ref.version} was fitted on samples of shape "
                f"{list(request.y_scaler.sample_shape)}; the model outputs [{spec.head.units}]"
            )


# ---- 6: the service's own model, with the imported weights -------------------------------------


def _rebuilt(spec: ModelSpec, model: keras.Model) -> keras.Model:
    ours = builder.build(spec, 0, compile_model=False, initialize=False)
    theirs = [layer for layer in model.layers if not isinstance(layer, keras.layers.InputLayer)]
    for mine, source in zip(ours.layers, theirs, strict=True):
        mine.set_weights(source.get_weights())
    probe = (
        np.random.default_rng(0).normal(size=(PROBE_ROWS, spec.timesteps, spec.features)).astype(np.float32)
    )
    want = keras.ops.convert_to_numpy(model(probe, training=False))
    got = keras.ops.convert_to_numpy(ours(probe, training=False))
    if not np.allclose(got, want, rtol=PROBE_RTOL, atol=PROBE_ATOL):
        raise InvalidArgument(
            "the model does not compute what the chain of its layers computes (largest difference "
            f"{float(np.max(np.abs(got - want))):.3g} on a probe batch): branches, skip connections and "
            "shared layers are not supported; import a plain stack"
        )
    return ours


def import_model(request: ImportRequest) -> Imported:
    """Check the archive against the contract and convert it (blocking work: run it off the event loop)."""
    check_config(_config(request.data))
    model = _load(request.data)
    spec = spec_of(model, request)
    _check_scalers(spec, request)
    ours = _rebuilt(spec, model)
    return Imported(spec, builder.to_keras_bytes(ours), ours)


# ---- the import as a whole: scalers, checks, a new signed version --------------------------------


class ScalerSource(Protocol):
    """Where an import's scaler references are looked up (the scaler service, scaler_gateway.py)."""

    def get(self, ref: ScalerRef) -> AffineScaler: ...


class ModelImporter:
    """Imports archives as new versions of the publisher's store, within the memory budget (in the
    trainer process: Keras reads the archive, and the version's serving graph is made there)."""

    def __init__(self, registry: Publisher, scalers: ScalerSource, admission: Admission | None) -> None:
        self._registry = registry
        self._scalers = scalers
        self._admission = admission

    def run(
        self, request: ImportRequest, x_ref: ScalerRef | None = None, y_ref: ScalerRef | None = None
    ) -> ModelRecord:
        """Check and convert the archive, then commit it as a new version (signed, atomic) with its
        checked serving graph."""
        if request.model_id:
            check_model_id(request.model_id)
        if y_ref is not None and request.head.task is not Task.REGRESSION:
            raise InvalidArgument(
                f"y_scaler is for REGRESSION only; a {request.head.task} model predicts class labels"
            )
        held = (
            self._admission.reserve(estimate(len(request.data)), "import a smaller model")
            if self._admission is not None
            else contextlib.nullcontext()
        )
        with held:
            request = replace(
                request,
                x_scaler=self._scalers.get(x_ref) if x_ref is not None else None,
                y_scaler=self._scalers.get(y_ref) if y_ref is not None else None,
            )
            imported = import_model(request)
        record = self._registry.reserve(request.model_id, imported.spec, 0)
        try:
            record = replace(
                record, x_scaler=request.x_scaler, y_scaler=request.y_scaler, origin=ORIGIN_IMPORT
            )
            graph = serving_graph(record, imported.model)
            self._registry.commit(record, imported.keras_bytes, graph)
        except BaseException:
            self._registry.release(record.model_id, record.version)
            raise
        return record
