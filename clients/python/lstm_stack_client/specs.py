"""Builders for ScalerSpec and ModelSpec: from keyword arguments, a compact layer string, or proto JSON."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import TypeVar

from google.protobuf import json_format

from protos.lstm_stack.v1 import model_pb2, scaler_pb2

E = TypeVar("E")

SCALER_KINDS = {
    "minmax": scaler_pb2.MINMAX,
    "standard": scaler_pb2.STANDARD,
    "robust": scaler_pb2.ROBUST,
    "maxabs": scaler_pb2.MAXABS,
}
LAYOUTS = {
    "per-feature": scaler_pb2.PER_FEATURE,
    "per_feature": scaler_pb2.PER_FEATURE,
    "per-column": scaler_pb2.PER_COLUMN,
    "per_column": scaler_pb2.PER_COLUMN,
}
TASKS = {
    "regression": model_pb2.REGRESSION,
    "binary": model_pb2.BINARY,
    "multiclass": model_pb2.MULTICLASS,
}

LAYER_SYNTAX = (
    "comma-separated layers: lstm:UNITS[:ACTIVATION][:seq|:noseq], dense:UNITS[:ACTIVATION], "
    "reshape:10x1, dropout:RATE — e.g. lstm:10:relu,lstm:2:relu,lstm:10:relu,dense:5"
)


class SpecError(ValueError):
    """A spec given by the caller cannot be understood; the message says what was expected."""


def _choice(table: Mapping[str, E], name: str, what: str) -> E:
    key = name.strip().lower()
    if key not in table:
        options = ", ".join(sorted({k.replace("_", "-") for k in table}))
        raise SpecError(f"unknown {what} {name!r}; expected one of {options}")
    return table[key]


def scaler_spec(
    kind: str | int,
    layout: str | int | None = None,
    *,
    feature_range: tuple[float, float] | None = None,
    clip: bool = False,
    with_mean: bool | None = None,
    with_std: bool | None = None,
    quantile_range: tuple[float, float] | None = None,
    with_centering: bool | None = None,
    with_scaling: bool | None = None,
    unit_variance: bool = False,
) -> scaler_pb2.ScalerSpec:
    """A ScalerSpec; ``kind`` is minmax/standard/robust/maxabs (or the enum), parameters as in scikit-learn."""
    kind_code = (
        _choice(SCALER_KINDS, kind, "scaler kind")
        if isinstance(kind, str)
        else scaler_pb2.ScalerKind.ValueType(kind)
    )
    spec = scaler_pb2.ScalerSpec(kind=kind_code)
    if layout is not None:
        spec.layout = (
            _choice(LAYOUTS, layout, "layout")
            if isinstance(layout, str)
            else scaler_pb2.Layout.ValueType(layout)
        )
    if kind_code == scaler_pb2.MINMAX:
        spec.minmax.clip = clip
        if feature_range is not None:
            spec.minmax.feature_min, spec.minmax.feature_max = feature_range
    elif kind_code == scaler_pb2.STANDARD:
        spec.standard.SetInParent()
        if with_mean is not None:
            spec.standard.with_mean = with_mean
        if with_std is not None:
            spec.standard.with_std = with_std
    elif kind_code == scaler_pb2.ROBUST:
        spec.robust.unit_variance = unit_variance
        if quantile_range is not None:
            spec.robust.quantile_min, spec.robust.quantile_max = quantile_range
        if with_centering is not None:
            spec.robust.with_centering = with_centering
        if with_scaling is not None:
            spec.robust.with_scaling = with_scaling
    elif kind_code == scaler_pb2.MAXABS:
        spec.maxabs.SetInParent()
    return spec


def parse_scaler_option(text: str) -> scaler_pb2.ScalerSpec:
    """``KIND[:LAYOUT]``, e.g. ``robust`` or ``minmax:per-column`` (the CLI's --x-scaler form)."""
    kind, _, layout = text.partition(":")
    return scaler_spec(kind, layout or None)


def _parse_int(text: str, what: str) -> int:
    try:
        return int(text)
    except ValueError:
        raise SpecError(f"{what}: expected a whole number, got {text!r}") from None


def parse_layer(text: str) -> model_pb2.Layer:
    """One layer of the compact form, e.g. ``lstm:10:relu:seq``, ``dense:5``, ``reshape:10x1``."""
    parts = [p.strip() for p in text.strip().split(":")]
    kind = parts[0].lower()
    args = parts[1:]
    if kind == "lstm":
        if not args:
            raise SpecError(f"layer {text!r}: lstm needs a unit count, e.g. lstm:10:relu")
        lstm = model_pb2.LstmLayer(units=_parse_int(args[0], f"layer {text!r}"))
        for extra in args[1:]:
            if extra.lower() in {"seq", "rs", "return_sequences"}:
                lstm.return_sequences = True
            elif extra.lower() in {"noseq", "last"}:
                lstm.return_sequences = False
            elif extra:
                lstm.activation = extra
        return model_pb2.Layer(lstm=lstm)
    if kind == "dense":
        if not args or len(args) > 2:
            raise SpecError(f"layer {text!r}: expected dense:UNITS[:ACTIVATION]")
        dense = model_pb2.DenseLayer(units=_parse_int(args[0], f"layer {text!r}"))
        if len(args) == 2:
            dense.activation = args[1]
        return model_pb2.Layer(dense=dense)
    if kind == "reshape":
        dims = [d for arg in args for d in arg.lower().replace("x", ",").split(",") if d]
        if not dims:
            raise SpecError(f"layer {text!r}: expected reshape:DIMxDIM, e.g. reshape:10x1")
        return model_pb2.Layer(
            reshape=model_pb2.ReshapeLayer(target_shape=[_parse_int(d, f"layer {text!r}") for d in dims])
        )
    if kind == "dropout":
        if len(args) != 1:
            raise SpecError(f"layer {text!r}: expected dropout:RATE, e.g. dropout:0.2")
        try:
            rate = float(args[0])
        except ValueError:
            raise SpecError(f"layer {text!r}: rate must be a number, got {args[0]!r}") from None
        return model_pb2.Layer(dropout=model_pb2.DropoutLayer(rate=rate))
    raise SpecError(f"layer {text!r}: unknown layer kind {kind!r}; {LAYER_SYNTAX}")


def parse_layers(text: str) -> list[model_pb2.Layer]:
    items = [item for item in text.split(",") if item.strip()]
    if not items:
        raise SpecError(f"no layers given; {LAYER_SYNTAX}")
    return [parse_layer(item) for item in items]


def model_spec(
    layers: str | Sequence[model_pb2.Layer],
    *,
    timesteps: int,
    features: int = 1,
    task: str | int = "regression",
    outputs: int = 0,
    n_classes: int = 0,
    optimizer: str = "",
    learning_rate: float = 0.0,
) -> model_pb2.ModelSpec:
    """A ModelSpec from the compact layer form (or Layer messages) plus input shape and head."""
    layer_list = parse_layers(layers) if isinstance(layers, str) else list(layers)
    task_code = _choice(TASKS, task, "task") if isinstance(task, str) else model_pb2.Task.ValueType(task)
    return model_pb2.ModelSpec(
        input=model_pb2.InputShape(timesteps=timesteps, features=features),
        layers=layer_list,
        head=model_pb2.Head(task=task_code, outputs=outputs, n_classes=n_classes),
        optimizer=model_pb2.Optimizer(name=optimizer, learning_rate=learning_rate),
    )


def load_model_spec(path: str | Path) -> model_pb2.ModelSpec:
    """Read a ModelSpec written as proto JSON (field names as in the .proto or lowerCamelCase)."""
    text = Path(path).read_text(encoding="utf-8")
    try:
        return json_format.Parse(text, model_pb2.ModelSpec())
    except json_format.ParseError as exc:
        raise SpecError(f"{path}: not a ModelSpec in proto JSON: {exc}") from None
