"""Spec resolution and shape arithmetic (spec.py), confirmed by Keras (builder.describe)."""

from __future__ import annotations

import keras
import pytest

from model_service import builder
from model_service.spec import (
    ACTIVATIONS,
    Dense,
    Dropout,
    Head,
    Lstm,
    ModelSpec,
    Optimizer,
    Reshape,
    Task,
    plan,
    resolve,
)
from service_common.errors import InvalidArgument

REGRESSION = Head(Task.REGRESSION)


def seed_spec(*extra: Lstm | Dense | Reshape | Dropout) -> ModelSpec:
    return ModelSpec(3, 1, (Lstm(10, "relu"), Lstm(2, "relu"), Lstm(10, "relu"), *extra), REGRESSION)


def shapes(spec: ModelSpec) -> list[str]:
    return [layer.output_shape_text for layer in plan(resolve(spec)).layers]


def test_seed_stack_shapes_match_the_seed_comments() -> None:
    resolved = resolve(seed_spec(Dense(5, "relu")))
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
    resolved = resolve(spec)
    assert resolved.layers[0].return_sequences is False  # the next non-Dropout layer is not an LSTM
    assert [layer.output_shape_text for layer in builder.describe(resolved).layers] == [
        "(None, 10)",
        "(None, 10, 1)",
        "(None, 2)",
        "(None, 1)",
    ]


def test_return_sequences_is_derived_across_dropout_and_explicit_wins() -> None:
    derived = resolve(ModelSpec(4, 2, (Lstm(8), Dropout(0.2), Lstm(4)), REGRESSION))
    assert derived.layers[0].return_sequences is True
    assert derived.layers[2].return_sequences is False
    explicit = ModelSpec(4, 2, (Lstm(8, return_sequences=True), Dense(3), Reshape((12,))), REGRESSION)
    assert resolve(explicit).layers[0].return_sequences is True
    assert shapes(explicit) == [
        "(None, 4, 8)",
        "(None, 4, 3)",
        "(None, 12)",
        "(None, 1)",
    ]


def test_defaults_are_filled_in() -> None:
    resolved = resolve(ModelSpec(3, 1, (Lstm(4), Dense(2)), Head(Task.REGRESSION)))
    assert resolved.layers[0].activation == "tanh"
    assert resolved.layers[1].activation == "linear"
    assert resolved.optimizer == Optimizer("adam", 0.001)
    assert resolved.head.outputs == 1
    assert resolve(ModelSpec(3, 1, (Lstm(4),), Head(Task.BINARY))).head.units == 1
    assert resolve(ModelSpec(3, 1, (Lstm(4),), Head(Task.MULTICLASS, n_classes=5))).head.units == 5


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
        resolve(spec)
    for fragment in fragments:
        assert fragment in str(info.value), f"{fragment!r} missing from: {info.value}"


def test_reshape_with_minus_one_infers_the_dimension() -> None:
    assert shapes(ModelSpec(3, 1, (Lstm(12), Reshape((-1, 3)), Lstm(2)), REGRESSION))[1] == "(None, 4, 3)"
    with pytest.raises(InvalidArgument, match="not a multiple of 5"):
        resolve(ModelSpec(3, 1, (Lstm(12), Reshape((-1, 5)), Lstm(2)), REGRESSION))


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
    resolved = resolve(spec)
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
    resolved = resolve(
        ModelSpec(
            4, 2, (Lstm(8), Dropout(0.25), Lstm(4), Dense(3, "relu")), Head(Task.MULTICLASS, n_classes=3)
        )
    )
    assert ModelSpec.from_dict(resolved.to_dict()) == resolved
