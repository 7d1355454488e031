"""A served model version: raw-unit input -> x scaler -> adaptive batcher -> compiled pass -> original units."""

from __future__ import annotations

import contextlib
import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np

from model_service import data
from model_service.batching import AdaptiveBatcher
from model_service.cost import Admission, ModelCost
from model_service.predictor import CompiledPredictor
from model_service.records import ModelRecord
from model_service.spec import Task

# Probabilities are clipped this far from 0 and 1 for the log loss (float32 softmax can hit 0 exactly).
LOG_LOSS_EPSILON = 1e-7


@dataclass(frozen=True)
class ServingOptions:
    max_batch_size: int = 32
    max_batch_wait_seconds: float = 0.0
    jit_compile: bool = True
    observe_batch: Callable[[int], None] | None = None
    # Memory budget and reply limit (cost.py); None admits everything and computes in one pass.
    admission: Admission | None = None


@dataclass(frozen=True)
class ModelSignature:
    timesteps: int
    features: int
    task: str  # "regression" | "binary" | "multiclass"
    outputs: int  # regression: targets per sample; binary: 1; multiclass: n_classes


@dataclass(frozen=True)
class Prediction:
    values: np.ndarray | None  # regression: (batch, outputs) float64, original units
    probabilities: np.ndarray | None  # binary: (batch, 1) P(class 1); multiclass: (batch, n_classes)
    labels: np.ndarray | None  # classification: (batch,) int64


class ServedModel:
    def __init__(self, record: ModelRecord, predictor: CompiledPredictor, options: ServingOptions) -> None:
        spec = record.spec
        self.model_id = record.model_id
        self.version = record.version
        self.record = record
        self.task = spec.task
        self.signature = ModelSignature(spec.timesteps, spec.features, spec.task.value, spec.head.units)
        self.predictor = predictor
        self.cost = ModelCost.of(record.plan)
        self._admission = options.admission
        self._chunk_rows = options.admission.chunk_rows(self.cost) if options.admission else 0
        self._name = f"model {record.model_id!r} v{record.version}"
        self._x_scaler = record.x_scaler
        self._y_scaler = record.y_scaler
        self._batcher = AdaptiveBatcher(
            predictor,
            options.max_batch_size,
            options.max_batch_wait_seconds,
            f"{record.model_id}-v{record.version}",
            options.observe_batch,
        )

    def warm(self) -> None:
        self.predictor.warm()

    def close(self, reason: str) -> None:
        self._batcher.close(reason)
        self.predictor.close()

    def _admit(self, rows: int, reply: bool) -> contextlib.AbstractContextManager[Any]:
        if self._admission is None:
            return contextlib.nullcontext()
        what = f"{rows} row(s) on {self._name}"
        return self._admission.reserve(self._admission.inference(self.cost, rows, what, reply))

    def raw_outputs(self, x: np.ndarray, reply: bool = False) -> np.ndarray:
        """Checked raw-unit x -> the head's outputs (scaled units for a y-scaled regression). Admitted
        before the forward pass (``reply``: the rows' outputs go back to the caller), which runs chunk
        by chunk."""
        x = data.model_input(x, self.signature.timesteps, self.signature.features)
        # Values first (a bad request is INVALID_ARGUMENT whatever its size); these copies are no larger
        # than the request, which the message limit bounds.
        if self._x_scaler is not None:
            x = data.narrowed(self._x_scaler.transform(x), "x (scaled by the model's x scaler)")
        else:
            x = data.narrowed(x, "x")
        with self._admit(x.shape[0], reply):
            self.predictor.warm()
            chunk = self._chunk_rows or x.shape[0]
            if x.shape[0] <= chunk:
                return self._batcher.submit(x)
            return np.concatenate([self._batcher.submit(x[i : i + chunk]) for i in range(0, len(x), chunk)])

    def infer(self, x: np.ndarray, reply: bool = True) -> Prediction:
        """x in raw units, (batch, timesteps, features), any float dtype (InvalidArgument on mismatch;
        ResourceExhausted when its estimated memory, or with ``reply`` its reply, does not fit)."""
        out = self.raw_outputs(x, reply)
        if self.task is Task.REGRESSION:
            values = out.astype(np.float64)
            if self._y_scaler is not None:
                values = self._y_scaler.inverse_transform(values)
            return Prediction(values, None, None)
        probabilities = out.astype(np.float64)
        if self.task is Task.BINARY:
            labels = (probabilities[:, 0] >= 0.5).astype(np.int64)
        else:
            labels = np.argmax(probabilities, axis=1).astype(np.int64)
        return Prediction(None, probabilities, labels)

    def evaluate(self, x: np.ndarray, y: np.ndarray) -> dict[str, float]:
        """Metrics in original units: mse/mae/rmse (regression) or accuracy/log_loss (classification)."""
        x = data.model_input(x, self.signature.timesteps, self.signature.features, what="samples")
        y = data.targets(y, x.shape[0], self.record.spec)
        return score(self.task, y, self.infer(x, reply=False))


def score(task: Task, y: np.ndarray, prediction: Prediction) -> dict[str, float]:
    """``y`` as data.targets returns it."""
    if task is Task.REGRESSION:
        assert prediction.values is not None
        errors = prediction.values - y
        mse = float(np.mean(errors**2))
        return {"mse": mse, "mae": float(np.mean(np.abs(errors))), "rmse": math.sqrt(mse)}
    assert prediction.probabilities is not None and prediction.labels is not None
    probabilities = np.clip(prediction.probabilities, LOG_LOSS_EPSILON, 1 - LOG_LOSS_EPSILON)
    if task is Task.BINARY:
        truth = y.reshape(-1)
        p = probabilities[:, 0]
        log_loss = -np.mean(truth * np.log(p) + (1 - truth) * np.log(1 - p))
    else:
        truth = y.astype(np.int64)
        log_loss = -np.mean(np.log(probabilities[np.arange(len(truth)), truth]))
    accuracy = float(np.mean(prediction.labels == truth.astype(np.int64)))
    return {"accuracy": accuracy, "log_loss": float(log_loss)}


def make_served(record: ModelRecord, model: Any, options: ServingOptions) -> ServedModel:
    """Wrap a Keras model (trained here, or loaded from a verified artifact) for serving."""
    spec = record.spec
    predictor = CompiledPredictor(
        model, spec.timesteps, spec.features, options.jit_compile, max_bucket=max(64, options.max_batch_size)
    )
    return ServedModel(record, predictor, options)
