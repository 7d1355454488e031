"""Hypothesis strategies for malformed (and sometimes well-formed) tensors, scaler specs and ids.

Besides plain garbage they aim at the classes a hostile-input battery once broke: shapes of more
dimensions than numpy or TensorFlow take, integers beyond their dtype, finite floats beyond float32,
ids that match only up to a final newline, inputs long enough to overflow a status message, and
specs and requests that are cheap to send but costly to run."""

from __future__ import annotations

import numpy as np
from hypothesis import strategies as st

from protos.inference import grpc_service_pb2 as inference_pb2
from protos.lstm_stack.v1 import model_pb2, scaler_pb2, tensor_pb2

NUMPY_BY_DTYPE = {
    tensor_pb2.FLOAT32: "<f4",
    tensor_pb2.FLOAT64: "<f8",
    tensor_pb2.INT32: "<i4",
    tensor_pb2.INT64: "<i8",
}
HUGE_DIMS = [2**31 - 1, 2**31, 2**40, 2**62, 2**63 - 1]
# Finite values float32 cannot hold, and integers (as the values field's doubles) past int32 / int64.
BEYOND_FLOAT32 = [1e300, -1e300, 3.5e38, -1e39, 1.7e308, 1e41]
BEYOND_INT32 = [3e9, -3e9, 2.0**31, -(2.0**31) - 1]
BEYOND_INT64 = [2.0**63, -1e19, 1e300]
INT_BOUNDS = {tensor_pb2.INT32: (-(2**31), 2**31 - 1), tensor_pb2.INT64: (-(2**63), 2**63 - 1)}

# Open enums: unknown numbers arrive as they are, so the server must cope with them.
dtypes = st.one_of(st.sampled_from(list(NUMPY_BY_DTYPE)), st.integers(min_value=-3, max_value=12))
dims = st.one_of(st.integers(min_value=-3, max_value=6), st.sampled_from(HUGE_DIMS))
# Past the codec's 8 (and numpy's 64) dimensions, in a shape that still holds one element.
high_rank_shapes = st.integers(min_value=9, max_value=300).map(lambda n: [1] * n)
shapes = st.one_of(st.lists(dims, max_size=5), high_rank_shapes)
nasty_floats = st.one_of(
    st.floats(allow_nan=True, allow_infinity=True),
    st.sampled_from([0.0, -0.0, 1e308, -1e308, 5e-324, 3.4e38, np.nan, np.inf, -np.inf]),
)


@st.composite
def arbitrary_tensors(draw: st.DrawFn) -> tensor_pb2.Tensor:
    """Any combination of dtype, shape, raw bytes and values: mostly inconsistent."""
    tensor = tensor_pb2.Tensor(dtype=draw(dtypes), shape=draw(shapes))
    if draw(st.booleans()):
        tensor.raw = draw(st.binary(max_size=96))
    if draw(st.booleans()):
        tensor.values.extend(draw(st.lists(nasty_floats, max_size=12)))
    return tensor


@st.composite
def out_of_range_tensors(draw: st.DrawFn, sample_shape: tuple[int, ...] = (3,)) -> tensor_pb2.Tensor:
    """Consistent tensors whose values do not fit their dtype: integers beyond INT32/INT64 (values form)
    or finite floats beyond FLOAT32 (FLOAT32 values form, or FLOAT64 raw bytes for a float32 model)."""
    rows = draw(st.integers(min_value=1, max_value=4))
    shape = [rows, *sample_shape]
    count = int(np.prod(shape))
    dtype = draw(
        st.sampled_from([tensor_pb2.INT32, tensor_pb2.INT64, tensor_pb2.FLOAT32, tensor_pb2.FLOAT64])
    )
    bad = {
        tensor_pb2.INT32: BEYOND_INT32,
        tensor_pb2.INT64: BEYOND_INT64,
        tensor_pb2.FLOAT32: BEYOND_FLOAT32,
        tensor_pb2.FLOAT64: BEYOND_FLOAT32,
    }[dtype]
    values = draw(
        st.lists(st.integers(min_value=-50, max_value=50).map(float), min_size=count, max_size=count)
    )
    values[draw(st.integers(min_value=0, max_value=count - 1))] = draw(st.sampled_from(bad))
    if dtype == tensor_pb2.FLOAT64:
        return tensor_pb2.Tensor(dtype=dtype, shape=shape, raw=np.asarray(values, "<f8").tobytes())
    return tensor_pb2.Tensor(dtype=dtype, shape=shape, values=values)


