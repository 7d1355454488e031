"""The ONNX serving graph (serving_graph.py) answers what Predict answers, checked against real Keras models."""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Sequence

import keras
import numpy as np
import onnx
import onnxruntime
import pytest

from model_service import builder, serving_graph_keras
from model_service.affine_scalers import PER_COLUMN, PER_FEATURE, AffineScaler, ScalerRef
from model_service.forecasting.config import ForecastConfig, Strategy
from model_service.records import ModelRecord
from model_service.serving import ForwardPass, InferTiming, Prediction
from model_service.serving_graph import (
    LSTM_OP_ACTIVATIONS,
    METADATA_KEY,
    ONNX_OPSET,
    UNROLL_MAX_TIMESTEPS,
    LayerWeights,
    build_graph,
    graph_bytes,
    output_names,
)
from model_service.serving_graph_keras import GraphMismatch, checked_graph, keras_weights
from model_service.spec import (
    ACTIVATIONS,
    Dense,
    Dropout,
    Head,
    LayerSpec,
    Lstm,
    ModelSpec,
    Reshape,
    Task,
    plan,
    with_defaults,
)
from service_common.errors import FailedPrecondition

# Both sides compute the model in float32; they may differ by its rounding.
RTOL = ATOL = 1e-5


def perturbed_model(spec: ModelSpec, seed: int = 1, spread: float = 0.3, shrink: float = 1.0) -> keras.Model:
    """builder.build at a fixed seed, every weight moved at random so that biases are nonzero too
    (and multiplied by ``shrink`` first)."""
    model = builder.build(spec, seed, compile_model=False)
    rng = np.random.default_rng(seed)
    for layer in model.layers:
        moved = [w * shrink + rng.normal(0, spread, w.shape) for w in layer.get_weights()]
        layer.set_weights([w.astype(np.float32) for w in moved])
    return model


def record_of(spec: ModelSpec, **fields: object) -> ModelRecord:
    return ModelRecord("m", 3, spec, 1, "now", **fields)  # type: ignore[arg-type]


def session(data: bytes) -> onnxruntime.InferenceSession:
    options = onnxruntime.SessionOptions()
    options.intra_op_num_threads = 1
    return onnxruntime.InferenceSession(data, options, providers=["CPUExecutionProvider"])


def run(proto: onnx.ModelProto, x: np.ndarray, names: Sequence[str] | None = None) -> dict[str, np.ndarray]:
    onnx.checker.check_model(proto, full_check=True)
    s = session(proto.SerializeToString())
    names = list(names or [o.name for o in s.get_outputs()])
    return dict(zip(names, s.run(names, {"x": x}), strict=True))


def keras_out(model: keras.Model, x: np.ndarray) -> np.ndarray:
    return np.asarray(model(x.astype(np.float32), training=False), dtype=np.float64)


def op_types(proto: onnx.ModelProto) -> list[str]:
    return [node.op_type for node in proto.graph.node]


def predicted_values(record: ModelRecord, model: keras.Model, x: np.ndarray) -> np.ndarray:
    values = predict(record, model, x).values
    assert values is not None
    return values


def predict(record: ModelRecord, model: keras.Model, x: np.ndarray) -> Prediction:
    """What Predict answered when Keras served it: the x scaler in float64, the model in float32, the
    y scaler inverted per value (every quantile level of a value as that value), labels from the
    probabilities."""
    scaled = record.x_scaler.transform(x) if record.x_scaler is not None else x
    out = keras_out(model, scaled.astype(np.float32)).astype(np.float64)
    task = record.spec.task
    if task is not Task.REGRESSION:
        labels = (out[:, 0] >= 0.5) if task is Task.BINARY else np.argmax(out, axis=1)
        return Prediction(None, out, labels.astype(np.int64), TIMING)
    if record.y_scaler is not None:
        levels = record.forecast.levels if record.forecast else 1
        n = out.shape[0]
        per_level = out.reshape(n, -1, levels).transpose(0, 2, 1).reshape(n * levels, -1)
        out = (
            record.y_scaler.inverse_transform(per_level)
            .reshape(n, levels, -1)
            .transpose(0, 2, 1)
            .reshape(n, -1)
        )
    return Prediction(out, None, None, TIMING)


TIMING = InferTiming(0, 0, ForwardPass(0, 0, 0), 0)


def stack(act: str) -> ModelSpec:
    return with_defaults(
        ModelSpec(4, 2, (Lstm(3, act), Lstm(3, act), Dense(3, act)), Head(Task.REGRESSION, 2))
    )


