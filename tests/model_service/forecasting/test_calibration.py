"""Conformalized quantile intervals (forecasting/calibration.py): where the training split is cut, the
conformal widening, and that a band too narrow for its noise covers its nominal share once calibrated."""

from __future__ import annotations

import numpy as np
import pytest

from model_service.forecasting import calibration
from model_service.forecasting.config import ForecastConfig, SeriesRequest, Strategy, series_config
from model_service.forecasting.forecaster import forecast, head_to_steps
from model_service.spec import Head, Lstm, ModelSpec, Task, with_defaults
from service_common.errors import InvalidArgument
from tests.model_service.forecasting.fakes import served

LEVELS = (0.1, 0.5, 0.9)


def config(horizon: int = 1, fraction: float = 0.2, levels: tuple[float, ...] = LEVELS) -> ForecastConfig:
    return ForecastConfig(
        4, horizon, Strategy.DIRECT, (0,), (0,), 1, quantiles=levels, calibration_fraction=fraction
    )


def test_pairs_are_taken_from_the_outside_in_around_the_median() -> None:
    assert calibration.interval_pairs(LEVELS) == [(0, 2)]
    assert calibration.interval_pairs((0.05, 0.25, 0.5, 0.75, 0.95)) == [(0, 4), (1, 3)]
    assert calibration.interval_pairs((0.1, 0.5, 0.8, 0.9)) == [(0, 3)]  # (0.5, 0.8) holds the median
    # ceil((n + 1) * 0.8) <= n from n = 4; ceil((n + 1) * 0.9) <= n from n = 9
    assert calibration.minimum_windows(LEVELS) == 4
    assert calibration.minimum_windows((0.05, 0.5, 0.95)) == 9


def test_the_split_fits_first_skips_horizon_minus_one_then_calibrates() -> None:
    assert calibration.split(100, config(fraction=0.0)) is None
    assert calibration.split(100, config(horizon=1)) == calibration.CalibrationSplit(80, 80)
    cut = calibration.split(100, config(horizon=5))
    assert cut == calibration.CalibrationSplit(76, 80) and cut.windows(100) == 20
    with pytest.raises(InvalidArgument, match="is 3; the 0.1, 0.5, 0.9 intervals need at least 4"):
        calibration.split(19, config())
    with pytest.raises(InvalidArgument, match="leave none to fit on after 4 calibration window"):
        calibration.split(8, config(horizon=5, fraction=0.5))


def test_calibration_needs_quantiles_and_a_fraction_below_one() -> None:
    spec = with_defaults(ModelSpec(4, 1, (Lstm(2),), Head(Task.REGRESSION)))
    series = np.arange(40.0)
    with pytest.raises(InvalidArgument, match="set quantiles too"):
        series_config(SeriesRequest(calibration_fraction=0.2), series, spec, 0)
    with pytest.raises(InvalidArgument, match=r"calibration_fraction must be in \[0, 1\)"):
        series_config(SeriesRequest(quantiles=LEVELS, calibration_fraction=1.0), series, spec, 0)
    got, _ = series_config(SeriesRequest(quantiles=LEVELS, calibration_fraction=0.25), series, spec, 0)
    assert got.calibration_fraction == 0.25 and not got.widening
    assert ForecastConfig.from_dict(got.to_dict()) == got


def test_the_widening_is_the_conformal_quantile_of_the_scores() -> None:
    # scores max(lo - y, y - hi) are 0..9 (one per window); n = 10, 80%: the ceil(11 * 0.8) = 9th smallest
    actual = np.arange(10.0)[:, None]
    quantiles = np.concatenate([np.full((10, 1, 1), -100.0), np.zeros((10, 1, 1)), np.zeros((10, 1, 1))], -1)
    np.testing.assert_allclose(calibration.widening(actual, quantiles, LEVELS), [[8.0]])


# A head that knows the median exactly but whose band is a third of the noise's: y = last + N(0, 1)
NOISE = 1.0
Z90 = 1.2815515655446004


def narrow_head(x: np.ndarray) -> np.ndarray:
    last = x[:, -1, 0]
    half = Z90 * NOISE / 3
    return np.stack([last - half, last, last + half], axis=1)


def test_a_band_too_narrow_for_its_noise_covers_its_nominal_share_once_calibrated() -> None:
    rng = np.random.default_rng(11)
    model, _ = served(config(), narrow_head)
    windows = rng.normal(size=(4000, 4, 1)) * 5
    actual = windows[:, -1, :] + rng.normal(0, NOISE, size=(4000, 1))
    raw = model.infer(windows).values
    assert raw is not None
    _, before = head_to_steps(raw, model.record.forecast)  # type: ignore[arg-type]
    assert before is not None

    def covered(quantiles: np.ndarray, rows: slice) -> float:
        inside = (actual[rows] >= quantiles[rows, 0, :, 0]) & (actual[rows] <= quantiles[rows, 0, :, -1])
        return float(np.mean(inside))

    assert covered(before, slice(1000, None)) < 0.4
    calibrated = calibration.calibrated(
        model.record.forecast,  # type: ignore[arg-type]
        actual[:1000],
        before[:1000, 0],
    )
    assert calibrated.calibration_windows == 1000 and len(calibrated.widening) == 1
    # the widening brings the half-width to the noise's own 10%-90% half-width (1.28 sd)
    assert calibrated.widening[0] == pytest.approx(Z90 * NOISE * 2 / 3, abs=0.12)
    point, after = head_to_steps(raw, calibrated)
    assert after is not None
    assert covered(after, slice(1000, None)) == pytest.approx(0.8, abs=0.03)  # on windows it never saw
    np.testing.assert_array_equal(point, before[..., 1])  # the median does not move
    assert (np.diff(after, axis=-1) >= 0).all()


def test_forecast_and_backtest_intervals_carry_the_widening() -> None:
    calibrated = ForecastConfig(
        4, 2, Strategy.DIRECT, (0,), (0,), 1, quantiles=LEVELS, widening=(1.0, 3.0), calibration_windows=10
    )
    model, _ = served(calibrated, lambda x: np.repeat(x[:, -1:, 0], 6, axis=1))
    result = forecast(model, np.arange(10.0))
    assert result.quantiles is not None
    np.testing.assert_allclose(result.quantiles[0, :, 0], [[8, 9, 10], [6, 9, 12]], rtol=1e-6)