def fits_its_dtype(tensor: tensor_pb2.Tensor) -> bool:
    """False when a values-form tensor holds an integer its INT dtype cannot, or a finite float FLOAT32
    cannot; such a tensor must never be answered OK."""
    values = np.asarray(tensor.values, dtype=np.float64)
    if tensor.dtype in INT_BOUNDS:
        low, high = INT_BOUNDS[tensor.dtype]
        finite = values[np.isfinite(values)]
        return bool(np.all((finite >= low) & (finite < float(high) + 1)))
    if tensor.dtype == tensor_pb2.FLOAT32:
        finite = values[np.isfinite(values)]
        return bool(np.all(np.abs(finite) <= np.finfo(np.float32).max))
    return True


def holds_values_beyond_float32(tensor: tensor_pb2.Tensor) -> bool:
    """Whether any finite value of a (consistent) tensor is beyond float32's range."""
    if tensor.values:
        values = np.asarray(tensor.values, dtype=np.float64)
    elif tensor.dtype == tensor_pb2.FLOAT64 and len(tensor.raw) % 8 == 0:
        values = np.frombuffer(tensor.raw, "<f8")
    else:
        return False
    finite = values[np.isfinite(values)]
    return bool(np.any(np.abs(finite) > np.finfo(np.float32).max))


@st.composite
def consistent_tensors(draw: st.DrawFn, max_dims: int = 3, max_side: int = 5) -> tensor_pb2.Tensor:
    """Shape, dtype and byte length agree; the values may still be NaN, inf or enormous."""
    shape = draw(st.lists(st.integers(min_value=0, max_value=max_side), min_size=1, max_size=max_dims))
    dtype = draw(st.sampled_from(list(NUMPY_BY_DTYPE)))
    count = int(np.prod(shape))
    if NUMPY_BY_DTYPE[dtype].startswith("<f"):
        values = draw(st.lists(nasty_floats, min_size=count, max_size=count))
        with np.errstate(over="ignore", invalid="ignore"):
            array = np.asarray(values, dtype=np.float64).astype(NUMPY_BY_DTYPE[dtype])
    else:
        bound = 2**31 - 1 if dtype == tensor_pb2.INT32 else 2**63 - 1
        values = draw(st.lists(st.integers(-bound - 1, bound), min_size=count, max_size=count))
        array = np.asarray(values, dtype=NUMPY_BY_DTYPE[dtype])
    if draw(st.booleans()) and count > 0:
        # The JSON form: values + shape, dtype possibly absent.
        return tensor_pb2.Tensor(
            dtype=draw(st.sampled_from([0, dtype])),
            shape=shape if draw(st.booleans()) else [],
            values=array.astype(np.float64).ravel().tolist(),
        )
    return tensor_pb2.Tensor(dtype=dtype, shape=shape, raw=array.reshape(shape).tobytes())


@st.composite
def plausible_data(draw: st.DrawFn) -> tensor_pb2.Tensor:
    """Finite float data of a sane shape, so the code past the decoder gets exercised too."""
    rows = draw(st.integers(min_value=0, max_value=12))
    shape = [rows, *draw(st.lists(st.integers(min_value=0, max_value=4), min_size=1, max_size=2))]
    finite = st.floats(min_value=-1e6, max_value=1e6, allow_nan=False, allow_infinity=False)
    values = draw(st.lists(finite, min_size=int(np.prod(shape)), max_size=int(np.prod(shape))))
    return tensor_pb2.Tensor(
        dtype=tensor_pb2.FLOAT64, shape=shape, raw=np.asarray(values, dtype="<f8").reshape(shape).tobytes()
    )