@pytest.mark.parametrize("activation", sorted(ACTIVATIONS))
def test_every_activation_in_a_two_lstm_stack_matches_keras(activation: str) -> None:
    spec = stack(activation)
    # exp(exp(...)) overflows float32 quickly: smaller weights keep the exponential's stack finite.
    small = activation == "exponential"
    model = perturbed_model(spec, spread=0.1 if small else 0.3, shrink=0.3 if small else 1.0)
    x = np.random.default_rng(2).normal(0, 0.5 if small else 2, (6, 4, 2))
    want = keras_out(model, x)
    assert np.isfinite(want).all() and np.ptp(want, axis=0).min() > 1e-3  # the rows differ: a real check
    weights = keras_weights(model, spec)
    chosen = build_graph(record_of(spec), weights)
    written = build_graph(record_of(spec), weights, written_lstms=True)
    assert op_types(chosen).count("LSTM") == (2 if activation in LSTM_OP_ACTIVATIONS else 0)
    assert "LSTM" not in op_types(written)
    for proto in (chosen, written):
        np.testing.assert_allclose(run(proto, x)["values"], want, rtol=RTOL, atol=ATOL)


@pytest.mark.parametrize("activation", ["tanh", "relu", "sigmoid"])
def test_the_common_activations_use_the_onnx_lstm_operator(activation: str) -> None:
    spec = stack(activation)
    types = op_types(build_graph(record_of(spec), random_weights(spec)))
    assert types.count("LSTM") == 2 and "Scan" not in types and "Gemm" not in types


def random_weights(spec: ModelSpec, seed: int = 0) -> list[LayerWeights]:
    """Weights of the shapes the plan asks for, without Keras."""
    rng = np.random.default_rng(seed)
    weights: list[LayerWeights] = []
    features = spec.features
    for layer in plan(spec).layers:
        units = layer.output_shape[-1] or 0
        if layer.kind == "lstm":
            shapes = [(features, 4 * units), (units, 4 * units), (4 * units,)]
        elif layer.kind in ("dense", "head"):
            shapes = [(features, units), (units,)]
        else:
            shapes = []
        weights.append([rng.normal(size=s).astype(np.float32) for s in shapes])
        features = units
    return weights


def test_long_windows_step_in_a_scan_with_the_same_answers() -> None:
    steps = UNROLL_MAX_TIMESTEPS + 6
    spec = with_defaults(ModelSpec(steps, 2, (Lstm(3, "gelu"), Lstm(2, "selu")), Head(Task.REGRESSION, 2)))
    model = perturbed_model(spec, spread=0.2)
    x = np.random.default_rng(4).normal(size=(3, steps, 2))
    proto = build_graph(record_of(spec), keras_weights(model, spec))
    assert op_types(proto).count("Scan") == 2
    np.testing.assert_allclose(run(proto, x)["values"], keras_out(model, x), rtol=RTOL, atol=ATOL)


LAYERED: dict[str, tuple[LayerSpec, ...]] = {
    # An LSTM operator's time-major sequences through Dropout and a Dense on sequences, then a Reshape
    # that depends on the element order, into a written-out LSTM.
    "sequences_dense_reshape": (
        Lstm(4, "tanh", return_sequences=True),
        Dropout(0.3),
        Dense(5, "relu"),
        Reshape((10, 2)),
        Lstm(3, "swish"),
        Dense(2, "elu"),
    ),
    # return_sequences into a Dense on sequences, flattened for the head.
    "sequences_into_dense": (Lstm(3, "mish", return_sequences=True), Dense(2, "sigmoid"), Reshape((-1,))),
    # An LSTM operator fed by a written-out LSTM's sequences, and a Reshape between two LSTMs.
    "written_into_operator": (
        Lstm(4, "hard_tanh"),
        Dropout(0.1),
        Lstm(3, "relu", return_sequences=True),
        Reshape((3, 4)),
        Lstm(2, "softsign"),
    ),
}


@pytest.mark.parametrize("name", sorted(LAYERED))
def test_dense_reshape_and_dropout_between_lstms_match_keras_layer_by_layer(name: str) -> None:
    spec = with_defaults(ModelSpec(4, 2, LAYERED[name], Head(Task.REGRESSION, 3)))
    model = perturbed_model(spec)
    x = np.random.default_rng(5).normal(size=(5, 4, 2))
    proto = build_graph(record_of(spec), keras_weights(model, spec), tap_layers=True)
    answers = run(proto, x)
    out = x.astype(np.float32)
    for layer in plan(spec).layers:
        out = np.asarray(model.get_layer(layer.name)(out, training=False))
        got = answers[f"layer_{layer.index}"]
        assert got.shape == out.shape, layer.name
        np.testing.assert_allclose(got, out, rtol=RTOL, atol=ATOL, err_msg=layer.name)
    np.testing.assert_allclose(answers["values"], keras_out(model, x), rtol=RTOL, atol=ATOL)


