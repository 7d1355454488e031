"""Samples read back in blocks: the same windows as SeriesData, across part boundaries, any stride/horizon."""

from __future__ import annotations

import numpy as np
import pytest

from model_service.datasets.dataset_store import ArrayInfo, DatasetMeta, OpenedDataset
from model_service.datasets.samples import ChunkedArray, DatasetSamples, Windowing
from model_service.forecasting.windowing import forecast_windows


class _NoHold:
    def release(self) -> None:
        pass


def _opened_series(series: np.ndarray, part_rows: list[int]) -> OpenedDataset:
    bounds = np.cumsum([0, *part_rows])
    parts = [series[a:b] for a, b in zip(bounds[:-1], bounds[1:], strict=True)]
    meta = DatasetMeta(
        "ds-" + "0" * 32,
        "series",
        tuple(f"c{i}" for i in range(series.shape[1])),
        tuple(part_rows),
        (ArrayInfo("series", series.dtype.str, series.shape),),
        series.nbytes,
        "now",
    )
    return OpenedDataset(meta, {"series": parts}, _NoHold())  # type: ignore[arg-type]


def test_chunked_rows_come_back_whole_across_part_boundaries() -> None:
    rows = np.arange(30, dtype=np.float32).reshape(10, 3)
    chunked = ChunkedArray([rows[:3], rows[3:4], rows[4:]])
    assert chunked.rows == 10
    np.testing.assert_array_equal(chunked.take(2, 7), rows[2:7])
    np.testing.assert_array_equal(chunked.take(0, 10, columns=[2, 0]), rows[:, [2, 0]])
    np.testing.assert_array_equal(chunked.take(8, 50), rows[8:])
    assert chunked.take(10, 12).shape == (0, 3)


def test_series_windows_are_those_of_series_data_whatever_the_parts_and_blocks() -> None:
    series = np.random.default_rng(0).normal(size=(97, 2))
    x_all, y_all = forecast_windows(series, 5, 1, 1, (0, 1), (1,))
    opened = _opened_series(series, [10, 1, 40, 46])
    samples = DatasetSamples(opened, Windowing(5, 1, 1, (0, 1), (1,)))
    assert samples.n == len(x_all) == 92
    blocks = [samples.block(lo, hi) for lo, hi in samples.ranges(0, samples.n, 7)]
    np.testing.assert_array_equal(np.concatenate([x for x, _ in blocks]), x_all)
    np.testing.assert_array_equal(np.concatenate([y for _, y in blocks]).reshape(-1), y_all.reshape(-1))
    np.testing.assert_array_equal(samples.targets_block(3, 50).reshape(-1), y_all[3:50].reshape(-1))


@pytest.mark.parametrize(("stride", "horizon"), [(3, 1), (2, 4), (1, 3)])
def test_stride_and_horizon_pick_the_rows_they_say(stride: int, horizon: int) -> None:
    series = np.arange(60, dtype=np.float64).reshape(30, 2)  # row r = (2r, 2r+1)
    windowing = Windowing(4, stride, horizon, (0,), (1,))
    samples = DatasetSamples(_opened_series(series, [11, 19]), windowing)
    assert samples.n == (30 - 4 - horizon) // stride + 1
    x, y = samples.block(0, samples.n)
    for i in (0, samples.n - 1):
        start = i * stride
        np.testing.assert_array_equal(x[i, :, 0], series[start : start + 4, 0])
        np.testing.assert_array_equal(y[i], series[start + 4 : start + 4 + horizon, 1])
    np.testing.assert_array_equal(samples.targets_block(0, samples.n), y)


def test_too_short_a_series_makes_no_sample() -> None:
    assert Windowing(5).count(5) == 0
    assert Windowing(5).count(6) == 1
    assert Windowing(5, horizon=2).count(6) == 0