@st.composite
def shaped_data(draw: st.DrawFn, sample_shape: tuple[int, ...], finite: bool = False) -> tensor_pb2.Tensor:
    """Rows of the given sample shape in a random dtype; values may be NaN/inf unless ``finite``."""
    shape = [draw(st.integers(min_value=0, max_value=6)), *sample_shape]
    count = int(np.prod(shape))
    elements = (
        st.floats(min_value=-1e9, max_value=1e9, allow_nan=False, allow_infinity=False)
        if finite
        else nasty_floats
    )
    dtype = draw(st.sampled_from([tensor_pb2.FLOAT32, tensor_pb2.FLOAT64]))
    with np.errstate(over="ignore", invalid="ignore"):
        array = np.asarray(draw(st.lists(elements, min_size=count, max_size=count)), dtype=np.float64)
        if finite and dtype == tensor_pb2.FLOAT64 and count and draw(st.integers(0, 4)) == 0:
            # Finite, but not for a float32 model.
            array.flat[draw(st.integers(0, count - 1))] = draw(st.sampled_from(BEYOND_FLOAT32))
        array = array.astype(NUMPY_BY_DTYPE[dtype]).reshape(shape)
    return tensor_pb2.Tensor(dtype=dtype, shape=shape, raw=array.tobytes())


def tensors() -> st.SearchStrategy[tensor_pb2.Tensor]:
    # Plausible data twice: half the examples get past the decoder into the real code.
    return st.one_of(
        arbitrary_tensors(), consistent_tensors(), out_of_range_tensors(), plausible_data(), plausible_data()
    )


valid_ids = st.from_regex(r"[A-Za-z0-9][A-Za-z0-9_-]{0,20}", fullmatch=True)
# A valid id and a line break, a NUL or a carriage return after it: "^...$" with match() took them.
almost_valid_ids = st.builds(
    lambda base, tail: base + tail, valid_ids, st.sampled_from(["\n", "\r\n", "\x00", "\n\n", " ", "\t"])
)
ids = st.one_of(
    st.just(""),
    valid_ids,
    almost_valid_ids,
    st.text(max_size=40),
    st.sampled_from(["..", "../etc", "a/b", ".hidden", "x" * 200, "ok-id", "a\x00b", "-lead", "ünï"]),
    st.sampled_from(["x" * 10_000, "ü" * 5_000, "\n" * 3_000]),  # longer than any message may repeat
)
versions = st.one_of(st.just(0), st.integers(min_value=0, max_value=3), st.just(2**32 - 1))
page_sizes = st.integers(min_value=-(2**31), max_value=2**31 - 1)
page_tokens = st.one_of(
    st.just(""),
    st.text(max_size=30),
    st.sampled_from(
        ["Zm9vLzE=", "!!!", "YS8tMQ==", "YS8gMQo=", "YS8xXzA=", "Y" * 10_000]
    ),  # "a/ 1\n", "a/1_0"
)
optional_floats = st.one_of(st.none(), nasty_floats)


KIND_PARAMS = {
    scaler_pb2.MINMAX: "minmax",
    scaler_pb2.STANDARD: "standard",
    scaler_pb2.ROBUST: "robust",
    scaler_pb2.MAXABS: "maxabs",
}


