"""The serving graph on the trainer's side: a Keras model's weights in plan order, and the graph checked
against Keras before it is stored.

``checked_graph`` runs the graph in ONNX Runtime and the model in Keras on the same probe and refuses
the graph (GraphMismatch) when they disagree, naming the first layer whose output diverges.
"""

from __future__ import annotations

from collections.abc import Sequence

import keras
import numpy as np
import onnxruntime

from model_service.records import ModelRecord
from model_service.serving_graph import (
    INPUT_NAME,
    LayerWeights,
    build_graph,
    graph_bytes,
    output_names,
    y_affine,
)
from model_service.spec import LayerPlan, ModelSpec, Task, plan
from service_common.errors import FailedPrecondition

# Both sides compute the model in float32; they may differ by its rounding, no more.
RTOL = ATOL = 1e-5


class GraphMismatch(FailedPrecondition):
    """The ONNX graph does not compute what the Keras model computes."""


def keras_weights(model: keras.Model, spec: ModelSpec) -> list[LayerWeights]:
    """Each layer's ``get_weights()``, in the order of ``plan(spec).layers`` (spec layers, then the head)."""
    return [list(model.get_layer(layer.name).get_weights()) for layer in plan(spec).layers]


def _session(data: bytes) -> onnxruntime.InferenceSession:
    options = onnxruntime.SessionOptions()
    options.intra_op_num_threads = 1
    return onnxruntime.InferenceSession(data, options, providers=["CPUExecutionProvider"])


def _keras_layer_outputs(record: ModelRecord, model: keras.Model, x: np.ndarray) -> list[np.ndarray]:
    """Every layer's output (float64) for raw-unit ``x``, the x scaler applied as Predict applies it;
    the last is the head's, in the model's output space."""
    if record.x_scaler is not None:
        x = record.x_scaler.transform(x)
    out = np.asarray(x, dtype=np.float32)
    outputs = []
    for layer in plan(record.spec).layers:
        out = np.asarray(model.get_layer(layer.name)(out, training=False))
        outputs.append(out.astype(np.float64))
    return outputs


def _head_space(record: ModelRecord, answers: dict[str, np.ndarray]) -> np.ndarray:
    """The graph's answer in the model's output space, before the y scaler is inverted. Comparing
    there keeps the tolerance meaningful whatever the y scaler's units; applying the scaler's forward
    affine form to ``values`` undoes the graph's inverse up to float64 rounding, far below float32's."""
    if record.spec.task is not Task.REGRESSION:
        return answers["probabilities"]
    values = answers["values"]
    affine = y_affine(record)
    return values if affine is None else values * affine[0] + affine[1]


def _labels_consistent(task: Task, answers: dict[str, np.ndarray]) -> bool:
    """Whether ``labels`` are what Predict derives from the graph's own probabilities."""
    if task is Task.REGRESSION:
        return True
    p = answers["probabilities"]
    want = (p[:, 0] >= 0.5) if task is Task.BINARY else np.argmax(p, axis=1)
    labels = answers["labels"]
    return labels.dtype == np.int64 and np.array_equal(labels, want.astype(np.int64))


def _worst(got: np.ndarray, want: np.ndarray) -> str | None:
    """None when ``got`` agrees with ``want`` within RTOL and ATOL; else the worst disagreement."""
    if got.shape != want.shape:
        return f"shape {got.shape} against Keras' {want.shape}"
    close = np.isclose(got, want, rtol=RTOL, atol=ATOL, equal_nan=True)
    if close.all():
        return None
    diff = np.where(close, 0.0, np.abs(got - want))
    diff = np.where(np.isnan(diff), np.inf, diff)
    at = np.unravel_index(int(np.argmax(diff)), diff.shape)
    return f"difference {diff[at]:.3g} at {tuple(int(i) for i in at)} (graph {got[at]:.6g}, Keras {want[at]:.6g})"


def _describe(layer: LayerPlan) -> str:
    units = layer.output_shape[-1]
    if layer.kind == "lstm":
        sequences = ", return_sequences" if layer.return_sequences else ""
        return f"layer {layer.index} lstm({units}, {layer.activation}{sequences})"
    if layer.kind in ("dense", "head"):
        return f"layer {layer.index} {layer.kind}({units}, {layer.activation})"
    return f"layer {layer.index} {layer.kind} -> {layer.output_shape_text}"


def _first_divergence(
    record: ModelRecord, weights: Sequence[LayerWeights], x: np.ndarray, keras_outputs: Sequence[np.ndarray]
) -> str:
    """Which layer's output first disagrees, from a graph that also outputs every layer's."""
    tapped = build_graph(record, weights, tap_layers=True)
    layers = plan(record.spec).layers
    names = [f"layer_{layer.index}" for layer in layers]
    taps = _session(tapped.SerializeToString()).run(names, {INPUT_NAME: x})
    for layer, tap, want in zip(layers, taps, keras_outputs, strict=True):
        worst = _worst(tap.astype(np.float64), want)
        if worst is not None:
            return f"first diverging: {_describe(layer)}, {worst}"
    return "no single layer's output diverges beyond the tolerance"


def checked_graph(
    record: ModelRecord, model: keras.Model, probe_x: np.ndarray, metadata_json: str = ""
) -> bytes:
    """The serving graph of ``record`` with ``model``'s weights (graph_bytes), after checking that on
    ``probe_x`` (raw units, (batch, timesteps, features)) it answers what Keras answers within RTOL and
    ATOL in the model's output space. GraphMismatch naming the model's layers and the worst difference
    otherwise."""
    weights = keras_weights(model, record.spec)
    data = graph_bytes(record, weights, metadata_json)
    x = np.asarray(probe_x, dtype=np.float64)
    names = list(output_names(record.spec.task))
    answers = dict(zip(names, _session(data).run(names, {INPUT_NAME: x}), strict=True))
    keras_outputs = _keras_layer_outputs(record, model, x)
    worst = _worst(_head_space(record, answers), keras_outputs[-1])
    if worst is None and _labels_consistent(record.spec.task, answers):
        return data
    worst = worst or "labels that do not follow from the graph's probabilities"
    stack = " -> ".join(_describe(layer) for layer in plan(record.spec).layers)
    raise GraphMismatch(
        f"the ONNX serving graph of {record.model_id!r} v{record.version} disagrees with Keras on the probe "
        f"(rtol {RTOL:g}, atol {ATOL:g} in the model's output space): worst {worst}; "
        f"{_first_divergence(record, weights, x, keras_outputs)}; model: {stack}"
    )
