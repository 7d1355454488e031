"""Spec resolution and shape arithmetic (spec.py), confirmed by Keras (builder.describe)."""

from __future__ import annotations

import keras
import numpy as np
import pytest

from model_service import builder
from model_service.graph_session import GraphSession
from model_service.records import ModelRecord
from model_service.spec import (
    ACTIVATIONS,
    MAX_SAMPLE_VALUES,
    MAX_TENSOR_RANK,
    Dense,
    Dropout,
    Head,
    Lstm,
    ModelSpec,
    Optimizer,
    Reshape,
    Task,
    plan,
    with_defaults,
)
from model_service.training.graph import serving_graph
from service_common.errors import InvalidArgument

REGRESSION = Head(Task.REGRESSION)


def seed_spec(*extra: Lstm | Dense | Reshape | Dropout) -> ModelSpec:
    return ModelSpec(3, 1, (Lstm(10, "relu"), Lstm(2, "relu"), Lstm(10, "relu"), *extra), REGRESSION)


def shapes(spec: ModelSpec) -> list[str]:
    return [layer.output_shape_text for layer in plan(with_defaults(spec)).layers]


def test_seed_stack_shapes_match_the_seed_comments() -> None:
    resolved = with_defaults(seed_spec(Dense(5, "relu")))
    described = builder.describe(resolved)
    assert [layer.output_shape_text for layer in described.layers] == [
        "(None, 3, 10)",
        "(None, 3, 2)",
        "(None, 10)",
        "(None, 5)",
        "(None, 1)",
    ]
    assert [layer.return_sequences for layer in described.layers[:3]] == [True, True, False]
    # 4 gates x units x (inputs + units + bias): what Keras' summary shows for the seed's model.
    assert [layer.params for layer in described.layers] == [480, 104, 520, 55, 6]
    assert described.total_params == 1165
    assert [layer.name for layer in described.layers] == ["lstm_0", "lstm_1", "lstm_2", "dense_3", "head"]


def test_reshape_is_the_alternative_to_return_sequences() -> None:
    spec = ModelSpec(3, 1, (Lstm(10, "relu"), Reshape((10, 1)), Lstm(2, "relu")), REGRESSION)
    resolved = with_defaults(spec)
    assert resolved.layers[0].return_sequences is False  # the next non-Dropout layer is not an LSTM
    assert [layer.output_shape_text for layer in builder.describe(resolved).layers] == [
        "(None, 10)",
        "(None, 10, 1)",
        "(None, 2)",
        "(None, 1)",
    ]


def test_return_sequences_is_derived_across_dropout_and_explicit_wins() -> None:
    derived = with_defaults(ModelSpec(4, 2, (Lstm(8), Dropout(0.2), Lstm(4)), REGRESSION))
    assert derived.layers[0].return_sequences is True
    assert derived.layers[2].return_sequences is False
    explicit = ModelSpec(4, 2, (Lstm(8, return_sequences=True), Dense(3), Reshape((12,))), REGRESSION)
    assert with_defaults(explicit).layers[0].return_sequences is True
    assert shapes(explicit) == [
        "(None, 4, 8)",
        "(None, 4, 3)",
        "(None, 12)",
        "(None, 1)",
    ]


def test_defaults_are_filled_in() -> None:
    resolved = with_defaults(ModelSpec(3, 1, (Lstm(4), Dense(2)), Head(Task.REGRESSION)))
    assert resolved.layers[0].activation == "tanh"
    assert resolved.layers[1].activation == "linear"
    assert resolved.optimizer == Optimizer("adam", 0.001)
    assert resolved.head.outputs == 1
    assert with_defaults(ModelSpec(3, 1, (Lstm(4),), Head(Task.BINARY))).head.units == 1
    assert with_defaults(ModelSpec(3, 1, (Lstm(4),), Head(Task.MULTICLASS, n_classes=5))).head.units == 5