@st.composite
def scaler_specs(draw: st.DrawFn) -> scaler_pb2.ScalerSpec:
    """Mostly a known kind and layout with matching (maybe absurd) parameters; sometimes anything at all."""
    wild = draw(st.integers(min_value=0, max_value=3)) == 0
    if wild:
        kind = draw(st.integers(min_value=-1, max_value=6))
        layout = draw(st.integers(min_value=-1, max_value=4))
        which = draw(st.sampled_from([None, "minmax", "standard", "robust", "maxabs"]))
    else:
        kind = draw(st.sampled_from(list(KIND_PARAMS)))
        layout = draw(st.sampled_from([0, 1, 2]))
        which = draw(st.sampled_from([None, KIND_PARAMS[kind]]))
    spec = scaler_pb2.ScalerSpec(kind=kind, layout=layout)
    if which == "minmax":
        params = scaler_pb2.MinMaxParams(clip=draw(st.booleans()))
        for name in ("feature_min", "feature_max"):
            value = draw(optional_floats)
            if value is not None:
                setattr(params, name, value)
        spec.minmax.CopyFrom(params)
    elif which == "standard":
        spec.standard.CopyFrom(
            scaler_pb2.StandardParams(with_mean=draw(st.booleans()), with_std=draw(st.booleans()))
        )
    elif which == "robust":
        params = scaler_pb2.RobustParams(unit_variance=draw(st.booleans()))
        for name in ("quantile_min", "quantile_max"):
            value = draw(st.one_of(optional_floats, st.floats(min_value=0, max_value=100)))
            if value is not None:
                setattr(params, name, value)
        if draw(st.booleans()):
            params.with_centering = draw(st.booleans())
        spec.robust.CopyFrom(params)
    elif which == "maxabs":
        spec.maxabs.SetInParent()
    return spec


# ---- model service ----

small_counts = st.one_of(
    st.integers(min_value=-2, max_value=8), st.sampled_from([0, 1024, 4096, 4097, 10_001, 2**31 - 1])
)
activations = st.one_of(
    st.sampled_from(["", "relu", "tanh", "sigmoid", "linear", "elu", "softmax"]),
    st.text(max_size=12),
    st.sampled_from(["lambda", "__import__('os')", "exec", "get"]),
)


@st.composite
def model_layers(draw: st.DrawFn) -> model_pb2.Layer:
    kind = draw(st.sampled_from(["lstm", "lstm", "dense", "reshape", "dropout", "none"]))
    layer = model_pb2.Layer()
    if kind == "lstm":
        layer.lstm.units = draw(small_counts)
        layer.lstm.activation = draw(activations)
        if draw(st.booleans()):
            layer.lstm.return_sequences = draw(st.booleans())
    elif kind == "dense":
        layer.dense.units = draw(small_counts)
        layer.dense.activation = draw(activations)
    elif kind == "reshape":
        target = draw(
            st.one_of(
                st.lists(dims, max_size=4),
                # Many dimensions: TensorFlow aborted the process at 254, failed from 9.
                st.integers(min_value=6, max_value=300).map(lambda n: [-1, *([1] * n)]),
                st.sampled_from([[-1, 1], [-1, 4096], [4096, -1]]),  # (n, 1) before a wide Dense
            )
        )
        layer.reshape.target_shape.extend(target)
    elif kind == "dropout":
        layer.dropout.rate = draw(nasty_floats)
    return layer


@st.composite
def model_specs(draw: st.DrawFn) -> model_pb2.ModelSpec:
    """Mostly near the seed's (3, 1) LSTM regression; every field may be absurd."""
    spec = model_pb2.ModelSpec(
        input=model_pb2.InputShape(
            timesteps=draw(st.one_of(st.just(3), small_counts)),
            features=draw(st.one_of(st.just(1), small_counts)),
        ),
        layers=draw(st.lists(model_layers(), max_size=4)),
        head=model_pb2.Head(
            task=draw(st.integers(min_value=-1, max_value=5)),
            outputs=draw(small_counts),
            n_classes=draw(small_counts),
        ),
    )
    if draw(st.booleans()):
        spec.optimizer.name = draw(
            st.one_of(st.sampled_from(["adam", "sgd", "rmsprop", "adamw"]), st.text(max_size=8))
        )
        spec.optimizer.learning_rate = draw(nasty_floats)
    return spec


