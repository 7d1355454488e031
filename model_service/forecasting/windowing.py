"""Supervised windows from a raw series: a pure function of (series, window, horizon, stride, columns).

Kept apart from everything else so that any source of rows (a request's tensor, a stored dataset's
chunks) windows the same way.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np


def window_count(rows: int, window: int, horizon: int, stride: int) -> int:
    """How many (window -> horizon) samples ``rows`` rows give, one every ``stride`` rows."""
    span = rows - window - horizon
    return 0 if span < 0 else span // stride + 1


def forecast_windows(
    series: np.ndarray,
    window: int,
    horizon: int,
    stride: int,
    input_columns: Sequence[int],
    target_columns: Sequence[int],
) -> tuple[np.ndarray, np.ndarray]:
    """x[i] = series[s:s+window, input_columns] and y[i] = series[s+window:s+window+horizon,
    target_columns] flattened step-major (y[i, step*targets + t]), with s = i*stride.

    ``series`` is (rows, columns) and already checked; the caller makes sure one sample fits. Sample i
    reads nothing past row s+window+horizon-1, so later rows never change earlier samples.
    """
    n = window_count(series.shape[0], window, horizon, stride)
    starts = np.arange(n) * stride
    inputs = series[:, list(input_columns)]
    targets = series[:, list(target_columns)]
    x = np.lib.stride_tricks.sliding_window_view(inputs, window, axis=0)[starts].transpose(0, 2, 1)
    y = np.lib.stride_tricks.sliding_window_view(targets[window:], horizon, axis=0)[starts].transpose(0, 2, 1)
    return (
        np.ascontiguousarray(x, dtype=np.float64),
        np.ascontiguousarray(y, dtype=np.float64).reshape(n, horizon * len(target_columns)),
    )
