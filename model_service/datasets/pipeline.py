"""tf.data over a stored dataset: blocks of samples read from the memory-mapped parts (windows built on
the fly), scaled with the job's train-fitted affine scalers, narrowed to float32, cut into batches here.

Shuffling is bounded: the order of the blocks is shuffled every epoch (seeded) and samples are
permuted within pools of at least ``shuffle_buffer`` samples (consecutive blocks in that order), so
memory does not grow with the dataset. Batches are cut in numpy, so tf.data does no per-sample work:
an epoch is ceil(n / batch_size) batches, the last one partial, as the in-memory path's
``from_tensor_slices(...).batch(...)``; without shuffling the batches are the same.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator

import numpy as np
import tensorflow as tf

from model_service import input_checks
from model_service.affine_scalers import AffineScaler
from model_service.datasets.samples import DatasetSamples


def _prepare_block(
    x: np.ndarray,
    y: np.ndarray,
    x_scaler: AffineScaler | None,
    y_scaler: AffineScaler | None,
    y_dtype: np.dtype,
    classes: bool,
) -> tuple[np.ndarray, np.ndarray]:
    if x_scaler is not None:
        x = x_scaler.transform(x)
    if y_scaler is not None:
        y = y_scaler.transform(y)
    scaled = " (scaled by the x scaler)" if x_scaler else ""
    x = input_checks.narrowed(x, f"x{scaled}")
    if classes:
        return x, np.ascontiguousarray(y, dtype=y_dtype)
    return x, input_checks.narrowed(y, "y (scaled by the y scaler)" if y_scaler else "y")


def sample_set(
    samples: DatasetSamples,
    start: int,
    stop: int,
    batch_size: int,
    x_shape: tuple[int, int],
    prepare_targets: Callable[[np.ndarray, int], np.ndarray],
    y_shape: tuple[int, ...],
    y_dtype: np.dtype,
    x_scaler: AffineScaler | None = None,
    y_scaler: AffineScaler | None = None,
    shuffle_seed: int | None = None,
    shuffle_buffer: int = 0,
) -> tf.data.Dataset:
    """Samples [start, stop) as (timesteps, features) x and ``y_shape`` targets (``prepare_targets``
    checks and shapes a block's y, as input_checks.targets does), repeated: one iterator serves every epoch."""
    classes = y_dtype == np.int64
    ranges = list(samples.ranges(start, stop))
    pool_size = max(shuffle_buffer, 1) if shuffle_seed is not None else 1
    epoch = [0]

    def prepared(lo: int, hi: int) -> tuple[np.ndarray, np.ndarray]:
        x, y = samples.block(lo, hi)
        x = x.reshape(hi - lo, *x_shape)
        return _prepare_block(x, prepare_targets(y, hi - lo), x_scaler, y_scaler, y_dtype, classes)

    def pools(rng: np.random.Generator | None) -> Iterator[tuple[np.ndarray, np.ndarray]]:
        order = np.arange(len(ranges))
        if rng is not None:
            rng.shuffle(order)
        xs: list[np.ndarray] = []
        ys: list[np.ndarray] = []
        held = 0
        for index in order:
            x, y = prepared(*ranges[index])
            xs.append(x)
            ys.append(y)
            held += len(x)
            if held >= pool_size:
                yield _pool(xs, ys, rng)
                xs, ys, held = [], [], 0
        if xs:
            yield _pool(xs, ys, rng)

    def batches() -> Iterator[tuple[np.ndarray, np.ndarray]]:
        rng = np.random.default_rng([shuffle_seed, epoch[0]]) if shuffle_seed is not None else None
        epoch[0] += 1
        carry_x: np.ndarray | None = None
        carry_y: np.ndarray | None = None
        for x, y in pools(rng):
            if carry_x is not None and carry_y is not None:
                x, y = np.concatenate([carry_x, x]), np.concatenate([carry_y, y])
            whole = len(x) - len(x) % batch_size
            for lo in range(0, whole, batch_size):
                yield x[lo : lo + batch_size], y[lo : lo + batch_size]
            carry_x, carry_y = x[whole:], y[whole:]
        if carry_x is not None and carry_y is not None and len(carry_x):
            yield carry_x, carry_y  # the epoch's last, partial batch

    x_spec = tf.TensorSpec((None, *x_shape), tf.float32)
    y_spec = tf.TensorSpec((None, *y_shape), tf.int64 if classes else tf.float32)
    dataset = tf.data.Dataset.from_generator(batches, output_signature=(x_spec, y_spec))
    return dataset.repeat().prefetch(2)


def _pool(
    xs: list[np.ndarray], ys: list[np.ndarray], rng: np.random.Generator | None
) -> tuple[np.ndarray, np.ndarray]:
    x = np.concatenate(xs) if len(xs) > 1 else xs[0]
    y = np.concatenate(ys) if len(ys) > 1 else ys[0]
    if rng is None:
        return x, y
    permutation = rng.permutation(len(x))
    return x[permutation], y[permutation]
