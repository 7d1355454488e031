"""A version's ONNX serving graph, written straight from its spec and weights: no TensorFlow, no tf2onnx.

The graph answers what Predict answers (serving.py): it takes ``x`` in raw units, float64 (batch,
timesteps, features), applies the x scaler's affine form in float64 (clip included), runs the layers in
float32 as Keras does, and gives ``values`` in original units (the y scaler inverted in float64) for
regression, or ``probabilities`` and int64 ``labels`` for classification.

LSTMs become ONNX's ``LSTM`` operator where ONNX Runtime's CPU kernel computes the layer's activation
exactly as Keras does (LSTM_OP_ACTIVATIONS, each checked against Keras by the tests); any other
activation gets the recurrence written out from elementary operators, unrolled over the spec's fixed
timesteps for short windows and as a ``Scan`` for long ones, so the graph stays small.

Tensors between layers are time-major (timesteps first) after an ``LSTM`` operator, which needs that
layout; only a Reshape, which depends on the element order, is given them batch-major again. Dense and
the written-out recurrence work on either layout.

Imports numpy, onnx and the project's spec/records/scalers only: serving processes load it without
TensorFlow.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from model_service.affine_scalers import PER_COLUMN, AffineScaler
from model_service.records import ModelRecord
from model_service.spec import LayerPlan, Task, plan

ONNX_OPSET = 17
# The IR version that introduced opset 17: the oldest runtime that can read the opset can read the file.
ONNX_IR_VERSION = 8
INPUT_NAME = "x"
METADATA_KEY = "lstm_stack"
PRODUCER_NAME = "lstm-stack"
# Windows up to this many timesteps are unrolled; longer ones step in a Scan (graph size grows with T).
UNROLL_MAX_TIMESTEPS = 64

LayerWeights = list[np.ndarray]

FLOAT = TensorProto.FLOAT
DOUBLE = TensorProto.DOUBLE
INT64 = TensorProto.INT64


def output_names(task: Task) -> tuple[str, ...]:
    return ("values",) if task is Task.REGRESSION else ("labels", "probabilities")


class _Graph:
    """Nodes and initializers under construction, with unique value names. A child (a Scan body) has
    nodes of its own but puts its constants in the outermost graph, which its nodes may read."""

    def __init__(self, parent: _Graph | None = None) -> None:
        self.nodes: list[onnx.NodeProto] = []
        self._root: _Graph = parent._root if parent is not None else self
        self.initializers: list[TensorProto] = []
        self._count = 0

    def fresh(self, hint: str) -> str:
        root = self._root
        root._count += 1
        return f"{hint}_{root._count}"

    def const(self, array: np.ndarray, hint: str = "c") -> str:
        name = self.fresh(hint)
        self._root.initializers.append(numpy_helper.from_array(np.ascontiguousarray(array), name))
        return name

    def f32(self, array: np.ndarray | float, hint: str = "c") -> str:
        return self.const(np.asarray(array, dtype=np.float32), hint)

    def i64(self, values: Sequence[int], hint: str = "shape") -> str:
        return self.const(np.asarray(values, dtype=np.int64), hint)

    def ops(self, op_type: str, inputs: Sequence[str], outputs: int, **attrs: Any) -> list[str]:
        names = [self.fresh(op_type.lower()) for _ in range(outputs)]
        self.nodes.append(helper.make_node(op_type, list(inputs), names, name=names[0], **attrs))
        return names

    def op(self, op_type: str, inputs: Sequence[str], **attrs: Any) -> str:
        return self.ops(op_type, inputs, 1, **attrs)[0]


# ---- activations, exactly as Keras 3 defines them (keras/src/activations, TensorFlow backend) ----

Activation = Callable[[_Graph, str], str]


def _unary(op_type: str, **attrs: object) -> Activation:
    return lambda g, x: g.op(op_type, [x], **attrs)


def _times(inner: Activation) -> Activation:
    """x * inner(x): swish/silu, hard_swish/hard_silu, mish."""
    return lambda g, x: g.op("Mul", [x, inner(g, x)])


def _clip(low: float, high: float) -> Activation:
    return lambda g, x: g.op("Clip", [x, g.f32(low, "low"), g.f32(high, "high")])


def _log_sigmoid(g: _Graph, x: str) -> str:
    # As tf.math.log_sigmoid: -softplus(-x), which neither overflows nor loses small values.
    return g.op("Neg", [g.op("Softplus", [g.op("Neg", [x])])])


def _gelu(g: _Graph, x: str) -> str:
    # Keras 3's default approximate=False: 0.5 * x * (1 + erf(x / sqrt(2))).
    erf = g.op("Erf", [g.op("Mul", [x, g.f32(1 / math.sqrt(2))])])
    return g.op("Mul", [g.op("Mul", [x, g.f32(0.5)]), g.op("Add", [erf, g.f32(1.0)])])


def _squareplus(g: _Graph, x: str) -> str:
    # Keras' default b=4: (x + sqrt(x**2 + b)) / 2.
    root = g.op("Sqrt", [g.op("Add", [g.op("Mul", [x, x]), g.f32(4.0)])])
    return g.op("Div", [g.op("Add", [x, root]), g.f32(2.0)])


def _hard_sigmoid(g: _Graph, x: str) -> str:
    # Keras 3: relu6(x + 3) / 6 (HardSigmoid's x / 6 + 0.5 rounds differently by an ulp at most).
    return g.op("Div", [_clip(0.0, 6.0)(g, g.op("Add", [x, g.f32(3.0)])), g.f32(6.0)])


def _mish(g: _Graph, x: str) -> str:
    return g.op("Tanh", [g.op("Softplus", [x])])


ACTIVATION_OPS: dict[str, Activation] = {
    "tanh": _unary("Tanh"),
    "relu": _unary("Relu"),
    "elu": _unary("Elu", alpha=1.0),
    "selu": _unary("Selu"),  # ONNX's default alpha and gamma are TensorFlow's constants
    "celu": _unary("Celu", alpha=1.0),
    "sigmoid": _unary("Sigmoid"),
    "hard_sigmoid": _hard_sigmoid,
    "log_sigmoid": _log_sigmoid,
    "linear": lambda g, x: x,
    "softplus": _unary("Softplus"),
    "softsign": _unary("Softsign"),
    "swish": _times(_unary("Sigmoid")),
    "silu": _times(_unary("Sigmoid")),
    "hard_swish": _times(_hard_sigmoid),
    "hard_silu": _times(_hard_sigmoid),
    "gelu": _gelu,
    "mish": _times(_mish),
    "exponential": _unary("Exp"),
    "leaky_relu": _unary("LeakyRelu", alpha=0.2),  # Keras 3's default negative_slope
    "relu6": _clip(0.0, 6.0),
    "hard_tanh": _clip(-1.0, 1.0),
    "squareplus": _squareplus,
}


@dataclass(frozen=True)
class _OpActivation:
    """An activation as the ``LSTM`` operator names it, with its alpha and beta where it has them."""

    name: str
    alpha: float | None = None
    beta: float | None = None


# Activations ONNX Runtime's CPU LSTM kernel applies exactly as Keras does (the tests compare each with
# Keras); every other one gets its recurrence written out.
LSTM_OP_ACTIVATIONS: dict[str, _OpActivation] = {
    "tanh": _OpActivation("Tanh"),
    "relu": _OpActivation("Relu"),
    "sigmoid": _OpActivation("Sigmoid"),
    "softsign": _OpActivation("Softsign"),
    "softplus": _OpActivation("Softplus"),
    "elu": _OpActivation("Elu", 1.0),
    "linear": _OpActivation("Affine", 1.0, 0.0),
    "leaky_relu": _OpActivation("LeakyRelu", 0.2),
    "hard_sigmoid": _OpActivation("HardSigmoid", 1 / 6, 0.5),
}


# ---- weights ----


def _expected_shapes(layer: LayerPlan, features: int) -> list[tuple[int, ...]]:
    units = layer.output_shape[-1] or 0
    if layer.kind == "lstm":
        return [(features, 4 * units), (units, 4 * units), (4 * units,)]
    if layer.kind in ("dense", "head"):
        return [(features, units), (units,)]
    return []


def _checked(layers: Sequence[LayerPlan], input_features: int, weights: Sequence[LayerWeights]) -> None:
    """ValueError naming the layer (index, kind, units) and the shapes when a weight does not fit."""
    if len(weights) != len(layers):
        raise ValueError(
            f"expected weights for {len(layers)} layers (spec layers, then the head), got {len(weights)}"
        )
    features = input_features
    for layer, given in zip(layers, weights, strict=True):
        want = _expected_shapes(layer, features)
        got = [tuple(np.shape(w)) for w in given]
        if got != want:
            units = layer.output_shape[-1]
            raise ValueError(
                f"layer {layer.index} ({layer.kind}, {units} units, {layer.name}): expected weight shapes "
                f"{want}, got {got}"
            )
        features = layer.output_shape[-1] or 0


def _keras_gates(array: np.ndarray, order: Sequence[int]) -> np.ndarray:
    """The last axis of a Keras LSTM weight (blocks i, f, c, o) with its four blocks in ``order``."""
    blocks = np.split(np.asarray(array, dtype=np.float32), 4, axis=-1)
    return np.concatenate([blocks[k] for k in order], axis=-1)


ONNX_GATE_ORDER = (0, 3, 1, 2)  # i, o, f, c
# The written-out recurrence: the three sigmoid gates first (i, f, o), then the cell input c.
UNROLLED_GATE_ORDER = (0, 1, 3, 2)


# ---- tensors as they flow ----


@dataclass(frozen=True)
class _Tensor:
    name: str
    rank: int  # the batch dimension included
    time_major: bool = False  # 3-D only: (timesteps, batch, features)


def _batch_major(g: _Graph, t: _Tensor) -> _Tensor:
    if not t.time_major:
        return t
    return _Tensor(g.op("Transpose", [t.name], perm=[1, 0, 2]), t.rank)


def _time_major(g: _Graph, t: _Tensor) -> _Tensor:
    if t.time_major:
        return t
    return _Tensor(g.op("Transpose", [t.name], perm=[1, 0, 2]), t.rank, True)


def _softmax(g: _Graph, x: str) -> str:
    # The multiclass head's activation, over its last axis as Keras applies it.
    return g.op("Softmax", [x], axis=-1)


def _dense(g: _Graph, t: _Tensor, weights: LayerWeights, activation: str) -> _Tensor:
    # MatMul broadcasts over every leading axis, so a Dense on sequences works in either layout.
    kernel, bias = (np.asarray(w, dtype=np.float32) for w in weights)
    out = g.op("Add", [g.op("MatMul", [t.name, g.const(kernel, "kernel")]), g.const(bias, "bias")])
    activate = _softmax if activation == "softmax" else ACTIVATION_OPS[activation]
    out = activate(g, out)
    return _Tensor(out, t.rank, t.time_major)


def _reshape(g: _Graph, t: _Tensor, layer: LayerPlan) -> _Tensor:
    t = _batch_major(g, t)
    target = [-1, *(d or 0 for d in layer.output_shape[1:])]
    return _Tensor(g.op("Reshape", [t.name, g.i64(target)]), len(layer.output_shape))


def _lstm_op(
    g: _Graph, t: _Tensor, weights: LayerWeights, units: int, sequences: bool, act: _OpActivation
) -> _Tensor:
    kernel, recurrent, bias = weights
    w = g.const(_keras_gates(kernel, ONNX_GATE_ORDER).T[np.newaxis], "W")
    r = g.const(_keras_gates(recurrent, ONNX_GATE_ORDER).T[np.newaxis], "R")
    b = g.const(
        np.concatenate([_keras_gates(bias, ONNX_GATE_ORDER), np.zeros(4 * units, np.float32)])[np.newaxis],
        "B",
    )
    t = _time_major(g, t)
    names = ["Sigmoid", act.name, act.name]
    attrs: dict[str, object] = {"hidden_size": units, "activations": names}
    # Runtimes read these lists two ways: ONNX Runtime gives each activation that takes a parameter
    # the next value (Sigmoid takes none), others index them by position. Three equal values mean
    # the same under both.
    if act.alpha is not None:
        attrs["activation_alpha"] = [act.alpha] * 3
    if act.beta is not None:
        attrs["activation_beta"] = [act.beta] * 3
    y, y_h = g.ops("LSTM", [t.name, w, r, b], 2, **attrs)
    if sequences:  # Y is (timesteps, directions, batch, units)
        return _Tensor(g.op("Squeeze", [y, g.i64([1], "axes")]), 3, True)
    return _Tensor(g.op("Squeeze", [y_h, g.i64([0], "axes")]), 2)


def _lstm_step(g: _Graph, z: str, c: str | None, units: int, activation: str) -> tuple[str, str]:
    """One step of the recurrence from the gate pre-activations ``z`` (i, f, o, c blocks); c None at
    the first step (zero state). Returns (h, c)."""
    act = ACTIVATION_OPS[activation]
    gates, candidate = g.ops("Split", [z, g.i64([3 * units, units], "split")], 2, axis=-1)
    i, f, o = g.ops("Split", [g.op("Sigmoid", [gates])], 3, axis=-1)
    new = g.op("Mul", [i, act(g, candidate)])
    c_next = new if c is None else g.op("Add", [g.op("Mul", [f, c]), new])
    return g.op("Mul", [o, act(g, c_next)]), c_next


def _unrolled(g: _Graph, xw: str, r: str, steps: int, units: int, activation: str) -> list[str]:
    """Every step's h (batch, units) from the batch-major gate inputs ``xw`` (batch, steps, 4 units).
    Each step is 2-D so that h @ recurrent + its gate inputs is one Gemm."""
    flat = g.op("Reshape", [xw, g.i64([-1, steps * 4 * units])])
    parts = (
        g.ops("Split", [flat, g.i64([4 * units] * steps, "split")], steps, axis=1) if steps > 1 else [flat]
    )
    h: str | None = None
    c: str | None = None
    outputs = []
    for part in parts:
        z = part if h is None else g.op("Gemm", [h, r, part])
        h, c = _lstm_step(g, z, c, units, activation)
        outputs.append(h)
    return outputs


def _scanned(g: _Graph, xw: str, r: str, units: int, activation: str, sequences: bool) -> str:
    """The recurrence as a Scan over the time axis of the batch-major gate inputs ``xw``: every step's
    h (batch, steps, units), or the last (batch, units)."""
    body = _Graph(g)
    h_in, c_in, z_in = g.fresh("h_in"), g.fresh("c_in"), g.fresh("z_in")
    z = body.op("Gemm", [h_in, r, z_in])
    h, c = _lstm_step(body, z, c_in, units, activation)
    h_seq = body.op("Identity", [h])
    info = [helper.make_tensor_value_info(n, FLOAT, None) for n in (h_in, c_in, z_in)]
    outs = [helper.make_tensor_value_info(n, FLOAT, None) for n in (h, c, h_seq)]
    graph = helper.make_graph(body.nodes, g.fresh("lstm_body"), info, outs)
    batch = g.op("Gather", [g.op("Shape", [xw]), g.i64([0], "batch_axis")], axis=0)
    shape = g.op("Concat", [batch, g.i64([units], "units")], axis=0)
    zeros = g.op("ConstantOfShape", [shape], value=numpy_helper.from_array(np.zeros(1, np.float32)))
    last_h, _, all_h = g.ops(
        "Scan",
        [zeros, zeros, xw],
        3,
        body=graph,
        num_scan_inputs=1,
        scan_input_axes=[1],
        scan_output_axes=[1],
    )
    return all_h if sequences else last_h


def _lstm_written(
    g: _Graph, t: _Tensor, weights: LayerWeights, units: int, steps: int, sequences: bool, activation: str
) -> _Tensor:
    kernel, recurrent, bias = weights
    w = g.const(_keras_gates(kernel, UNROLLED_GATE_ORDER), "kernel")
    r = g.const(_keras_gates(recurrent, UNROLLED_GATE_ORDER), "recurrent")
    b = g.const(_keras_gates(bias, UNROLLED_GATE_ORDER), "bias")
    # One MatMul of the whole sequence against the kernel; only h @ recurrent is left to each step.
    t = _batch_major(g, t)
    xw = g.op("Add", [g.op("MatMul", [t.name, w]), b])
    if steps > UNROLL_MAX_TIMESTEPS:
        out = _scanned(g, xw, r, units, activation, sequences)
        return _Tensor(out, 3) if sequences else _Tensor(out, 2)
    hs = _unrolled(g, xw, r, steps, units, activation)
    if not sequences:
        return _Tensor(hs[-1], 2)
    every = g.op("Concat", hs, axis=1) if len(hs) > 1 else hs[0]
    return _Tensor(g.op("Reshape", [every, g.i64([-1, steps, units])]), 3)


def _lstm(
    g: _Graph, t: _Tensor, weights: LayerWeights, layer: LayerPlan, steps: int, written: bool
) -> _Tensor:
    units = layer.output_shape[-1] or 0
    op_activation = LSTM_OP_ACTIVATIONS.get(layer.activation)
    if op_activation is not None and not written:
        return _lstm_op(g, t, weights, units, layer.return_sequences, op_activation)
    return _lstm_written(g, t, weights, units, steps, layer.return_sequences, layer.activation)


# ---- scalers ----


def _x_constants(scaler: AffineScaler) -> tuple[np.ndarray, np.ndarray]:
    """scale and offset broadcasting over (batch, timesteps, features) as AffineScaler applies them:
    a PER_COLUMN scaler of 2-D samples has one column per (timestep, feature) of the flattened sample."""
    scale, offset = np.asarray(scaler.scale, np.float64), np.asarray(scaler.offset, np.float64)
    if len(scaler.sample_shape) == 2 and scaler.layout == PER_COLUMN:
        size = math.prod(scaler.sample_shape)
        shape = (1, *scaler.sample_shape)
        scale, offset = (np.broadcast_to(a, (1, size)).reshape(shape) for a in (scale, offset))
    return scale, offset


def _x_scaled(g: _Graph, x: str, scaler: AffineScaler) -> str:
    scale, offset = _x_constants(scaler)
    out = g.op("Add", [g.op("Mul", [x, g.const(scale, "x_scale")]), g.const(offset, "x_offset")])
    if scaler.clip is not None:
        low, high = (np.asarray(v, np.float64) for v in scaler.clip)
        out = g.op("Clip", [out, g.const(low, "x_low"), g.const(high, "x_high")])
    return out


def y_affine(record: ModelRecord) -> tuple[np.ndarray, np.ndarray] | None:
    """(scale, offset) per head output with values = (head - offset) / scale, the inverse y scaling
    Predict applies (zero scales taken as 1, as AffineScaler does); None without a y scaler. A quantile
    head has ``levels`` outputs per value and the y scaler one column per value: each level of a value
    is unscaled as that value (ServedModel._unscaled)."""
    scaler = record.y_scaler
    if scaler is None or record.spec.task is not Task.REGRESSION:
        return None
    levels = record.forecast.levels if record.forecast else 1
    values = record.spec.head.units // levels
    safe = np.where(np.asarray(scaler.scale) == 0, 1.0, np.asarray(scaler.scale, np.float64))
    offset = np.asarray(scaler.offset, np.float64)
    per_value = (np.broadcast_to(a, (1, values)).reshape(values) for a in (safe, offset))
    scale_out, offset_out = (np.repeat(a, levels) for a in per_value)
    return scale_out, offset_out


def _y_unscaled(g: _Graph, y: str, affine: tuple[np.ndarray, np.ndarray]) -> str:
    scale, offset = affine
    return g.op("Div", [g.op("Sub", [y, g.const(offset, "y_offset")]), g.const(scale, "y_scale")])


# ---- the graph ----


def _outputs(g: _Graph, record: ModelRecord, head: str) -> list[tuple[str, int, list[int | str]]]:
    """(value, dtype, shape) of each graph output, in output_names order, renamed to those names."""
    spec = record.spec
    units = spec.head.units
    out = g.op("Cast", [head], to=DOUBLE)
    if spec.task is Task.REGRESSION:
        affine = y_affine(record)
        if affine is not None:
            out = _y_unscaled(g, out, affine)
        g.nodes.append(helper.make_node("Identity", [out], ["values"], name="values"))
        return [("values", DOUBLE, ["batch", units])]
    if spec.task is Task.BINARY:
        p = g.op("Squeeze", [g.op("Slice", [out, g.i64([0]), g.i64([1]), g.i64([1])]), g.i64([1], "axes")])
        labels = g.op("Cast", [g.op("GreaterOrEqual", [p, g.const(np.asarray(0.5), "half")])], to=INT64)
    else:
        labels = g.op("ArgMax", [out], axis=1, keepdims=0)
    g.nodes.append(helper.make_node("Identity", [labels], ["labels"], name="labels"))
    g.nodes.append(helper.make_node("Identity", [out], ["probabilities"], name="probabilities"))
    return [("labels", INT64, ["batch"]), ("probabilities", DOUBLE, ["batch", units])]


def _taps(g: _Graph, tensors: Sequence[_Tensor], layers: Sequence[LayerPlan]) -> list[onnx.ValueInfoProto]:
    """Every layer's output, batch-major float32, as extra outputs ``layer_<index>``."""
    infos = []
    for tensor, layer in zip(tensors, layers, strict=True):
        name = f"layer_{layer.index}"
        g.nodes.append(helper.make_node("Identity", [_batch_major(g, tensor).name], [name], name=name))
        shape: list[str | int | None] = ["batch", *(d or 0 for d in layer.output_shape[1:])]
        infos.append(helper.make_tensor_value_info(name, FLOAT, shape))
    return infos


