"""What the service knows about a model version: its metadata record, saved as meta.json beside model.keras."""

from __future__ import annotations

import base64
import binascii
import json
import math
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from model_service.affine_scalers import AffineScaler
from model_service.forecasting.config import ForecastConfig
from model_service.spec import ModelSpec, SpecPlan, plan
from service_common.errors import IntegrityError

FORMAT = 1
ORIGIN_TRAIN = "train"
ORIGIN_IMPORT = "import"


def _finite_or_none(value: float) -> float | None:
    # JSON has no NaN/inf; a diverged loss is recorded as null rather than writing invalid JSON.
    return value if math.isfinite(value) else None


def _float(value: float | None) -> float:
    return math.nan if value is None else float(value)


@dataclass(frozen=True)
class EpochProgress:
    epoch: int  # 1-based
    epochs: int
    loss: float
    val_loss: float | None
    metrics: dict[str, float]
    elapsed_seconds: float  # since training started
    rows_per_second: float

    def to_dict(self) -> dict[str, Any]:
        return {
            "epoch": self.epoch,
            "epochs": self.epochs,
            "loss": _finite_or_none(self.loss),
            "val_loss": None if self.val_loss is None else _finite_or_none(self.val_loss),
            "metrics": {k: _finite_or_none(v) for k, v in self.metrics.items()},
            "elapsed_seconds": self.elapsed_seconds,
            "rows_per_second": self.rows_per_second,
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> EpochProgress:
        return cls(
            int(data["epoch"]),
            int(data["epochs"]),
            _float(data["loss"]),
            None if data.get("val_loss") is None else float(data["val_loss"]),
            {str(k): _float(v) for k, v in data.get("metrics", {}).items()},
            float(data["elapsed_seconds"]),
            float(data["rows_per_second"]),
        )


def now_text() -> str:
    return datetime.now(UTC).isoformat(timespec="microseconds").replace("+00:00", "Z")


@dataclass(frozen=True)
class ModelRecord:
    model_id: str
    version: int
    spec: ModelSpec  # resolved
    seed: int
    created_at: str
    x_scaler: AffineScaler | None = None
    y_scaler: AffineScaler | None = None
    history: tuple[EpochProgress, ...] = ()
    holdout_metrics: dict[str, float] = field(default_factory=dict)
    n_train: int = 0
    n_validation: int = 0
    epochs_run: int = 0
    train_seconds: float = 0.0
    origin: str = ORIGIN_TRAIN  # ORIGIN_TRAIN | ORIGIN_IMPORT
    # Whether the artifact holds TensorBoard event files (trained versions do; imported ones do not).
    tensorboard: bool = False
    forecast: ForecastConfig | None = None  # series models: what Forecast and Backtest need
    holdout_coverage: dict[str, float] = field(default_factory=dict)  # quantile models
    # How to train this version again on other data (Backtest with retrain): the request's settings,
    # serialized by the servicer layer and opaque here; empty for versions written before it was kept.
    recipe: bytes = b""
    dataset_id: str = ""  # the stored dataset it was trained on (Train by reference); "" otherwise

    @property
    def plan(self) -> SpecPlan:
        return plan(self.spec)

    def to_json(self) -> bytes:
        body = {
            "format": FORMAT,
            "model_id": self.model_id,
            "version": self.version,
            "spec": self.spec.to_dict(),
            "seed": self.seed,
            "created_at": self.created_at,
            "x_scaler": self.x_scaler.to_dict() if self.x_scaler else None,
            "y_scaler": self.y_scaler.to_dict() if self.y_scaler else None,
            "history": [epoch.to_dict() for epoch in self.history],
            "holdout_metrics": {k: _finite_or_none(v) for k, v in self.holdout_metrics.items()},
            "n_train": self.n_train,
            "n_validation": self.n_validation,
            "epochs_run": self.epochs_run,
            "train_seconds": self.train_seconds,
            "origin": self.origin,
            "tensorboard": self.tensorboard,
            "forecast": self.forecast.to_dict() if self.forecast else None,
            "holdout_coverage": {k: _finite_or_none(v) for k, v in self.holdout_coverage.items()},
            "recipe": base64.b64encode(self.recipe).decode("ascii"),
            "dataset_id": self.dataset_id,
        }
        return json.dumps(body, indent=1, allow_nan=False).encode()

    @classmethod
    def from_json(cls, data: bytes, model_id: str, version: int) -> ModelRecord:
        """Parse verified metadata; IntegrityError when it is not what this service writes."""
        try:
            body = json.loads(data)
            if body.get("format") != FORMAT:
                raise IntegrityError(f"unsupported metadata format {body.get('format')!r}, expected {FORMAT}")
            if (body["model_id"], body["version"]) != (model_id, version):
                raise IntegrityError(f"metadata says it is {body['model_id']} v{body['version']}")
            return cls(
                model_id=model_id,
                version=version,
                spec=ModelSpec.from_dict(body["spec"]),
                seed=int(body["seed"]),
                created_at=str(body["created_at"]),
                x_scaler=AffineScaler.from_dict(body["x_scaler"]) if body["x_scaler"] else None,
                y_scaler=AffineScaler.from_dict(body["y_scaler"]) if body["y_scaler"] else None,
                history=tuple(EpochProgress.from_dict(e) for e in body["history"]),
                holdout_metrics={k: _float(v) for k, v in body["holdout_metrics"].items()},
                n_train=int(body["n_train"]),
                n_validation=int(body["n_validation"]),
                epochs_run=int(body["epochs_run"]),
                train_seconds=float(body["train_seconds"]),
                # Absent from versions stored before imports and TensorBoard existed.
                origin=str(body.get("origin", ORIGIN_TRAIN)),
                tensorboard=bool(body.get("tensorboard", False)),
                # Absent from versions written before forecasting existed.
                forecast=ForecastConfig.from_dict(body["forecast"]) if body.get("forecast") else None,
                holdout_coverage={k: _float(v) for k, v in body.get("holdout_coverage", {}).items()},
                recipe=base64.b64decode(body.get("recipe", ""), validate=True),
                dataset_id=str(body.get("dataset_id", "")),  # absent from versions stored before datasets
            )
        except IntegrityError:
            raise
        except (ValueError, KeyError, TypeError, AttributeError, binascii.Error) as exc:
            raise IntegrityError(f"malformed metadata: {type(exc).__name__}: {exc}") from exc