@pytest.mark.parametrize(
    ("spec", "fragments"),
    [
        (
            ModelSpec(3, 1, (Lstm(10), Lstm(2, return_sequences=False), Lstm(4)), REGRESSION),
            ["layers[2] (lstm)", "3-D", "(None, 2)", "layers[1] (lstm)"],
        ),
        (
            ModelSpec(3, 1, (Lstm(10), Reshape((3, 4)), Lstm(2)), REGRESSION),
            ["layers[1] (reshape)", "(None, 10)", "10 values", "12 values"],
        ),
        (
            ModelSpec(3, 1, (Lstm(10, "relux"),), REGRESSION),
            ["layers[0] (lstm)", "unknown activation 'relux'"],
        ),
        (ModelSpec(3, 1, (Lstm(4), Dense(3, "nope")), REGRESSION), ["layers[1] (dense)", "'nope'"]),
        (ModelSpec(3, 1, (Lstm(0),), REGRESSION), ["layers[0] (lstm): units", "got 0"]),
        (ModelSpec(3, 1, (Lstm(4), Dense(-2)), REGRESSION), ["layers[1] (dense): units", "got -2"]),
        (ModelSpec(3, 1, (Lstm(4), Dropout(1.0)), REGRESSION), ["layers[1] (dropout)", "[0, 1)", "1.0"]),
        (ModelSpec(3, 1, (Lstm(4), Dropout(-0.1)), REGRESSION), ["layers[1] (dropout)", "-0.1"]),
        (ModelSpec(3, 1, (), REGRESSION), ["no layers"]),
        (ModelSpec(3, 1, (Dense(4), Reshape((12,))), REGRESSION), ["no LSTM layer"]),
        (ModelSpec(0, 1, (Lstm(4),), REGRESSION), ["input.timesteps", "got 0"]),
        (ModelSpec(3, -1, (Lstm(4),), REGRESSION), ["input.features", "got -1"]),
        (ModelSpec(3, 1, (Lstm(4),), Head(None)), ["head.task is required"]),
        (
            ModelSpec(3, 1, (Lstm(4),), Head(Task.MULTICLASS, n_classes=1)),
            ["head (MULTICLASS", "MULTICLASS needs n_classes >= 2", "got 1"],
        ),
        (
            ModelSpec(3, 1, (Lstm(4),), Head(Task.BINARY, outputs=3)),
            ["head (BINARY, output (None, 1)", "outputs=3"],
        ),
        (
            ModelSpec(3, 1, (Lstm(4),), Head(Task.MULTICLASS, outputs=4, n_classes=3)),
            ["head (MULTICLASS, output (None, 3))", "outputs=4 does not match n_classes=3"],
        ),
        (
            ModelSpec(3, 1, (Lstm(4),), Head(Task.REGRESSION, n_classes=3)),
            ["head (REGRESSION, output (None, 1))", "n_classes (3) is for MULTICLASS"],
        ),
        (
            ModelSpec(3, 1, (Lstm(4, return_sequences=True),), REGRESSION),
            ["head", "2-D input", "(None, 3, 4)", "return_sequences"],
        ),
        (ModelSpec(3, 1, (Lstm(4), Reshape((0, 4))), REGRESSION), ["layers[1] (reshape)", "positive"]),
        (ModelSpec(3, 1, (Lstm(4),), REGRESSION, Optimizer("adamm")), ["optimizer", "'adamm'"]),
        (ModelSpec(3, 1, (Lstm(4),), REGRESSION, Optimizer("sgd", -1.0)), ["learning_rate", "-1.0"]),
    ],
)
def test_impossible_specs_are_refused_naming_layer_and_shapes(spec: ModelSpec, fragments: list[str]) -> None:
    with pytest.raises(InvalidArgument) as info:
        with_defaults(spec)
    for fragment in fragments:
        assert fragment in str(info.value), f"{fragment!r} missing from: {info.value}"


def test_reshape_with_minus_one_infers_the_dimension() -> None:
    assert shapes(ModelSpec(3, 1, (Lstm(12), Reshape((-1, 3)), Lstm(2)), REGRESSION))[1] == "(None, 4, 3)"
    with pytest.raises(InvalidArgument, match="not a multiple of 5"):
        with_defaults(ModelSpec(3, 1, (Lstm(12), Reshape((-1, 5)), Lstm(2)), REGRESSION))


@pytest.mark.parametrize(
    "spec",
    [
        seed_spec(Dense(5, "relu")),
        ModelSpec(
            6,
            3,
            (Lstm(8, "elu"), Dropout(0.3), Lstm(5), Dense(4, "selu")),
            Head(Task.MULTICLASS, n_classes=4),
        ),
        ModelSpec(
            5, 2, (Lstm(6, return_sequences=True), Dense(2), Reshape((10,)), Dense(7)), Head(Task.BINARY)
        ),
        ModelSpec(4, 1, (Lstm(6), Reshape((3, 2)), Lstm(3)), Head(Task.REGRESSION, outputs=2)),
        ModelSpec(40, 2, (Lstm(5), Reshape((5, 1)), Lstm(3)), REGRESSION),  # long: the LSTM is not unrolled
    ],
)
def test_keras_confirms_the_shape_arithmetic(spec: ModelSpec) -> None:
    resolved = with_defaults(spec)
    expected = plan(resolved)
    model = builder.build(resolved, seed=3)
    assert [tuple(layer.output.shape) for layer in model.layers] == [
        layer.output_shape for layer in expected.layers
    ]
    assert model.count_params() == expected.total_params
    assert builder.describe(resolved) == expected


def test_every_allowed_activation_is_a_keras_activation() -> None:
    for name in sorted(ACTIVATIONS):
        assert callable(keras.activations.get(name)), name