HEADS = {
    "regression_1": Head(Task.REGRESSION, 1),
    "regression_3": Head(Task.REGRESSION, 3),
    "binary": Head(Task.BINARY),
    "multiclass": Head(Task.MULTICLASS, n_classes=4),
}


@pytest.mark.parametrize("name", sorted(HEADS))
def test_every_head_answers_what_predict_answers(name: str) -> None:
    spec = with_defaults(ModelSpec(3, 2, (Lstm(5, "relu"),), HEADS[name]))
    model = perturbed_model(spec, spread=1.0)
    x = np.random.default_rng(6).normal(0, 3, (64, 3, 2))
    if spec.task is Task.BINARY:  # centre the logits so that both labels occur
        head = model.get_layer("head")
        kernel, bias = head.get_weights()
        logits = np.asarray(model.get_layer("lstm_0")(x.astype(np.float32))) @ kernel + bias
        head.set_weights([kernel, bias - np.median(logits, axis=0)])
    record = record_of(spec)
    s = session(graph_bytes(record, keras_weights(model, spec)))
    assert [i.name for i in s.get_inputs()] == ["x"] and s.get_inputs()[0].type == "tensor(double)"
    assert tuple(o.name for o in s.get_outputs()) == output_names(spec.task)
    want = predict(record, model, x)
    for rows in (x[:1], x):  # the batch dimension is symbolic
        got = dict(zip(output_names(spec.task), s.run(None, {"x": rows}), strict=True))
        n = len(rows)
        if spec.task is Task.REGRESSION:
            assert want.values is not None
            assert got["values"].dtype == np.float64 and got["values"].shape == (n, spec.head.units)
            np.testing.assert_allclose(got["values"], want.values[:n], rtol=RTOL, atol=ATOL)
            continue
        assert want.probabilities is not None and want.labels is not None
        assert got["probabilities"].dtype == np.float64 and got["probabilities"].shape == (n, spec.head.units)
        assert got["labels"].dtype == np.int64 and got["labels"].shape == (n,)
        np.testing.assert_allclose(got["probabilities"], want.probabilities[:n], rtol=RTOL, atol=ATOL)
        np.testing.assert_array_equal(got["labels"], want.labels[:n])
    if spec.task is not Task.REGRESSION:
        assert want.labels is not None and len(set(want.labels.tolist())) > 1  # labels that can be wrong


def affine(
    layout: str,
    sample_shape: tuple[int, ...],
    columns: int,
    seed: int,
    clip: tuple[float, float] | None = None,
) -> AffineScaler:
    rng = np.random.default_rng(seed)
    scale, offset = rng.uniform(0.2, 3.0, columns), rng.normal(0, 2, columns)
    return AffineScaler(ScalerRef("s", 1), layout, sample_shape, scale, offset, clip)


@pytest.mark.parametrize(
    ("layout", "clip"),
    [(PER_FEATURE, None), (PER_FEATURE, (-1.0, 1.0)), (PER_COLUMN, None), (PER_COLUMN, (-0.5, 2.0))],
)
def test_x_and_y_scalers_are_folded_in_as_predict_applies_them(
    layout: str, clip: tuple[float, float] | None
) -> None:
    spec = with_defaults(ModelSpec(3, 2, (Lstm(4, "tanh"),), Head(Task.REGRESSION, 3)))
    model = perturbed_model(spec)
    columns = 2 if layout == PER_FEATURE else 6
    x_scaler = affine(layout, (3, 2), columns, 7, clip=clip)
    y_scaler = affine(PER_FEATURE, (3,), 3, 8)
    y_scaler = AffineScaler(y_scaler.ref, PER_FEATURE, (3,), np.array([40.0, 0.0, 0.25]), y_scaler.offset)
    record = record_of(spec, x_scaler=x_scaler, y_scaler=y_scaler)
    x = np.random.default_rng(9).normal(0, 2, (16, 3, 2))
    if clip is not None:  # the clip matters to these rows
        unclipped = AffineScaler(x_scaler.ref, layout, (3, 2), x_scaler.scale, x_scaler.offset)
        assert not np.allclose(unclipped.transform(x), x_scaler.transform(x))
    got = run(build_graph(record, keras_weights(model, spec)), x)["values"]
    want = predicted_values(record, model, x)
    np.testing.assert_allclose(got, want, rtol=RTOL, atol=ATOL)
    # Without the scalers folded in the answers would be far from these.
    assert not np.allclose(
        run(build_graph(record_of(spec), keras_weights(model, spec)), x)["values"], want, atol=0.1
    )


