"""The seed notes' two examples (../shared/seed/learning-keras.md), the one copy the demo, the tests and the
benches use.

Example 1: thirteen 3-step windows, each followed by the next number; asked for [50, 60, 70], the
seed's model answers about 80. Example 2 ("scikit-learn으로 Data Scaling"): the same shape with outliers
in the tens of thousands, for comparing scalers.
"""

from __future__ import annotations

import numpy as np

EXAMPLE1_X = np.array(
    [[1, 2, 3], [2, 3, 4], [3, 4, 5], [4, 5, 6], [5, 6, 7], [6, 7, 8], [7, 8, 9], [8, 9, 10],
     [9, 10, 11], [10, 11, 12], [20, 30, 40], [30, 40, 50], [40, 50, 60]],
    dtype=np.float64,
)  # fmt: skip
EXAMPLE1_Y = np.array([4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 50, 60, 70], dtype=np.float64)
EXAMPLE1_QUERY = np.array([50, 60, 70], dtype=np.float64)
EXAMPLE1_EXPECTED = 80.0

EXAMPLE2_X = np.array(
    [[1, 2, 3], [2, 3, 4], [3, 4, 5], [4, 5, 6], [5, 6, 7], [6, 7, 8], [7, 8, 9], [8, 9, 10],
     [9, 10, 11], [10, 11, 12], [20000, 30000, 40000], [30000, 40000, 50000],
     [40000, 50000, 60000], [100, 200, 300]],
    dtype=np.float64,
)  # fmt: skip
EXAMPLE2_Y = np.array([4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 50000, 60000, 70000, 400], dtype=np.float64)


def example1_windows() -> tuple[np.ndarray, np.ndarray]:
    """Example 1 as the model takes it: x (13, 3, 1) windows, y (13,), float64 copies."""
    return EXAMPLE1_X.reshape(13, 3, 1).copy(), EXAMPLE1_Y.copy()


def example2_windows() -> tuple[np.ndarray, np.ndarray]:
    """Example 2 as the model takes it: x (14, 3, 1) windows, y (14,), float64 copies."""
    return EXAMPLE2_X.reshape(14, 3, 1).copy(), EXAMPLE2_Y.copy()
