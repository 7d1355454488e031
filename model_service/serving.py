"""A served model version: raw-unit input -> x scaler -> adaptive batcher -> compiled pass -> original units.

Each prediction says where its time went (InferTiming), for the statistics extension.
"""

from __future__ import annotations

import contextlib
import math
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np

from model_service import input_checks
from model_service.batching import AdaptiveBatcher
from model_service.cost import Admission, ModelCost
from model_service.predictor import CompiledPredictor
from model_service.records import ModelRecord
from model_service.settings import DEFAULT_MAX_BATCH_SIZE, ModelSettings
from model_service.spec import Task

# Probabilities are clipped this far from 0 and 1 for the log loss (float32 softmax can hit 0 exactly).
LOG_LOSS_EPSILON = 1e-7


@dataclass(frozen=True)
class ServingOptions:
    """How versions are served (configuration only; the batch-size observer is passed on its own)."""

    max_batch_size: int = DEFAULT_MAX_BATCH_SIZE
    max_batch_wait_seconds: float = 0.0
    jit_compile: bool = True
    flat_call: bool = True
    # Memory budget and reply limit (cost.py); None admits everything and computes in one pass.
    admission: Admission | None = None


def serving_options(settings: ModelSettings) -> ServingOptions:
    """The serving options the settings ask for: batching, XLA, the memory budget and reply limit."""
    return ServingOptions(
        max_batch_size=settings.max_batch_size,
        max_batch_wait_seconds=settings.max_batch_wait_ms / 1000.0,
        jit_compile=settings.jit_compile,
        flat_call=settings.flat_call,
        admission=Admission.from_settings(settings.memory_budget_mb, settings.max_message_bytes),
    )


# Told the rows of every forward pass the batcher runs (the batch-size histogram).
BatchObserver = Callable[[int], None]


@dataclass(frozen=True)
class ModelSignature:
    """What a served version takes and gives: x is (batch, timesteps, features)."""

    timesteps: int
    features: int
    task: Task
    outputs: int  # regression: targets per sample; binary: 1; multiclass: n_classes


# eq=False: passes are told apart by identity (the statistics count each one once); weakref_slot: so
# they can be remembered only while a request computed in them is still being answered.
@dataclass(frozen=True, eq=False, slots=True, weakref_slot=True)
class ForwardPass:
    """One forward pass of the model, over all the rows the batcher put together."""

    rows: int
    started_ns: int  # time.perf_counter_ns()
    duration_ns: int


@dataclass(frozen=True, slots=True)
class InferTiming:
    """Where one infer() call spent its time, in nanoseconds."""

    input_ns: int  # checking and scaling x
    queue_ns: int  # in the batcher, until the forward pass that computed it started
    forward: ForwardPass
    output_ns: int  # from the end of that pass to the prediction in original units


@dataclass(frozen=True)
class Prediction:
    """One infer() result; the fields a task does not have are None."""

    values: np.ndarray | None  # regression: (batch, outputs) float64, original units
    probabilities: np.ndarray | None  # binary: (batch, 1) P(class 1); multiclass: (batch, n_classes)
    labels: np.ndarray | None  # classification: (batch,) int64
    timing: InferTiming  # where the call spent its time


class _PassOutput(np.ndarray):
    """A forward pass's output that knows its pass. The batcher hands each caller a slice of it, and a
    view keeps its parent's pass (__array_finalize__), so callers learn which pass computed their rows
    and when it ran without the batcher knowing about timing."""

    forward: ForwardPass | None

    def __array_finalize__(self, obj: Any) -> None:
        self.forward = getattr(obj, "forward", None)


