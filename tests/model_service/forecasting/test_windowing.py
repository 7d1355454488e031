"""Series windows with a horizon, a stride and chosen columns (forecasting/windowing.py)."""

from __future__ import annotations

import numpy as np

from model_service.forecasting.windowing import forecast_windows, window_count


def test_one_step_windows_make_the_seed_samples() -> None:
    x, y = forecast_windows(np.arange(1.0, 8.0).reshape(-1, 1), 3, 1, 1, [0], [0])
    assert x.shape == (4, 3, 1) and y.shape == (4, 1)
    assert x[0, :, 0].tolist() == [1, 2, 3] and y[0].tolist() == [4]
    assert x[-1, :, 0].tolist() == [4, 5, 6] and y[-1].tolist() == [7]


def test_horizon_targets_are_step_major_over_the_target_columns() -> None:
    series = np.stack([np.arange(10.0), 100 + np.arange(10.0), 200 + np.arange(10.0)], axis=1)
    x, y = forecast_windows(series, 3, 2, 1, [0, 2], [1, 0])
    assert x.shape == (6, 3, 2) and y.shape == (6, 4)
    assert x[1].tolist() == series[1:4][:, [0, 2]].tolist()
    # sample 1: rows 4 and 5, columns 1 then 0 at each step
    assert y[1].tolist() == [104, 4, 105, 5]


def test_stride_skips_rows_between_samples() -> None:
    x, y = forecast_windows(np.arange(20.0).reshape(-1, 1), 4, 3, 5, [0], [0])
    assert window_count(20, 4, 3, 5) == x.shape[0] == 3
    assert x[:, 0, 0].tolist() == [0, 5, 10]
    assert y[2].tolist() == [14, 15, 16]


def test_later_rows_never_change_earlier_samples() -> None:
    series = np.arange(30.0).reshape(-1, 1)
    changed = series.copy()
    changed[20:] = -1000
    x, y = forecast_windows(series, 5, 3, 1, [0], [0])
    x2, y2 = forecast_windows(changed, 5, 3, 1, [0], [0])
    # sample i reads rows i .. i+7; those ending before row 20 are untouched
    np.testing.assert_array_equal(x[:13], x2[:13])
    np.testing.assert_array_equal(y[:13], y2[:13])
    assert not np.array_equal(y[13], y2[13])


def test_too_short_a_series_makes_no_sample() -> None:
    assert window_count(5, 3, 3, 1) == 0
    assert window_count(6, 3, 3, 1) == 1
