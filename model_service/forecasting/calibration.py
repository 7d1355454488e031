"""Conformalized quantile regression (Romano, Patterson and Candes, 2019) for the quantile head.

A quantile head trained with the pinball loss is only as well calibrated as the fit: a short training
on a small series gives bands that cover far less than their nominal share. CQR measures that on
windows the model was not fitted on and moves each interval by what it measured:

- the training split's windows are cut in three, in time order: the model is fitted on the first part;
  ``horizon - 1`` windows are skipped (their targets overlap the last fitted windows' targets); the
  last ``calibration_fraction`` of the split is the calibration slice. The holdout (after the split)
  is never used, so its coverage stays an honest estimate.
- for an interval pair (lo, hi) of nominal level 1 - alpha = hi - lo, each calibration window's
  conformity score is max(q_lo - y, y - q_hi), per (step, target); the widening is the
  ceil((n + 1)(1 - alpha))-th smallest of the n scores. Every forecast's pair becomes
  [q_lo - w, q_hi + w] (w < 0 narrows an interval that over-covers), then the levels are sorted again.

Pairs are taken from the outside in, (levels[k], levels[-1 - k]) with levels[k] < 0.5 < levels[-1 - k],
so the median (the point forecast) is never moved.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, replace

import numpy as np

from model_service.forecasting.config import ForecastConfig
from service_common.errors import InvalidArgument


def interval_pairs(levels: Sequence[float]) -> list[tuple[int, int]]:
    """(lo, hi) level indices of the intervals that are calibrated, widest first."""
    count = len(levels)
    return [(k, count - 1 - k) for k in range(count // 2) if levels[k] < 0.5 < levels[count - 1 - k]]


def _rank(n: int, nominal: float) -> int:
    """The 1-based rank of the conformal quantile among n scores (n + 1 when n is too few)."""
    return math.ceil((n + 1) * nominal - 1e-9)


def minimum_windows(levels: Sequence[float]) -> int:
    """The fewest calibration windows that give every pair a finite widening."""
    nominal = max((levels[hi] - levels[lo] for lo, hi in interval_pairs(levels)), default=0.0)
    n = 1
    while _rank(n, nominal) > n:
        n += 1
    return n


@dataclass(frozen=True)
class CalibrationSplit:
    fit: int  # windows [0, fit) are fitted
    start: int  # windows [start, n_train) calibrate (start - fit = horizon - 1 skipped between)

    def windows(self, n_train: int) -> int:
        return n_train - self.start


def split(n_train: int, config: ForecastConfig) -> CalibrationSplit | None:
    """Where a calibrated model's training split is cut (None without calibration); InvalidArgument
    when the split is too small for the slice or the fit."""
    if not config.calibration_fraction:
        return None
    windows = int(n_train * config.calibration_fraction)
    gap = config.horizon - 1
    needed = minimum_windows(config.quantiles)
    if windows < needed:
        raise InvalidArgument(
            f"calibration_fraction {config.calibration_fraction:g} of the {n_train} training window(s) is "
            f"{windows}; the {', '.join(f'{q:g}' for q in config.quantiles)} intervals need at least {needed} "
            "calibration windows: raise calibration_fraction or send a longer series"
        )
    fit = n_train - windows - gap
    if fit < 1:
        raise InvalidArgument(
            f"the {n_train} training window(s) leave none to fit on after {windows} calibration window(s) "
            f"and the {gap} skipped before them (horizon - 1); lower calibration_fraction"
        )
    return CalibrationSplit(fit, fit + gap)


def widening(actual: np.ndarray, quantiles: np.ndarray, levels: Sequence[float]) -> np.ndarray:
    """(pairs, values) widenings from ``actual`` (n, values) and sorted ``quantiles`` (n, values, q)."""
    n = actual.shape[0]
    out = []
    for lo, hi in interval_pairs(levels):
        scores = np.maximum(quantiles[..., lo] - actual, actual - quantiles[..., hi])
        rank = _rank(n, levels[hi] - levels[lo])
        assert rank <= n  # split() refused fewer windows than minimum_windows
        out.append(np.sort(scores, axis=0)[rank - 1])
    return np.asarray(out, dtype=np.float64).reshape(-1, actual.shape[1])


def widen(quantiles: np.ndarray, config: ForecastConfig) -> np.ndarray:
    """Sorted ``quantiles`` (n, values, q) with the config's widening applied, sorted again."""
    if not config.widening:
        return quantiles
    amounts = np.asarray(config.widening).reshape(-1, quantiles.shape[1])
    moved = quantiles.copy()
    for (lo, hi), amount in zip(interval_pairs(config.quantiles), amounts, strict=True):
        moved[..., lo] -= amount
        moved[..., hi] += amount
    return np.sort(moved, axis=-1)


def calibrated(config: ForecastConfig, actual: np.ndarray, quantiles: np.ndarray) -> ForecastConfig:
    """``config`` with the widening measured on calibration windows: ``actual`` (n, values) against
    the uncalibrated sorted ``quantiles`` (n, values, q), original units."""
    amounts = widening(actual, quantiles, config.quantiles)
    return replace(
        config, widening=tuple(float(a) for a in amounts.reshape(-1)), calibration_windows=len(actual)
    )