def test_spec_round_trips_through_json() -> None:
    resolved = with_defaults(
        ModelSpec(
            4, 2, (Lstm(8), Dropout(0.25), Lstm(4), Dense(3, "relu")), Head(Task.MULTICLASS, n_classes=3)
        )
    )
    assert ModelSpec.from_dict(resolved.to_dict()) == resolved


def test_a_spec_whose_reshape_rank_exceeds_tensorflows_limit_is_refused() -> None:
    # 254 dims aborted the process in Train ("Too many dimensions in tensor"); 9 to 253 fail in
    # TensorFlow's broadcasting kernels. At most MAX_TENSOR_RANK, the batch included.
    for rank in (MAX_TENSOR_RANK, 254, 10_000):
        target = (2, *([1] * (rank - 1)))
        with pytest.raises(InvalidArgument) as info:
            with_defaults(ModelSpec(3, 1, (Lstm(2), Reshape(target), Reshape((2,))), REGRESSION))
        message = str(info.value)
        assert "layers[1] (reshape): target_shape" in message and f"has {rank} dimensions" in message
        assert f"at most {MAX_TENSOR_RANK - 1} are allowed" in message and len(message) < 400, message


def test_a_reshape_to_tensorflows_largest_rank_builds_trains_and_serves() -> None:
    """The boundary is TensorFlow's: a rank-8 tensor (batch included) through Dense, Dropout and an
    activation trains and is served by its ONNX serving graph."""
    target = (2, *([1] * (MAX_TENSOR_RANK - 2)))
    spec = with_defaults(
        ModelSpec(
            3, 1, (Lstm(2), Reshape(target), Dense(3, "gelu"), Dropout(0.5), Reshape((-1,))), REGRESSION
        )
    )
    assert len(plan(spec).layers[1].output_shape) == MAX_TENSOR_RANK
    model = builder.build(spec, seed=1)
    x = np.zeros((4, 3, 1), np.float32)
    model.fit(x, np.zeros((4, 1), np.float32), epochs=1, verbose=0)
    record = ModelRecord("rank", 1, spec, 1, "now")
    session = GraphSession(serving_graph(record, model), "values", "rank v1")
    got = session.run(x.astype(np.float64))
    assert got.shape == (4, 1)
    np.testing.assert_allclose(got, model(x, training=False).numpy(), rtol=1e-5, atol=1e-6)


def test_values_per_sample_are_bounded_in_every_layer() -> None:
    # Reshape to (n, 1) and a wide Dense multiply the values per sample; past 2**63 TensorFlow aborts.
    layers = (Lstm(4096), Reshape((4096, 1)), Dense(4096), Reshape((-1, 1)), Dense(4096))
    with pytest.raises(InvalidArgument) as info:
        with_defaults(ModelSpec(3, 1, layers, REGRESSION))
    assert "layers[4] (dense) outputs (None, 16777216, 4096)" in str(info.value)
    assert f"at most {MAX_SAMPLE_VALUES} are allowed" in str(info.value)


def test_an_lstm_may_not_walk_more_timesteps_than_the_input_allows() -> None:
    # A Reshape makes 40 000 timesteps out of 3 x 40 000 values: input.timesteps caps the input only.
    layers = (Lstm(4000, return_sequences=True), Reshape((-1, 1)), Lstm(1))
    with pytest.raises(InvalidArgument, match=r"layers\[2\] \(lstm\) would walk 12000 timesteps"):
        with_defaults(ModelSpec(3, 1, layers, REGRESSION))


def test_unrolling_follows_the_timesteps_an_lstm_really_walks() -> None:
    # Reshape((-1, 1)) used to count as -1 timesteps, and so unrolled 40 steps (or 40 000).
    spec = with_defaults(ModelSpec(3, 1, (Lstm(40), Reshape((-1, 1)), Lstm(2)), REGRESSION))
    model = builder.build(spec, seed=1, compile_model=False)
    assert model.layers[0].unroll is True and model.layers[2].unroll is False
    short = with_defaults(ModelSpec(3, 1, (Lstm(8), Reshape((-1, 2)), Lstm(2)), REGRESSION))
    assert builder.build(short, seed=1, compile_model=False).layers[2].unroll is True


def test_describe_builds_without_initializing_weights() -> None:
    """ValidateSpec only needs shapes: Orthogonal's QR of a wide LSTM would take seconds per call."""
    spec = with_defaults(ModelSpec(3, 1, (Lstm(16), Dense(4)), REGRESSION))
    looked_at = builder.build(spec, seed=1, compile_model=False, initialize=False)
    assert all(not np.any(np.asarray(w)) for w in looked_at.get_weights()[:2])
    assert any(np.any(np.asarray(w)) for w in builder.build(spec, seed=1).get_weights()[:2])
    assert builder.describe(spec) == plan(spec)