def test_a_quantile_head_unscales_every_level_of_a_value_as_that_value() -> None:
    config = ForecastConfig(4, 2, Strategy.DIRECT, (0, 1), (0, 1), 2, 1, (0.1, 0.5, 0.9))
    spec = with_defaults(ModelSpec(4, 2, (Lstm(4, "relu"),), Head(Task.REGRESSION, config.head_outputs)))
    assert config.levels == 3 and spec.head.units == 12
    model = perturbed_model(spec)
    y_scaler = affine(PER_FEATURE, (4,), 4, 10)
    record = record_of(spec, y_scaler=y_scaler, forecast=config)
    x = np.random.default_rng(11).normal(size=(5, 4, 2))
    got = run(build_graph(record, keras_weights(model, spec)), x)["values"]
    np.testing.assert_allclose(got, predicted_values(record, model, x), rtol=RTOL, atol=ATOL)
    # The SavedModel export folds the same inverse in (trainer process; TensorFlow).
    from model_service.saved_model import serving_function

    exported = serving_function(record, model)(x)["values"].numpy()
    np.testing.assert_allclose(exported, got, rtol=RTOL, atol=ATOL)


def test_a_weight_of_the_wrong_shape_is_refused_naming_the_layer() -> None:
    spec = with_defaults(
        ModelSpec(3, 1, (Lstm(10, "relu"), Lstm(2, "relu"), Lstm(10, "relu")), Head(Task.REGRESSION))
    )
    weights = random_weights(spec)
    weights[1][1] = np.zeros((3, 8), np.float32)
    with pytest.raises(ValueError, match=r"layer 1 \(lstm, 2 units.*\(2, 8\).*\(3, 8\)"):
        build_graph(record_of(spec), weights)
    with pytest.raises(ValueError, match="4 layers"):
        build_graph(record_of(spec), random_weights(spec)[:3])


def test_metadata_producer_and_opset() -> None:
    spec = stack("tanh")
    meta = json.dumps({"model_id": "m", "version": 3})
    proto = onnx.load_from_string(graph_bytes(record_of(spec), random_weights(spec), meta))
    assert {p.key: p.value for p in proto.metadata_props} == {METADATA_KEY: meta}
    assert proto.producer_name == "lstm-stack"
    assert [(o.domain, o.version) for o in proto.opset_import] == [("", ONNX_OPSET)]
    assert not onnx.load_from_string(graph_bytes(record_of(spec), random_weights(spec))).metadata_props


SEED_SPEC = with_defaults(
    ModelSpec(3, 1, (Lstm(10, "relu"), Lstm(2, "relu"), Lstm(10, "relu")), Head(Task.REGRESSION))
)


def test_checked_graph_returns_the_graph_when_keras_agrees() -> None:
    model = perturbed_model(SEED_SPEC)
    y_scaler = affine(PER_FEATURE, (1,), 1, 12)
    record = record_of(SEED_SPEC, x_scaler=affine(PER_FEATURE, (3, 1), 1, 13), y_scaler=y_scaler)
    x = np.random.default_rng(14).normal(0, 5, (8, 3, 1))
    data = checked_graph(record, model, x, "{}")
    assert data == graph_bytes(record, keras_weights(model, SEED_SPEC), "{}")


def test_checked_graph_refuses_a_graph_whose_weights_were_tampered_with(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    model = perturbed_model(SEED_SPEC)
    real = serving_graph_keras.keras_weights

    def tampered(model: keras.Model, spec: ModelSpec) -> list[LayerWeights]:
        weights = real(model, spec)
        weights[1][0] = weights[1][0] + np.float32(0.5)
        return weights

    monkeypatch.setattr(serving_graph_keras, "keras_weights", tampered)
    x = np.random.default_rng(15).normal(0, 5, (8, 3, 1))
    with pytest.raises(GraphMismatch, match=r"first diverging: layer 1 lstm\(2, relu") as caught:
        checked_graph(record_of(SEED_SPEC), model, x)
    assert isinstance(caught.value, FailedPrecondition)
    assert "layer 0 lstm(10, relu, return_sequences) -> layer 1 lstm(2, relu, return_sequences)" in str(
        caught.value
    )


def test_the_graph_module_loads_without_tensorflow_or_keras() -> None:
    code = (
        "import sys, model_service.serving_graph\n"
        "print(sorted({m.split('.')[0] for m in sys.modules} & {'tensorflow', 'keras', 'model_service'}))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.split() == ["['model_service']"]
