"""tf.data over a stored dataset: blocks of samples read from the memory-mapped parts (windows built on
the fly), scaled with the job's train-fitted affine scalers, narrowed to float32, then rebatched.

Shuffling is bounded: the order of the blocks is shuffled every epoch (seeded) and samples are shuffled
within a buffer of ``shuffle_buffer`` samples, so memory does not grow with the dataset.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator

import numpy as np
import tensorflow as tf

from model_service import data
from model_service.datasets.samples import DatasetSamples
from model_service.scaling import AffineScaler


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
    x = data.narrowed(x, f"x{scaled}")
    if classes:
        return x, np.ascontiguousarray(y, dtype=y_dtype)
    return x, data.narrowed(y, "y (scaled by the y scaler)" if y_scaler else "y")


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
    checks and shapes a block's y, as data.targets does), repeated: one iterator serves every epoch."""
    classes = y_dtype == np.int64
    ranges = list(samples.ranges(start, stop))
    epoch = [0]

    def blocks() -> Iterator[tuple[np.ndarray, np.ndarray]]:
        order = np.arange(len(ranges))
        if shuffle_seed is not None:
            np.random.default_rng([shuffle_seed, epoch[0]]).shuffle(order)
        epoch[0] += 1
        for index in order:
            lo, hi = ranges[index]
            x, y = samples.block(lo, hi)
            x = x.reshape(hi - lo, *x_shape)
            yield _prepare_block(x, prepare_targets(y, hi - lo), x_scaler, y_scaler, y_dtype, classes)

    x_spec = tf.TensorSpec((None, *x_shape), tf.float32)
    y_spec = tf.TensorSpec((None, *y_shape), tf.int64 if classes else tf.float32)
    dataset = tf.data.Dataset.from_generator(blocks, output_signature=(x_spec, y_spec)).unbatch()
    if shuffle_seed is not None and shuffle_buffer > 1:
        dataset = dataset.shuffle(shuffle_buffer, seed=shuffle_seed, reshuffle_each_iteration=True)
    return dataset.batch(batch_size).repeat().prefetch(2)