def seed_like_spec(units: int = 3) -> model_pb2.ModelSpec:
    return model_pb2.ModelSpec(
        input=model_pb2.InputShape(timesteps=3, features=1),
        layers=[model_pb2.Layer(lstm=model_pb2.LstmLayer(units=units))],
        head=model_pb2.Head(task=model_pb2.REGRESSION),
    )


@st.composite
def train_requests(draw: st.DrawFn) -> model_pb2.TrainRequest:
    """Train requests that are cheap even when valid: a tiny model, at most 2 epochs of a few rows."""
    request = model_pb2.TrainRequest(
        model_id=draw(ids),
        spec=draw(st.one_of(st.just(seed_like_spec()), model_specs())),
        validation_fraction=draw(st.one_of(st.just(0.0), nasty_floats)),
        epochs=draw(st.one_of(st.integers(min_value=-1, max_value=2), st.sampled_from([2**31 - 1, 100_000]))),
        batch_size=draw(st.one_of(st.integers(min_value=-1, max_value=8), st.just(2**31 - 1))),
        seed=draw(st.integers(min_value=-(2**63), max_value=2**63 - 1)),
        shuffle=draw(st.booleans()),
    )
    source = draw(st.sampled_from(["supervised", "series", "none"]))
    if source == "supervised":
        request.supervised.x.CopyFrom(
            draw(st.one_of(shaped_data((3, 1), finite=True), shaped_data((3,)), tensors()))
        )
        request.supervised.y.CopyFrom(draw(st.one_of(shaped_data((), finite=True), tensors())))
    elif source == "series":
        request.series.series.CopyFrom(draw(st.one_of(shaped_data((), finite=True), tensors())))
        request.series.window = draw(small_counts)
        request.series.target_feature = draw(st.integers(min_value=-1, max_value=3))
    if draw(st.booleans()):
        request.early_stopping.patience = draw(st.integers(min_value=-1, max_value=3))
        request.early_stopping.min_delta = draw(nasty_floats)
    if draw(st.booleans()):
        request.x_scaling.CopyFrom(draw(scaler_specs()))
    if draw(st.booleans()):
        request.y_scaling.CopyFrom(draw(scaler_specs()))
    return request


datatypes = st.one_of(
    st.sampled_from(["FP32", "FP64", "INT32", "BYTES", "BOOL", "FP16", ""]), st.text(max_size=6)
)


@st.composite
def infer_requests(draw: st.DrawFn, model_names: st.SearchStrategy[str]) -> inference_pb2.ModelInferRequest:
    request = inference_pb2.ModelInferRequest(
        model_name=draw(model_names),
        model_version=draw(st.one_of(st.just(""), st.text(max_size=4), st.just("1"))),
    )
    for _ in range(draw(st.integers(min_value=0, max_value=2))):
        tensor = request.inputs.add(
            name=draw(st.one_of(st.just("x"), st.text(max_size=4), st.just("n" * 10_000))),
            datatype=draw(st.one_of(datatypes, st.just("D" * 10_000))),
            shape=draw(st.one_of(st.just([2, 3, 1]), shapes)),
        )
        how = draw(st.sampled_from(["fp32", "fp64", "int", "raw", "huge", "none"]))
        if how == "fp32":
            tensor.contents.fp32_contents.extend(
                draw(st.lists(st.floats(width=32, allow_nan=True, allow_infinity=True), max_size=8))
            )
        elif how == "fp64":
            tensor.contents.fp64_contents.extend(draw(st.lists(nasty_floats, max_size=8)))
        elif how == "int":
            tensor.contents.int_contents.extend(draw(st.lists(st.integers(-(2**31), 2**31 - 1), max_size=8)))
        elif how == "raw":
            request.raw_input_contents.append(draw(st.binary(max_size=64)))
        elif how == "huge":  # a well-formed FP64 input the model's float32 cannot hold
            tensor.datatype = "FP64"
            del tensor.shape[:]
            tensor.shape.extend([2, 3, 1])
            values = [1.0] * 5 + [draw(st.sampled_from(BEYOND_FLOAT32))]
            request.raw_input_contents.append(np.asarray(values, "<f8").tobytes())
    if draw(st.booleans()):
        request.outputs.add(
            name=draw(st.one_of(st.sampled_from(["values", "labels", "probabilities"]), st.text(max_size=5)))
        )
    if draw(st.booleans()):
        request.parameters[draw(st.text(max_size=6))].int64_param = draw(st.integers(-5, 5))
    return request


