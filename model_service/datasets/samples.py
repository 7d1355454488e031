"""Samples read back from a stored dataset in blocks: rows copied out of the memory-mapped parts, and for
series the windows built on the fly, so no step ever holds the dataset (or its windows) whole. A part is
mapped only while its rows are copied, so reading holds one file descriptor, however many parts.

Windowing (series): sample i is x[i] = rows[i*stride : i*stride+window] of the input columns and
y[i] = rows[i*stride+window : i*stride+window+horizon] of the target columns: (targets,) for horizon 1,
as SeriesData does (stride 1), else (horizon*targets,) horizon-major (y[i, k*targets + j] is step k of
target j). The horizon is a parameter here (default 1) for the forecasting path to use.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass

import numpy as np

from model_service.datasets.dataset_store import SERIES, OpenedDataset, StoredPart
from model_service.forecasting.config import ForecastConfig, Strategy
from model_service.spec import ModelSpec
from service_common.errors import InvalidArgument, echo

# A block holds at most this many samples, and about this many bytes of x windows (float64).
BLOCK_SAMPLES = 8192
BLOCK_BYTES = 16 << 20


class ChunkedArray:
    """The parts of one stored array as one array of rows (only the rows asked for are read). Parts are
    stored ones (mapped while read) or arrays in memory."""

    def __init__(self, parts: Sequence[StoredPart | np.ndarray]) -> None:
        self._parts = list(parts)
        self._starts = np.cumsum([0, *(_rows(p) for p in self._parts)])
        self.rows = int(self._starts[-1])
        first = self._parts[0] if self._parts else None
        self.sample_shape: tuple[int, ...] = () if first is None else _sample_shape(first)
        self.dtype = np.dtype(np.float64) if first is None else np.dtype(first.dtype)

    def take(self, start: int, stop: int, columns: Sequence[int] | None = None) -> np.ndarray:
        """A copy of rows [start, stop) (of ``columns`` only, for 2-D arrays)."""
        start, stop = max(start, 0), min(stop, self.rows)
        shape = self.sample_shape if columns is None else (len(columns),)
        out = np.empty((max(stop - start, 0), *shape), dtype=self.dtype)
        if stop <= start:
            return out
        first = int(np.searchsorted(self._starts, start, side="right")) - 1
        for index in range(max(first, 0), len(self._parts)):
            offset = int(self._starts[index])
            if offset >= stop:
                break
            stored = self._parts[index]
            part = stored.load() if isinstance(stored, StoredPart) else stored
            lo, hi = max(start - offset, 0), min(stop - offset, part.shape[0])
            piece = part[lo:hi] if columns is None else part[lo:hi][:, list(columns)]
            out[offset + lo - start : offset + hi - start] = piece
            del part, piece  # the part's mapping goes before the next one is made
        return out


def _rows(part: StoredPart | np.ndarray) -> int:
    return part.rows if isinstance(part, StoredPart) else int(part.shape[0])


def _sample_shape(part: StoredPart | np.ndarray) -> tuple[int, ...]:
    return part.sample_shape if isinstance(part, StoredPart) else tuple(part.shape[1:])


@dataclass(frozen=True)
class Windowing:
    window: int
    stride: int = 1
    horizon: int = 1
    inputs: tuple[int, ...] = (0,)
    targets: tuple[int, ...] = (0,)

    def count(self, rows: int) -> int:
        """Samples a series of ``rows`` rows makes (0 when it is too short for one)."""
        span = self.window + self.horizon
        return 0 if rows < span else (rows - span) // self.stride + 1

    def rows_for(self, start: int, stop: int) -> tuple[int, int]:
        """The rows samples [start, stop) are built from."""
        return start * self.stride, (stop - 1) * self.stride + self.window + self.horizon

    def make(self, rows: np.ndarray, n: int) -> tuple[np.ndarray, np.ndarray]:
        """The n samples whose rows (from rows_for) are ``rows``: x (n, window, inputs), y (n, targets*horizon)."""
        x_rows = rows[:, list(self.inputs)]
        views = np.lib.stride_tricks.sliding_window_view(x_rows, self.window, axis=0)
        x = views[: (n - 1) * self.stride + 1 : self.stride].transpose(0, 2, 1)
        y_rows = rows[self.window :, list(self.targets)]
        if self.horizon == 1:
            y = y_rows[: (n - 1) * self.stride + 1 : self.stride]
        else:
            y_views = np.lib.stride_tricks.sliding_window_view(y_rows, self.horizon, axis=0)
            y = y_views[: (n - 1) * self.stride + 1 : self.stride].transpose(0, 2, 1).reshape(n, -1)
        return np.ascontiguousarray(x, dtype=np.float64), np.ascontiguousarray(y, dtype=np.float64)


class DatasetSamples:
    """The samples of an opened dataset, read block by block in time order."""

    def __init__(self, opened: OpenedDataset, windowing: Windowing | None) -> None:
        self.dataset_id = opened.meta.dataset_id
        self._windowing = windowing
        if windowing is not None:
            self._series = ChunkedArray(opened.parts["series"])
            self.n = windowing.count(self._series.rows)
            self.sample_shape: tuple[int, ...] = (windowing.window, len(windowing.inputs))
        else:
            self._x, self._y = ChunkedArray(opened.parts["x"]), ChunkedArray(opened.parts["y"])
            self.n = self._x.rows
            self.sample_shape = self._x.sample_shape
        values = int(np.prod(self.sample_shape)) or 1
        self.block_samples = max(1, min(BLOCK_SAMPLES, BLOCK_BYTES // (values * 8)))

    def block(self, start: int, stop: int) -> tuple[np.ndarray, np.ndarray]:
        """Samples [start, stop) in raw units: x float64 as stored (n, ...), y float64 or int as stored."""
        if self._windowing is None:
            return self._x.take(start, stop).astype(np.float64, copy=False), self._y.take(start, stop)
        row_start, row_stop = self._windowing.rows_for(start, stop)
        return self._windowing.make(self._series.take(row_start, row_stop), stop - start)

    def targets_block(self, start: int, stop: int) -> np.ndarray:
        """y of samples [start, stop) without building x (for checks over the whole dataset)."""
        if self._windowing is None:
            return self._y.take(start, stop)
        w = self._windowing
        row_start, row_stop = w.rows_for(start, stop)
        rows = self._series.take(row_start + w.window, row_stop, w.targets)
        n = stop - start
        if w.horizon == 1:
            return rows[: (n - 1) * w.stride + 1 : w.stride].astype(np.float64)
        views = np.lib.stride_tricks.sliding_window_view(rows, w.horizon, axis=0)
        return views[: (n - 1) * w.stride + 1 : w.stride].transpose(0, 2, 1).reshape(n, -1).astype(np.float64)

    def ranges(self, start: int, stop: int, size: int = 0) -> Iterator[tuple[int, int]]:
        size = size or self.block_samples
        for lo in range(start, stop, size):
            yield lo, min(lo + size, stop)

    def blocks(self, start: int, stop: int) -> Iterator[tuple[np.ndarray, np.ndarray]]:
        for lo, hi in self.ranges(start, stop):
            yield self.block(lo, hi)


def dataset_forecast_config(windowing: Windowing, columns: tuple[str, ...]) -> ForecastConfig:
    """How a model trained on a series dataset's windows forecasts: the same windows read from a
    history of the dataset's columns (by index, in the dataset's order), one direct pass."""
    return ForecastConfig(
        window=windowing.window,
        horizon=windowing.horizon,
        strategy=Strategy.DIRECT,
        input_columns=windowing.inputs,
        target_columns=windowing.targets,
        series_columns=len(columns),
        stride=windowing.stride,
        column_names=columns,
    )


def _column_indices(names: Sequence[str], columns: tuple[str, ...], what: str) -> tuple[int, ...]:
    indices = []
    for name in names:
        if name not in columns:
            raise InvalidArgument(
                f"dataset.{what} names {echo(name)}, which is not a column of the dataset; its columns are "
                f"{echo(list(columns))}"
            )
        if columns.index(name) in indices:
            raise InvalidArgument(f"dataset.{what} names {echo(name)} twice")
        indices.append(columns.index(name))
    return tuple(indices)


def windowing_for(
    opened: OpenedDataset,
    spec: ModelSpec,
    window: int,
    stride: int,
    input_columns: Sequence[str],
    target_columns: Sequence[str],
    horizon: int = 1,
) -> Windowing | None:
    """The windowing a request asks of the dataset (None for a supervised one), checked against it."""
    meta = opened.meta
    if meta.kind != SERIES:
        if window or stride or input_columns or target_columns:
            raise InvalidArgument(
                f"dataset {meta.dataset_id} is supervised (x, y): window, stride, input_columns and "
                "target_columns are for series datasets; leave them unset"
            )
        return None
    if window < 0 or stride < 0:
        raise InvalidArgument(f"dataset.window and dataset.stride must be >= 0, got {window} and {stride}")
    window = window or spec.timesteps
    if window != spec.timesteps:
        raise InvalidArgument(
            f"dataset.window is {window} but the model's input has timesteps={spec.timesteps}; they must match"
        )
    inputs = (
        _column_indices(input_columns, meta.columns, "input_columns")
        if input_columns
        else tuple(range(len(meta.columns)))
    )
    if len(inputs) != spec.features:
        raise InvalidArgument(
            f"the windows have {len(inputs)} input column(s) ({echo([meta.columns[i] for i in inputs])}); the "
            f"model's input has features={spec.features}: set dataset.input_columns to {spec.features} column(s)"
        )
    targets = _column_indices(target_columns, meta.columns, "target_columns") if target_columns else (0,)
    windowing = Windowing(window, stride or 1, horizon, inputs, targets)
    rows = meta.rows
    if windowing.count(rows) < 1:
        raise InvalidArgument(
            f"dataset {meta.dataset_id} has {rows} rows; a window of {window} followed by {horizon} target "
            f"row(s) needs at least {window + horizon} rows to make one sample"
        )
    return windowing
