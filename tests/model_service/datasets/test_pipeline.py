"""The tf.data pipeline over a dataset: every sample once an epoch, batches as the in-memory path's,
a seeded bounded shuffle that changes every epoch, scalers applied block by block."""

from __future__ import annotations

import math

import numpy as np

from model_service.affine_scalers import PER_FEATURE, AffineScaler, ScalerRef
from model_service.datasets.pipeline import sample_set
from model_service.datasets.samples import DatasetSamples, Windowing
from tests.model_service.datasets.test_samples import _opened_series

N_ROWS = 1003
WINDOWING = Windowing(3, 1, 1, (0, 1), (1,))


def _samples(monkeypatch) -> DatasetSamples:  # type: ignore[no-untyped-def]
    monkeypatch.setattr("model_service.datasets.samples.BLOCK_SAMPLES", 128)
    series = np.stack([np.arange(N_ROWS, dtype=np.float64), -np.arange(N_ROWS, dtype=np.float64)], axis=1)
    return DatasetSamples(_opened_series(series, [500, 503]), WINDOWING)


def _epochs(dataset, n: int, batch: int, epochs: int) -> list[list[tuple[np.ndarray, np.ndarray]]]:  # type: ignore[no-untyped-def]
    steps = math.ceil(n / batch)
    it = iter(dataset)
    return [[tuple(t.numpy() for t in next(it)) for _ in range(steps)] for _ in range(epochs)]


def _set(samples: DatasetSamples, start: int, stop: int, **kwargs: object):  # type: ignore[no-untyped-def]
    return sample_set(
        samples, start, stop, 64, (3, 2), lambda y, n: y.reshape(n, 1), (1,), np.dtype(np.float32), **kwargs
    )


def test_without_shuffling_the_batches_are_the_samples_in_order(monkeypatch) -> None:  # type: ignore[no-untyped-def]
    samples = _samples(monkeypatch)
    (epoch,) = _epochs(_set(samples, 100, 900), 800, 64, 1)
    assert [len(x) for x, _ in epoch] == [64] * 12 + [32]
    x = np.concatenate([x for x, _ in epoch])
    np.testing.assert_array_equal(x[:, 0, 0], np.arange(100, 900))  # sample i starts at row i
    np.testing.assert_array_equal(np.concatenate([y for _, y in epoch])[:, 0], -np.arange(103, 903))


def test_a_seeded_bounded_shuffle_keeps_every_sample_and_reshuffles_each_epoch(monkeypatch) -> None:  # type: ignore[no-untyped-def]
    samples = _samples(monkeypatch)
    first, second = _epochs(_set(samples, 0, 1000, shuffle_seed=5, shuffle_buffer=300), 1000, 64, 2)
    again, _ = _epochs(_set(samples, 0, 1000, shuffle_seed=5, shuffle_buffer=300), 1000, 64, 2)
    starts = [np.concatenate([x for x, _ in epoch])[:, 0, 0] for epoch in (first, second, again)]
    assert sorted(starts[0]) == sorted(starts[1]) == list(range(1000))
    assert not np.array_equal(starts[0], np.arange(1000)) and not np.array_equal(starts[0], starts[1])
    np.testing.assert_array_equal(starts[0], starts[2])  # seeded
    for epoch in (first, second):
        for x, y in epoch:
            np.testing.assert_array_equal(y[:, 0], -(x[:, 0, 0] + 3))  # pairs stay together


def test_affine_scalers_are_applied_to_every_block(monkeypatch) -> None:  # type: ignore[no-untyped-def]
    samples = _samples(monkeypatch)
    x_scaler = AffineScaler(
        ScalerRef("x", 1), PER_FEATURE, (3, 2), np.array([0.5, 2.0]), np.array([1.0, 0.0])
    )
    y_scaler = AffineScaler(ScalerRef("y", 1), PER_FEATURE, (1,), np.array([0.1]), np.array([0.0]))
    (epoch,) = _epochs(_set(samples, 0, 200, x_scaler=x_scaler, y_scaler=y_scaler), 200, 64, 1)
    x, y = np.concatenate([x for x, _ in epoch]), np.concatenate([y for _, y in epoch])
    np.testing.assert_allclose(x[:, 0, 0], np.arange(200) * 0.5 + 1.0)
    np.testing.assert_allclose(x[:, 0, 1], -np.arange(200) * 2.0)
    np.testing.assert_allclose(y[:, 0], -np.arange(3, 203) * 0.1, rtol=1e-6)
    assert x.dtype == np.float32 and y.dtype == np.float32