# ---- costly but well-formed requests (cost admission) ----

WIDE_TIMESTEPS = [3, 100, 500]


def wide_spec(timesteps: int, lstm_units: int, dense_units: int, outputs: int = 1) -> model_pb2.ModelSpec:
    """An LSTM sequence through a Dense layer and a second LSTM: activations of timesteps x dense_units
    per row, parameters of a few thousand."""
    return model_pb2.ModelSpec(
        input=model_pb2.InputShape(timesteps=timesteps, features=1),
        layers=[
            model_pb2.Layer(lstm=model_pb2.LstmLayer(units=lstm_units, return_sequences=True)),
            model_pb2.Layer(dense=model_pb2.DenseLayer(units=dense_units, activation="relu")),
            model_pb2.Layer(lstm=model_pb2.LstmLayer(units=2)),
        ],
        head=model_pb2.Head(task=model_pb2.REGRESSION, outputs=outputs),
    )


@st.composite
def costly_train_requests(draw: st.DrawFn) -> model_pb2.TrainRequest:
    """Valid requests (data matching the spec) whose cost is mostly in the batch size and the widths:
    a few rows of up to 2000 timesteps through up to Dense(4096) (about 300 MB per batch row)."""
    timesteps = draw(st.sampled_from([*WIDE_TIMESTEPS, 2000]))
    spec = wide_spec(
        timesteps,
        draw(st.sampled_from([2, 16])),
        draw(st.sampled_from([16, 1024, 4096])),
        draw(st.sampled_from([1, 1, 5000])),
    )
    rows = draw(st.integers(min_value=1, max_value=3))
    x = np.random.default_rng(rows).normal(size=(rows, timesteps, 1))
    y = np.zeros((rows, spec.head.outputs))
    return model_pb2.TrainRequest(
        spec=spec,
        supervised=model_pb2.SupervisedData(x=tensor_from(x), y=tensor_from(y)),
        epochs=1,
        batch_size=draw(st.sampled_from([1, 2, 64, 4096, 65_536])),
        seed=1,
    )


def tensor_from(array: np.ndarray) -> tensor_pb2.Tensor:
    little = np.ascontiguousarray(array, dtype="<f8")
    return tensor_pb2.Tensor(dtype=tensor_pb2.FLOAT64, shape=list(little.shape), raw=little.tobytes())


@st.composite
def costly_rows(draw: st.DrawFn, timesteps: int, max_bytes: int) -> tensor_pb2.Tensor:
    """Up to as many rows as fit a request of ``max_bytes``; values finite, sometimes beyond float32."""
    rows = draw(st.one_of(st.integers(min_value=1, max_value=8), st.just(max_bytes // (timesteps * 8) - 1)))
    x = np.random.default_rng(rows).normal(size=(rows, timesteps, 1))
    if draw(st.integers(min_value=0, max_value=4)) == 0:
        x[draw(st.integers(min_value=0, max_value=rows - 1)), 0, 0] = draw(st.sampled_from(BEYOND_FLOAT32))
    return tensor_from(x)