class ServedModel:
    """One version being served: ``infer`` takes raw units, goes through the adaptive batcher, the
    train-fitted x scaler and the inverse y scaler; ``max_batch_size`` is the rows per forward pass.
    ``observe_batch`` (when given) is told the rows of each forward pass."""

    def __init__(
        self,
        record: ModelRecord,
        predictor: CompiledPredictor,
        options: ServingOptions,
        observe_batch: BatchObserver | None = None,
    ) -> None:
        spec = record.spec
        self.model_id = record.model_id
        self.version = record.version
        self.record = record
        self.task = spec.task
        self.signature = ModelSignature(spec.timesteps, spec.features, spec.task, spec.head.units)
        self.predictor = predictor
        self.cost = ModelCost.of(record.plan)
        self._admission = options.admission
        self._chunk_rows = options.admission.chunk_rows(self.cost) if options.admission else 0
        self._name = f"model {record.model_id!r} v{record.version}"
        self._x_scaler = record.x_scaler
        self._y_scaler = record.y_scaler
        self._batcher = AdaptiveBatcher(
            self._timed_forward,
            options.max_batch_size,
            options.max_batch_wait_seconds,
            f"{record.model_id}-v{record.version}",
            observe_batch,
        )

    @property
    def max_batch_size(self) -> int:
        """The most rows one forward pass takes (a larger request runs in a pass of its own)."""
        return self._batcher.max_batch_size

    def _timed_forward(self, x: np.ndarray) -> np.ndarray:
        started = time.perf_counter_ns()
        out = self.predictor(x).view(_PassOutput)
        out.forward = ForwardPass(int(x.shape[0]), started, time.perf_counter_ns() - started)
        return out

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

    def _model_input(self, x: np.ndarray) -> np.ndarray:
        """Checked raw-unit x -> what the forward pass takes (x-scaled, float32, contiguous). Values
        first (a bad request is INVALID_ARGUMENT whatever its size); these copies are no larger than the
        request, which the message limit bounds."""
        x = input_checks.model_input(x, self.signature.timesteps, self.signature.features)
        if self._x_scaler is not None:
            return input_checks.narrowed(self._x_scaler.transform(x), "x (scaled by the model's x scaler)")
        return input_checks.narrowed(x, "x")

    def _chunks(self, x: np.ndarray) -> list[np.ndarray]:
        """``x`` in pieces of at most the rows the memory budget allows in one pass."""
        chunk = self._chunk_rows or x.shape[0]
        if x.shape[0] <= chunk:
            return [x]
        return [x[i : i + chunk] for i in range(0, len(x), chunk)]

    def infer(self, x: np.ndarray, reply: bool = True) -> Prediction:
        """x in raw units, (batch, timesteps, features), any float dtype (InvalidArgument on mismatch;
        ResourceExhausted when its estimated memory, or with ``reply`` its reply, does not fit)."""
        began = time.perf_counter_ns()
        x = self._model_input(x)
        with self._admit(x.shape[0], reply):
            self.predictor.warm()
            submitted = time.perf_counter_ns()
            outs = [self._batcher.submit(part) for part in self._chunks(x)]
        return self._prediction(outs[0] if len(outs) == 1 else np.concatenate(outs), began, submitted)

    async def infer_async(self, x: np.ndarray, reply: bool = True) -> Prediction:
        """``infer`` from the event loop: admitted here, the forward pass on the batcher's thread."""
        began = time.perf_counter_ns()
        x = self._model_input(x)
        with self._admit(x.shape[0], reply):
            submitted = time.perf_counter_ns()
            outs = [await self._batcher.submit_async(part) for part in self._chunks(x)]
        return self._prediction(outs[0] if len(outs) == 1 else np.concatenate(outs), began, submitted)

    def _prediction(self, out: np.ndarray, began: int, submitted: int) -> Prediction:
        """The head's outputs (scaled units for a y-scaled regression) -> original units, with the time
        spent since ``began`` (perf_counter_ns) split at ``submitted`` (handed to the batcher)."""
        forward = getattr(out, "forward", None)
        if forward is None:  # a batcher that copies its results: the whole wait is this call's pass
            forward = ForwardPass(int(out.shape[0]), submitted, time.perf_counter_ns() - submitted)
        out = out.view(np.ndarray)
        values = probabilities = labels = None
        if self.task is Task.REGRESSION:
            values = out.astype(np.float64)
            if self._y_scaler is not None:
                values = self._unscaled(values)
        else:
            probabilities = out.astype(np.float64)
            if self.task is Task.BINARY:
                labels = (probabilities[:, 0] >= 0.5).astype(np.int64)
            else:
                labels = np.argmax(probabilities, axis=1).astype(np.int64)
        passed = forward.started_ns + forward.duration_ns
        timing = InferTiming(
            input_ns=submitted - began,
            queue_ns=max(0, forward.started_ns - submitted),
            forward=forward,
            output_ns=max(0, time.perf_counter_ns() - passed),
        )
        return Prediction(values, probabilities, labels, timing)

    def _unscaled(self, values: np.ndarray) -> np.ndarray:
        """Head outputs in original units. A quantile head has one output per (value, level) and the y
        scaler one column per value: every level of a value is unscaled as that value."""
        assert self._y_scaler is not None
        levels = self.record.forecast.levels if self.record.forecast else 1
        if levels == 1:
            return self._y_scaler.inverse_transform(values)
        n = values.shape[0]
        per_level = values.reshape(n, -1, levels).transpose(0, 2, 1).reshape(n * levels, -1)
        unscaled = self._y_scaler.inverse_transform(per_level)
        return unscaled.reshape(n, levels, -1).transpose(0, 2, 1).reshape(n, -1)

    def evaluate(self, x: np.ndarray, y: np.ndarray) -> dict[str, float]:
        """Metrics in original units: mse/mae/rmse (regression) or accuracy/log_loss (classification)."""
        x = input_checks.model_input(x, self.signature.timesteps, self.signature.features, what="samples")
        y = input_checks.targets(y, x.shape[0], self.record.spec)
        return score(self.task, y, self.infer(x, reply=False))


def score(task: Task, y: np.ndarray, prediction: Prediction) -> dict[str, float]:
    """``y`` as input_checks.targets returns it."""
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


def predictor_for(record: ModelRecord, model: Any, options: ServingOptions) -> CompiledPredictor:
    """The compiled forward pass for a version. Its largest bucket is at least the default batch
    ceiling even when batching is off, so a client's own batch of rows still runs in a few XLA calls."""
    spec = record.spec
    return CompiledPredictor(
        model,
        spec.timesteps,
        spec.features,
        options.jit_compile,
        max_bucket=max(DEFAULT_MAX_BATCH_SIZE, options.max_batch_size),
        flat_call=options.flat_call,
    )


def make_served(
    record: ModelRecord, model: Any, options: ServingOptions, observe_batch: BatchObserver | None = None
) -> ServedModel:
    """Wrap a Keras model (trained here, or loaded from a verified artifact) for serving."""
    return ServedModel(record, predictor_for(record, model, options), options, observe_batch)
