"""Scalers as the model service uses them: fitted by the scaler service, applied here from their affine form.

A fitted scaler version is immutable, so its affine form (transform(x) == x * scale + offset, column by
column) can be cached in the model's metadata and applied locally at serving time; the scaler service
stays the only place that fits. ``ScalerFitter`` is the port the training code calls; the gRPC adapter
(scaler_gateway.py) implements it.
"""

from __future__ import annotations

import functools
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any, Protocol

import numpy as np

PER_FEATURE = "per_feature"
PER_COLUMN = "per_column"


@dataclass(frozen=True)
class ScalerRef:
    scaler_id: str
    version: int


@dataclass(frozen=True)
class AffineScaler:
    """One fitted scaler version in affine form, for samples of ``sample_shape``."""

    ref: ScalerRef
    layout: str  # per_feature | per_column (3-D samples); 2-D samples are always per column
    sample_shape: tuple[int, ...]
    scale: np.ndarray
    offset: np.ndarray
    # MinMax with clip=True clips transformed values to its feature range.
    clip: tuple[float, float] | None = None

    def _columns(self, data: np.ndarray) -> tuple[np.ndarray, tuple[int, ...]]:
        if len(self.sample_shape) == 2 and self.layout == PER_COLUMN:
            return data.reshape(data.shape[0], -1), data.shape
        return data, data.shape

    def transform(self, data: np.ndarray) -> np.ndarray:
        columns, shape = self._columns(np.asarray(data, dtype=np.float64))
        out = columns * self.scale + self.offset
        if self.clip is not None:
            np.clip(out, self.clip[0], self.clip[1], out=out)
        return out.reshape(shape)

    def inverse_transform(self, data: np.ndarray) -> np.ndarray:
        columns, shape = self._columns(np.asarray(data, dtype=np.float64))
        return ((columns - self.offset) / self._safe_scale).reshape(shape)

    @functools.cached_property
    def _safe_scale(self) -> np.ndarray:
        # Scikit-learn never yields a zero scale (constant columns get 1); guard anyway.
        return np.where(self.scale == 0, 1.0, self.scale)

    def to_dict(self) -> dict[str, Any]:
        return {
            "scaler_id": self.ref.scaler_id,
            "version": self.ref.version,
            "layout": self.layout,
            "sample_shape": list(self.sample_shape),
            "scale": self.scale.tolist(),
            "offset": self.offset.tolist(),
            "clip": list(self.clip) if self.clip else None,
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> AffineScaler:
        return cls(
            ScalerRef(str(data["scaler_id"]), int(data["version"])),
            str(data["layout"]),
            tuple(int(d) for d in data["sample_shape"]),
            np.asarray(data["scale"], dtype=np.float64),
            np.asarray(data["offset"], dtype=np.float64),
            (float(data["clip"][0]), float(data["clip"][1])) if data.get("clip") else None,
        )


class ScalerFitter(Protocol):
    """The scaler service as training sees it: it fits, training transforms with the affine form
    (training/scalers.py says why). ``spec`` is passed through untouched (the request's)."""

    def fit_stream(self, scaler_id: str, spec: Any, chunks: Iterator[np.ndarray]) -> AffineScaler:
        """Fit with partial_fit on chunks streamed one by one (FitStream); nothing is transformed."""
        ...

    def fit(self, scaler_id: str, spec: Any, data: np.ndarray) -> AffineScaler:
        """Fit on ``data`` in one call (for kinds without partial_fit)."""
        ...

    def streams(self, spec: Any) -> bool:
        """Whether ``spec``'s kind can be fitted from a stream (has partial_fit)."""
        ...

    def delete(self, ref: ScalerRef) -> None: ...
