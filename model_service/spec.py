"""Model specs: defaults, derived return_sequences and shape arithmetic. No Keras, no grpc.

``with_defaults`` turns what a caller declared into a complete, checked spec; ``plan`` walks the tensor
shape through it layer by layer. Both work out every shape and parameter count themselves, so an
impossible spec is refused with a message that names the layer, its kind and the shapes involved,
before Keras is ever asked (builder.py then builds the model and confirms the same figures).
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from enum import StrEnum
from typing import Any

from service_common.errors import InvalidArgument, echo


class Task(StrEnum):
    REGRESSION = "regression"
    BINARY = "binary"
    MULTICLASS = "multiclass"


# Element-wise Keras activations: none changes the shape, so the arithmetic below stays exact.
ACTIVATIONS = frozenset(
    {
        "tanh",
        "relu",
        "elu",
        "selu",
        "celu",
        "sigmoid",
        "hard_sigmoid",
        "log_sigmoid",
        "linear",
        "softplus",
        "softsign",
        "swish",
        "silu",
        "hard_swish",
        "hard_silu",
        "gelu",
        "mish",
        "exponential",
        "leaky_relu",
        "relu6",
        "hard_tanh",
        "squareplus",
    }
)
OPTIMIZERS = ("adam", "adamw", "sgd", "rmsprop", "adagrad", "adamax", "nadam")
DEFAULT_LSTM_ACTIVATION = "tanh"
DEFAULT_DENSE_ACTIVATION = "linear"
DEFAULT_OPTIMIZER = "adam"
DEFAULT_LEARNING_RATE = 0.001
HEAD_ACTIVATION = {Task.REGRESSION: "linear", Task.BINARY: "sigmoid", Task.MULTICLASS: "softmax"}
HEAD_LOSS = {
    Task.REGRESSION: "mean_squared_error",
    Task.BINARY: "binary_crossentropy",
    Task.MULTICLASS: "sparse_categorical_crossentropy",
}

# Sanity bounds: far above anything these tiny sequence models need, far below what hurts the host.
MAX_TIMESTEPS = 10_000
MAX_FEATURES = 10_000
MAX_UNITS = 4_096
MAX_LAYERS = 64
MAX_CLASSES = 10_000
MAX_OUTPUTS = 10_000
MAX_PARAMS = 20_000_000
MAX_LEARNING_RATE = 10.0
# Shape properties TensorFlow enforces only when it runs the model, some by aborting the process:
# - dimensions per tensor, batch included. TensorShape aborts past 254 ("Too many dimensions in
#   tensor"), Reshape refuses 254, and the broadcasting kernels (Dropout's select, element-wise ops)
#   handle at most 8. So every layer's output has at most 8 (a Reshape target at most 7 entries);
# - values per sample in any layer's output: a Reshape to (n, 1) followed by a wide Dense multiplies
#   them, and past 2**63 per tensor TensorShape aborts too. Nothing near 2**31 fits in memory anyway;
# - timesteps an LSTM walks: a Reshape can make far more than input.timesteps allows.
MAX_TENSOR_RANK = 8
# Training unrolls LSTMs over at most this many steps: no while-loop per step, so the short windows this
# service is for train faster; longer sequences keep the loop so graphs stay small.
UNROLL_MAX_TIMESTEPS = 32
MAX_SAMPLE_VALUES = 2**31 - 1

Shape = tuple[int | None, ...]  # None is the batch dimension


@dataclass(frozen=True)
class Lstm:
    units: int
    activation: str = ""
    return_sequences: bool | None = None  # None: derived

    kind = "lstm"


@dataclass(frozen=True)
class Dense:
    units: int
    activation: str = ""

    kind = "dense"


@dataclass(frozen=True)
class Reshape:
    target_shape: tuple[int, ...]

    kind = "reshape"


@dataclass(frozen=True)
class Dropout:
    rate: float

    kind = "dropout"


LayerSpec = Lstm | Dense | Reshape | Dropout


@dataclass(frozen=True)
class Head:
    task: Task | None
    outputs: int = 0  # regression: targets per sample (0 = 1)
    n_classes: int = 0  # multiclass: at least 2

    @property
    def units(self) -> int:
        """Width of the output layer."""
        if self.task is Task.MULTICLASS:
            return self.n_classes
        if self.task is Task.BINARY:
            return 1
        return self.outputs or 1


@dataclass(frozen=True)
class Optimizer:
    name: str = ""
    learning_rate: float = 0.0


@dataclass(frozen=True)
class ModelSpec:
    timesteps: int
    features: int
    layers: tuple[LayerSpec, ...]
    head: Head
    optimizer: Optimizer = Optimizer()

    @property
    def task(self) -> Task:
        assert self.head.task is not None, "with_defaults() the spec first"
        return self.head.task

    # ---- JSON (model metadata) ----

    def to_dict(self) -> dict[str, Any]:
        return {
            "input": {"timesteps": self.timesteps, "features": self.features},
            "layers": [{"kind": layer.kind, **dataclasses.asdict(layer)} for layer in self.layers],
            "head": {
                "task": self.head.task.value if self.head.task else None,
                "outputs": self.head.outputs,
                "n_classes": self.head.n_classes,
            },
            "optimizer": dataclasses.asdict(self.optimizer),
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> ModelSpec:
        kinds: dict[str, type[LayerSpec]] = {
            "lstm": Lstm,
            "dense": Dense,
            "reshape": Reshape,
            "dropout": Dropout,
        }
        layers: list[LayerSpec] = []
        for raw in data["layers"]:
            fields = {k: v for k, v in raw.items() if k != "kind"}
            if "target_shape" in fields:
                fields["target_shape"] = tuple(int(d) for d in fields["target_shape"])
            layers.append(kinds[raw["kind"]](**fields))
        head = data["head"]
        return cls(
            timesteps=int(data["input"]["timesteps"]),
            features=int(data["input"]["features"]),
            layers=tuple(layers),
            head=Head(Task(head["task"]) if head["task"] else None, head["outputs"], head["n_classes"]),
            optimizer=Optimizer(**data["optimizer"]),
        )


@dataclass(frozen=True)
class LayerPlan:
    """One layer as the tensor flows through it (the head is the last entry, index len(layers))."""

    index: int
    kind: str  # lstm, dense, reshape, dropout, head
    name: str  # the Keras layer name builder.py gives it
    output_shape: Shape
    params: int
    return_sequences: bool = False
    activation: str = ""

    @property
    def output_shape_text(self) -> str:
        return shape_text(self.output_shape)


@dataclass(frozen=True)
class SpecPlan:
    spec: ModelSpec  # with defaults (with_defaults)
    input_shape: Shape
    layers: tuple[LayerPlan, ...]

    @property
    def total_params(self) -> int:
        return sum(layer.params for layer in self.layers)


def shape_text(shape: Shape) -> str:
    """As Keras prints shapes: (None, 3, 10), and (None, 10) for one dimension after the batch."""
    return "(" + ", ".join("None" if d is None else str(d) for d in shape) + ")"


def layer_name(index: int, kind: str) -> str:
    return "head" if kind == "head" else f"{kind}_{index}"


def _where(index: int, layer: LayerSpec) -> str:
    return f"layers[{index}] ({layer.kind})"


def _check_count(value: int, low: int, high: int, what: str) -> None:
    if not low <= value <= high:
        raise InvalidArgument(f"{what} must be in {low}..{high}, got {value}")


def _check_activation(activation: str, default: str, what: str) -> str:
    name = (activation or default).strip().lower()
    if name not in ACTIVATIONS:
        raise InvalidArgument(
            f"{what}: unknown activation {echo(activation)}; expected one of {', '.join(sorted(ACTIVATIONS))}"
        )
    return name


def _derived_return_sequences(layers: tuple[LayerSpec, ...], index: int) -> bool:
    """On exactly when the next layer that is not Dropout is an LSTM."""
    for following in layers[index + 1 :]:
        if isinstance(following, Dropout):
            continue
        return isinstance(following, Lstm)
    return False


def _layer_with_defaults(index: int, layer: LayerSpec, layers: tuple[LayerSpec, ...]) -> LayerSpec:
    where = _where(index, layer)
    if isinstance(layer, Lstm):
        _check_count(layer.units, 1, MAX_UNITS, f"{where}: units")
        activation = _check_activation(layer.activation, DEFAULT_LSTM_ACTIVATION, where)
        sequences = layer.return_sequences
        if sequences is None:
            sequences = _derived_return_sequences(layers, index)
        return Lstm(layer.units, activation, sequences)
    if isinstance(layer, Dense):
        _check_count(layer.units, 1, MAX_UNITS, f"{where}: units")
        return Dense(layer.units, _check_activation(layer.activation, DEFAULT_DENSE_ACTIVATION, where))
    if isinstance(layer, Dropout):
        if not (math.isfinite(layer.rate) and 0.0 <= layer.rate < 1.0):
            raise InvalidArgument(f"{where}: rate must be in [0, 1), got {layer.rate}")
        return layer
    if isinstance(layer, Reshape):
        target = tuple(int(d) for d in layer.target_shape)
        if not target:
            raise InvalidArgument(
                f"{where}: target_shape is empty; give the shape of one sample, e.g. [10, 1]"
            )
        if len(target) > MAX_TENSOR_RANK - 1:
            raise InvalidArgument(
                f"{where}: target_shape {echo(list(target))} has {len(target)} dimensions; at most "
                f"{MAX_TENSOR_RANK - 1} are allowed (TensorFlow's kernels take tensors of up to "
                f"{MAX_TENSOR_RANK} dimensions, the batch included)"
            )
        if any(d == 0 or d < -1 for d in target) or target.count(-1) > 1:
            raise InvalidArgument(
                f"{where}: target_shape {list(target)} must hold positive sizes and at most one -1"
            )
        return Reshape(target)
    raise InvalidArgument(f"layers[{index}]: no layer kind set (lstm, dense, reshape or dropout)")


def _head_with_defaults(head: Head) -> Head:
    """The head is the output layer; every refusal names it, its task and the output shape that task gives."""
    if head.task is None:
        raise InvalidArgument("head.task is required: REGRESSION, BINARY or MULTICLASS")
    if head.task is Task.REGRESSION:
        outputs = head.outputs or 1
        if head.n_classes:
            raise InvalidArgument(
                f"head (REGRESSION, output (None, {outputs})): n_classes ({head.n_classes}) is for MULTICLASS, "
                "not REGRESSION; set outputs for several targets per sample"
            )
        _check_count(outputs, 1, MAX_OUTPUTS, "head.outputs (REGRESSION targets per sample)")
        return Head(Task.REGRESSION, outputs, 0)
    if head.task is Task.BINARY:
        if head.outputs not in (0, 1) or head.n_classes not in (0, 2):
            raise InvalidArgument(
                "head (BINARY, output (None, 1) = P(class 1)): BINARY has one sigmoid output; leave outputs and "
                f"n_classes unset (or 1 and 2), got outputs={head.outputs}, n_classes={head.n_classes}"
            )
        return Head(Task.BINARY, 1, 2)
    if head.n_classes < 2:
        raise InvalidArgument(
            "head (MULTICLASS, output (None, n_classes)): MULTICLASS needs n_classes >= 2, got "
            f"{head.n_classes} (use BINARY for two classes with one sigmoid output, or set n_classes)"
        )
    _check_count(head.n_classes, 2, MAX_CLASSES, "head.n_classes")
    if head.outputs not in (0, head.n_classes):
        raise InvalidArgument(
            f"head (MULTICLASS, output (None, {head.n_classes})): one probability per class; "
            f"outputs={head.outputs} does not match n_classes={head.n_classes} (leave outputs unset)"
        )
    return Head(Task.MULTICLASS, head.n_classes, head.n_classes)


def _optimizer_with_defaults(optimizer: Optimizer) -> Optimizer:
    name = (optimizer.name or DEFAULT_OPTIMIZER).strip().lower()
    if name not in OPTIMIZERS:
        raise InvalidArgument(
            f"optimizer: unknown name {echo(optimizer.name)}; expected one of {', '.join(OPTIMIZERS)}"
        )
    rate = optimizer.learning_rate or DEFAULT_LEARNING_RATE
    if not (math.isfinite(rate) and 0.0 < rate <= MAX_LEARNING_RATE):
        raise InvalidArgument(f"optimizer: learning_rate must be in (0, {MAX_LEARNING_RATE:g}], got {rate}")
    return Optimizer(name, rate)


def with_defaults(spec: ModelSpec) -> ModelSpec:
    """The spec with defaults filled in and return_sequences derived; InvalidArgument if impossible."""
    _check_count(spec.timesteps, 1, MAX_TIMESTEPS, "input.timesteps")
    _check_count(spec.features, 1, MAX_FEATURES, "input.features")
    if not spec.layers:
        raise InvalidArgument("spec has no layers; declare at least one LSTM layer, e.g. lstm {units: 10}")
    if len(spec.layers) > MAX_LAYERS:
        raise InvalidArgument(f"spec has {len(spec.layers)} layers; at most {MAX_LAYERS} are allowed")
    if not any(isinstance(layer, Lstm) for layer in spec.layers):
        raise InvalidArgument(
            "spec has no LSTM layer; the model service builds recurrent models, add at least one lstm layer"
        )
    layers = tuple(_layer_with_defaults(i, layer, spec.layers) for i, layer in enumerate(spec.layers))
    resolved = ModelSpec(
        spec.timesteps,
        spec.features,
        layers,
        _head_with_defaults(spec.head),
        _optimizer_with_defaults(spec.optimizer),
    )
    plan(resolved)  # shape arithmetic: raises when the tensor cannot flow through
    return resolved


def _sample_elements(shape: Shape) -> int:
    return math.prod(d for d in shape[1:] if d is not None)


def _reshape(index: int, layer: Reshape, shape: Shape) -> Shape:
    elements = _sample_elements(shape)
    target = list(layer.target_shape)
    known = math.prod(d for d in target if d != -1)
    if -1 in target:
        if elements % known:
            raise InvalidArgument(
                f"{_where(index, layer)}: cannot reshape {shape_text(shape)} ({elements} values per sample) "
                f"to {list(target)}: {elements} is not a multiple of {known}"
            )
        target[target.index(-1)] = elements // known
    elif known != elements:
        raise InvalidArgument(
            f"{_where(index, layer)}: cannot reshape {shape_text(shape)} ({elements} values per sample) to "
            f"(None, {', '.join(str(d) for d in target)}) ({known} values per sample); the counts must match"
        )
    return (None, *target)


def plan(spec: ModelSpec) -> SpecPlan:
    """Walk the shape through a spec with defaults; InvalidArgument naming the layer when it cannot flow."""
    input_shape: Shape = (None, spec.timesteps, spec.features)
    shape = input_shape
    origin = "the input"
    plans: list[LayerPlan] = []
    for index, layer in enumerate(spec.layers):
        name = layer_name(index, layer.kind)
        if isinstance(layer, Lstm):
            if len(shape) != 3:
                raise InvalidArgument(
                    f"{_where(index, layer)} needs a 3-D input (None, timesteps, features) but {origin} "
                    f"gives {len(shape)}-D {shape_text(shape)}; set return_sequences on the LSTM before it or "
                    f"add a reshape layer, e.g. target_shape [{_sample_elements(shape)}, 1]"
                )
            steps = shape[1] or 0
            if steps > MAX_TIMESTEPS:
                raise InvalidArgument(
                    f"{_where(index, layer)} would walk {steps} timesteps ({origin} gives "
                    f"{shape_text(shape)}); at most {MAX_TIMESTEPS} are allowed, as for input.timesteps"
                )
            features = shape[2] or 0
            params = 4 * layer.units * (features + layer.units + 1)
            shape = (None, shape[1], layer.units) if layer.return_sequences else (None, layer.units)
            plans.append(
                LayerPlan(index, "lstm", name, shape, params, bool(layer.return_sequences), layer.activation)
            )
        elif isinstance(layer, Dense):
            params = (shape[-1] or 0) * layer.units + layer.units
            shape = (*shape[:-1], layer.units)
            plans.append(LayerPlan(index, "dense", name, shape, params, False, layer.activation))
        elif isinstance(layer, Reshape):
            shape = _reshape(index, layer, shape)
            plans.append(LayerPlan(index, "reshape", name, shape, 0))
        else:
            plans.append(LayerPlan(index, "dropout", name, shape, 0))
        if _sample_elements(shape) > MAX_SAMPLE_VALUES:
            raise InvalidArgument(
                f"{_where(index, layer)} outputs {shape_text(shape)}: {_sample_elements(shape)} values per "
                f"sample; at most {MAX_SAMPLE_VALUES} are allowed"
            )
        origin = _where(index, layer)
    head_index = len(spec.layers)
    if len(shape) != 2:
        raise InvalidArgument(
            f"head (index {head_index}, {spec.task.value}) needs a 2-D input (None, units) but {origin} gives "
            f"{len(shape)}-D {shape_text(shape)}; turn return_sequences off on the last LSTM or add a "
            f"reshape layer with target_shape [{_sample_elements(shape)}]"
        )
    units = spec.head.units
    head_shape: Shape = (None, units)
    plans.append(
        LayerPlan(
            head_index,
            "head",
            "head",
            head_shape,
            (shape[1] or 0) * units + units,
            False,
            HEAD_ACTIVATION[spec.task],
        )
    )
    result = SpecPlan(spec, input_shape, tuple(plans))
    if result.total_params > MAX_PARAMS:
        raise InvalidArgument(
            f"the model would have {result.total_params} parameters; at most {MAX_PARAMS} are allowed"
        )
    return result
