"""Input shaping and checks (input_checks.py): windows, x against the model, y against the task, the holdout."""

from __future__ import annotations

import numpy as np
import pytest

from model_service import input_checks
from model_service.spec import Head, Lstm, ModelSpec, Task, with_defaults
from service_common.errors import InvalidArgument


def spec(task: Task = Task.REGRESSION, timesteps: int = 3, features: int = 1, **head: int) -> ModelSpec:
    return with_defaults(ModelSpec(timesteps, features, (Lstm(4),), Head(task, **head)))


def test_model_input_accepts_2d_when_there_is_one_feature() -> None:
    assert input_checks.model_input(np.ones((2, 3)), 3, 1).shape == (2, 3, 1)
    with pytest.raises(InvalidArgument) as info:
        input_checks.model_input(np.ones((2, 3)), 3, 2)
    assert "(batch, 3, 2)" in str(info.value) and "[2, 3]" in str(info.value)


@pytest.mark.parametrize(
    ("x", "fragment"),
    [
        (np.ones((2, 4, 1)), "x has shape [2, 4, 1]; the model expects (batch, 3, 1)"),
        (np.ones((2, 3, 2)), "x has shape [2, 3, 2]"),
        (np.ones((0, 3, 1)), "x is empty"),
        (np.array([[[1.0], [np.inf], [2.0]]]), "finite"),
        (np.ones(3), "x has shape [3]"),
    ],
)
def test_model_input_refuses_what_does_not_fit(x: np.ndarray, fragment: str) -> None:
    with pytest.raises(InvalidArgument) as info:
        input_checks.model_input(x, 3, 1)
    assert fragment in str(info.value)


def test_targets_per_task() -> None:
    assert input_checks.targets(np.arange(4.0), 4, spec()).shape == (4, 1)
    assert input_checks.targets(np.ones((4, 2)), 4, spec(outputs=2)).shape == (4, 2)
    binary = input_checks.targets(np.array([0, 1, 1, 0]), 4, spec(Task.BINARY))
    assert binary.shape == (4, 1) and binary.dtype == np.float64
    multi = input_checks.targets(np.array([[0], [2], [1]]), 3, spec(Task.MULTICLASS, n_classes=3))
    assert multi.tolist() == [0, 2, 1] and multi.dtype == np.int64


@pytest.mark.parametrize(
    ("y", "task_spec", "fragment"),
    [
        (np.arange(5.0), spec(), "x has 4 samples but y has 5"),
        (np.ones((4, 3)), spec(outputs=2), "regression head has 2 output(s)"),
        (np.array([0, 1, 2, 1]), spec(Task.BINARY), "y[2] = 2 is out of range"),
        (np.array([0, 1, 0.5, 1]), spec(Task.BINARY), "class indices (whole numbers); found 0.5"),
        (np.array([0, 3, 1, 1]), spec(Task.MULTICLASS, n_classes=3), "labels in 0..2"),
        (np.array([0, -1, 1, 1]), spec(Task.MULTICLASS, n_classes=3), "y[1] = -1"),
        (np.array([0.0, np.nan, 1, 2]), spec(), "finite"),
    ],
)
def test_bad_targets_are_refused(y: np.ndarray, task_spec: ModelSpec, fragment: str) -> None:
    with pytest.raises(InvalidArgument) as info:
        input_checks.targets(y, 4, task_spec)
    assert fragment in str(info.value)


def test_holdout_is_the_last_fraction() -> None:
    assert input_checks.holdout_size(13, 0.0) == 0
    assert input_checks.holdout_size(10, 0.2) == 2
    assert input_checks.holdout_size(13, 0.01) == 1  # any fraction > 0 holds out at least one sample
    with pytest.raises(InvalidArgument, match="leaves nothing to train on"):
        input_checks.holdout_size(1, 0.5)
    with pytest.raises(InvalidArgument, match=r"\[0, 1\)"):
        input_checks.holdout_size(10, 1.0)


def test_narrowed_is_the_float32_the_model_computes_in() -> None:
    x = np.array([[1.5, -3.4e38], [0.0, 2.0]])
    out = input_checks.narrowed(x, "x")
    assert out.dtype == np.float32 and out.flags.c_contiguous
    np.testing.assert_array_equal(out, x.astype(np.float32))
    assert input_checks.narrowed(out, "x") is out  # already float32 and contiguous: no copy


@pytest.mark.parametrize(
    ("x", "fragment"),
    [
        (np.array([[1.0, 1e300]]), "x: the model's float32 holds only values within ±3.403e+38; found 1e+300 at index [0, 1]"),
        (np.array([-3.5e38]), "found -3.5e+38 at index [0]"),
        (np.array([1.0, np.inf]), "x: values must be finite; found inf"),
        (np.array([np.nan]), "found nan"),
    ],
)  # fmt: skip
def test_narrowed_refuses_what_float32_cannot_hold(x: np.ndarray, fragment: str) -> None:
    # A finite float64 such as 1e300 would become inf in float32, and the model would answer NaN.
    with pytest.raises(InvalidArgument) as info:
        input_checks.narrowed(x, "x")
    assert fragment in str(info.value)
