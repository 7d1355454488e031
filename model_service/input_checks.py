"""Input checks and shaping for training, prediction and evaluation (series windows: forecasting/).

Every message says what the model expects and what came, e.g. "x has shape [2, 4, 1]; model expects
(batch, 3, 1)".
"""

from __future__ import annotations

import numpy as np

from model_service.spec import ModelSpec, Task
from service_common.codec import require_finite, require_representable
from service_common.errors import InvalidArgument

MAX_SAMPLES = 10_000_000
# What the models compute in; every input is narrowed to it on the way in.
MODEL_DTYPE = np.dtype(np.float32)
_MODEL_DTYPE_MAX = float(np.finfo(MODEL_DTYPE).max)


def _shape(array: np.ndarray) -> str:
    return "[" + ", ".join(str(d) for d in array.shape) + "]"


def model_input(
    x: np.ndarray, timesteps: int, features: int, name: str = "x", what: str = "batch"
) -> np.ndarray:
    """x as (n, timesteps, features) float64; (n, timesteps) is accepted when features == 1."""
    expected = f"({what}, {timesteps}, {features})"
    if features == 1:
        expected += f" or ({what}, {timesteps})"
    if x.dtype.kind not in "fiu":
        raise InvalidArgument(f"{name}: expected numbers, got dtype {x.dtype}")
    if x.ndim == 2 and features == 1:
        x = x.reshape(x.shape[0], x.shape[1], 1)
    if x.ndim != 3 or x.shape[1:] != (timesteps, features):
        raise InvalidArgument(
            f"{name} has shape {_shape(x)}; the model expects {expected} (timesteps={timesteps}, "
            f"features={features})"
        )
    if x.shape[0] == 0:
        raise InvalidArgument(f"{name} is empty (shape {_shape(x)}); send at least one sample")
    if x.shape[0] > MAX_SAMPLES:
        raise InvalidArgument(f"{name} has {x.shape[0]} samples; at most {MAX_SAMPLES} are accepted")
    require_finite(x, name)
    return x.astype(np.float64, copy=False)


def narrowed(array: np.ndarray, name: str) -> np.ndarray:
    """``array`` as the model computes on it (contiguous float32), refusing what float32 cannot hold: a
    finite float64 such as 1e300 would become inf and come out of the model as NaN."""
    if array.dtype != MODEL_DTYPE:
        # One pass for the common case; NaN and inf fail the comparison as well.
        with np.errstate(invalid="ignore"):
            fits = bool((np.abs(array) <= _MODEL_DTYPE_MAX).all())
        if not fits:
            require_finite(array, name)
            require_representable(array, MODEL_DTYPE, name, "the model's float32")
    return np.ascontiguousarray(array, dtype=MODEL_DTYPE)


def targets(y: np.ndarray, n_samples: int, spec: ModelSpec, name: str = "y") -> np.ndarray:
    """y checked against the task: regression (n, outputs) float64; binary (n, 1) of 0/1; multiclass (n,) int."""
    if y.dtype.kind not in "fiu":
        raise InvalidArgument(f"{name}: expected numbers, got dtype {y.dtype}")
    require_finite(y, name)
    if y.ndim == 0 or y.shape[0] != n_samples:
        got = "a scalar" if y.ndim == 0 else f"{y.shape[0]} (shape {_shape(y)})"
        raise InvalidArgument(f"x has {n_samples} samples but {name} has {got}; they must match")
    task = spec.task
    if task is Task.REGRESSION:
        outputs = spec.head.units
        if y.ndim == 1 and outputs == 1:
            y = y.reshape(-1, 1)
        if y.ndim != 2 or y.shape[1] != outputs:
            raise InvalidArgument(
                f"{name} has shape {_shape(y)}; the regression head has {outputs} output(s), so {name} must be "
                f"({n_samples}, {outputs})" + (f" or ({n_samples},)" if outputs == 1 else "")
            )
        return y.astype(np.float64, copy=False)
    if y.ndim == 2 and y.shape[1] == 1:
        y = y.reshape(-1)
    if y.ndim != 1:
        raise InvalidArgument(
            f"{name} has shape {_shape(y)}; {task.value} needs one class index per sample: ({n_samples},)"
        )
    whole = y == np.round(y)
    if not whole.all():
        index = int(np.argmin(whole))
        raise InvalidArgument(
            f"{name} must hold class indices (whole numbers); found {y[index]} at index {index}"
        )
    classes = 2 if task is Task.BINARY else spec.head.n_classes
    bad = (y < 0) | (y >= classes)
    if bad.any():
        index = int(np.argmax(bad))
        allowed = "{0, 1}" if task is Task.BINARY else f"0..{classes - 1}"
        raise InvalidArgument(
            f"{name}[{index}] = {y[index]:g} is out of range: {task.value} with {classes} classes takes labels in "
            f"{allowed}"
        )
    if task is Task.BINARY:
        return y.astype(np.float64).reshape(-1, 1)
    return y.astype(np.int64)


def holdout_size(n_samples: int, fraction: float) -> int:
    """The last ``fraction`` of the samples (time order) form the holdout; at least one of each."""
    if not (np.isfinite(fraction) and 0.0 <= fraction < 1.0):
        raise InvalidArgument(f"validation_fraction must be in [0, 1), got {fraction}")
    if fraction == 0.0:
        return 0
    n_val = max(1, int(round(n_samples * fraction)))
    if n_samples - n_val < 1:
        raise InvalidArgument(
            f"validation_fraction {fraction} of {n_samples} samples leaves nothing to train on; "
            "send more samples or a smaller fraction"
        )
    return n_val