def build_graph(
    record: ModelRecord,
    weights: Sequence[LayerWeights],
    metadata_json: str = "",
    *,
    tap_layers: bool = False,
    written_lstms: bool = False,
) -> onnx.ModelProto:
    """The serving graph of ``record`` with ``weights``, one entry per entry of ``plan(record.spec).layers``
    as Keras' ``layer.get_weights()`` gives it. ValueError naming the layer when a shape does not fit.
    ``tap_layers`` adds every layer's output (``layer_<index>``, float32, batch-major) for diagnosis;
    ``written_lstms`` writes every recurrence out, even where the ``LSTM`` operator would do."""
    spec = record.spec
    layers = plan(spec).layers
    _checked(layers, spec.features, weights)
    g = _Graph()
    x = _x_scaled(g, INPUT_NAME, record.x_scaler) if record.x_scaler is not None else INPUT_NAME
    t = _Tensor(g.op("Cast", [x], to=FLOAT), 3)
    steps = spec.timesteps
    flowed: list[_Tensor] = []
    for layer, layer_weights in zip(layers, weights, strict=True):
        if layer.kind == "lstm":
            t = _lstm(g, t, layer_weights, layer, steps, written_lstms)
        elif layer.kind in ("dense", "head"):
            t = _dense(g, t, layer_weights, layer.activation)
        elif layer.kind == "reshape":
            t = _reshape(g, t, layer)
        if len(layer.output_shape) == 3:
            steps = layer.output_shape[1] or 0  # what the next LSTM walks
        flowed.append(t)
    outputs = _outputs(g, record, t.name)
    infos = [helper.make_tensor_value_info(name, dtype, shape) for name, dtype, shape in outputs]
    if tap_layers:
        infos += _taps(g, flowed, layers)
    graph = helper.make_graph(
        g.nodes,
        "lstm_stack",
        [helper.make_tensor_value_info(INPUT_NAME, DOUBLE, ["batch", spec.timesteps, spec.features])],
        infos,
        initializer=g.initializers,
    )
    model = helper.make_model(
        graph,
        producer_name=PRODUCER_NAME,
        opset_imports=[helper.make_opsetid("", ONNX_OPSET)],
        ir_version=ONNX_IR_VERSION,
    )
    if metadata_json:
        entry = model.metadata_props.add()
        entry.key, entry.value = METADATA_KEY, metadata_json
    return model


def graph_bytes(record: ModelRecord, weights: Sequence[LayerWeights], metadata_json: str = "") -> bytes:
    """build_graph, checked by onnx.checker, serialized."""
    model = build_graph(record, weights, metadata_json)
    onnx.checker.check_model(model, full_check=True)
    return model.SerializeToString()
