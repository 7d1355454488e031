"""The quantile head's outputs turned into sorted quantiles (its pinball loss is training's: pinball.py).

Crossing is cured by sorting each (step, target)'s quantiles after the pass (rearrangement), not by a
monotone parametrisation: sorting never makes the pinball loss of a prediction worse (Chernozhukov,
Fernandez-Val and Galichon, 2010) and leaves the head an ordinary Dense layer.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np


def sorted_levels(values: np.ndarray, levels: int) -> np.ndarray:
    """(batch, width * levels) head outputs -> (batch, width, levels), ascending along the last axis."""
    return np.sort(values.reshape(values.shape[0], -1, levels), axis=-1)


def coverage(actual: np.ndarray, quantiles: np.ndarray, levels: Sequence[float]) -> dict[str, float]:
    """``actual`` (..., values) against ``quantiles`` (..., values, q): the share below each quantile,
    the share inside [lowest, highest], and that interval's nominal level."""
    below = actual[..., None] <= quantiles
    result = {f"below_q{level:g}": float(np.mean(below[..., k])) for k, level in enumerate(levels)}
    inside = (actual >= quantiles[..., 0]) & (actual <= quantiles[..., -1])
    result["interval"] = float(np.mean(inside))
    result["nominal"] = float(levels[-1] - levels[0])
    return result


def median_of(quantiles: np.ndarray, levels: Sequence[float]) -> np.ndarray:
    """The point forecast of sorted ``quantiles`` (..., q) at ``levels``: the 0.5 level. A head without
    one (possible only for versions stored by hand; training requires 0.5) gets the quantile function
    interpolated linearly at 0.5 between its neighbouring levels (the nearest level beyond them)."""
    if 0.5 in levels:
        return quantiles[..., list(levels).index(0.5)]
    above = int(np.searchsorted(np.asarray(levels), 0.5))
    if above == 0 or above == len(levels):
        return quantiles[..., min(above, len(levels) - 1)]
    lo, hi = levels[above - 1], levels[above]
    weight = (0.5 - lo) / (hi - lo)
    return quantiles[..., above - 1] + weight * (quantiles[..., above] - quantiles[..., above - 1])
