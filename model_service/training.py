"""Training jobs: checked synchronously, run on a worker thread, reported event by event, cancellable.

A job fits the scalers on the training split through the scaler service, builds the model from its
seed under builder.BUILD_LOCK, trains with ``model.fit`` on a seeded tf.data pipeline (one iterator
for the whole run: re-creating it per epoch, as fit does for numpy arrays, costs ~20-40 ms an
epoch here), scores the time-ordered holdout in original units and commits the version atomically.
Cancelled or failed jobs leave nothing: no artifact, no listing, and their scaler versions are
deleted again.
"""

from __future__ import annotations

import contextlib
import logging
import math
import queue
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, replace
from typing import Any, Protocol

import keras
import numpy as np
import tensorflow as tf

from model_service import builder, data
from model_service.cost import Admission, Estimate, ModelCost, Reservation
from model_service.predictor import CompiledPredictor
from model_service.records import EpochProgress, ModelRecord
from model_service.scaling import AffineScaler, ScalerFitter, ScalerRef
from model_service.serving import ServedModel, ServingOptions
from model_service.spec import ModelSpec, Task, plan, resolve
from service_common.errors import Cancelled, InvalidArgument, ResourceExhausted, ServiceError

log = logging.getLogger(__name__)

DEFAULT_EPOCHS = 10
MAX_EPOCHS = 10_000
DEFAULT_BATCH_SIZE = 32
MAX_BATCH_SIZE = 65_536
MAX_PATIENCE = 10_000
# The affine form the scaler service reports must reproduce its own transform to this tolerance.
AFFINE_RTOL = 1e-6
AFFINE_ATOL = 1e-9


class Publisher(Protocol):
    """Where a job reserves its version, then commits or releases it: the serving registry (which then
    serves it) or a bare model_store.ModelPublisher (the trainer process, which serves nothing)."""

    def reserve(self, model_id: str, spec: ModelSpec, seed: int) -> ModelRecord: ...

    def release(self, model_id: str, version: int) -> None: ...

    def commit(self, record: ModelRecord, keras_bytes: bytes) -> None: ...


@dataclass(frozen=True)
class TrainOptions:
    epochs: int = 0  # 0 = DEFAULT_EPOCHS
    batch_size: int = 0  # 0 = DEFAULT_BATCH_SIZE
    seed: int = 0
    shuffle: bool = False
    validation_fraction: float = 0.0
    patience: int = 0  # 0 = no early stopping
    min_delta: float = 0.0
    restore_best_weights: bool = False

    def resolved(self) -> TrainOptions:
        epochs = self.epochs or DEFAULT_EPOCHS
        if not 1 <= epochs <= MAX_EPOCHS:
            raise InvalidArgument(f"epochs must be in 1..{MAX_EPOCHS}, got {self.epochs}")
        batch_size = self.batch_size or DEFAULT_BATCH_SIZE
        if not 1 <= batch_size <= MAX_BATCH_SIZE:
            raise InvalidArgument(
                f"batch_size must be in 1..{MAX_BATCH_SIZE} (0 = {DEFAULT_BATCH_SIZE}), got {self.batch_size}"
            )
        if not 0 <= self.patience <= MAX_PATIENCE:
            raise InvalidArgument(
                f"early_stopping.patience must be in 0..{MAX_PATIENCE}, got {self.patience}"
            )
        if not (math.isfinite(self.min_delta) and self.min_delta >= 0):
            raise InvalidArgument(
                f"early_stopping.min_delta must be a finite number >= 0, got {self.min_delta}"
            )
        return replace(self, epochs=epochs, batch_size=batch_size)


@dataclass(frozen=True)
class TrainInput:
    """A training request in domain terms. Exactly one of (x, y) and ``series`` is set."""

    model_id: str
    spec: ModelSpec
    options: TrainOptions
    x: np.ndarray | None = None
    y: np.ndarray | None = None
    series: np.ndarray | None = None
    window: int = 0
    target_feature: int = 0
    # Scaler specs as the request carried them, passed to the ScalerFitter untouched; None = no scaling.
    x_scaling: Any = None
    y_scaling: Any = None


@dataclass(frozen=True)
class TrainStarted:
    model_id: str
    version: int
    n_train: int
    n_validation: int
    x_scaler: ScalerRef | None
    y_scaler: ScalerRef | None


TrainEvent = TrainStarted | EpochProgress | ModelRecord
_END = object()


@dataclass(frozen=True)
class _Prepared:
    spec: ModelSpec
    options: TrainOptions
    x: np.ndarray  # (n, timesteps, features) float64, raw units
    y: np.ndarray  # as data.targets returns it
    n_train: int
    estimate: Estimate | None = None  # memory, held against the budget while the job runs

    @property
    def n_validation(self) -> int:
        return self.x.shape[0] - self.n_train


def prepare(request: TrainInput, max_work: int, admission: Admission | None = None) -> _Prepared:
    """Every check that needs no training, so bad requests fail before a job starts."""
    spec = resolve(request.spec)
    options = request.options.resolved()
    if request.series is not None:
        x, y = data.windows(request.series, request.window, request.target_feature, spec)
    else:
        if request.x is None or request.y is None:
            raise InvalidArgument(
                "training data is missing: set supervised {x, y} or series {series, window}"
            )
        x, y = request.x, request.y
    x = data.model_input(x, spec.timesteps, spec.features, name="x", what="samples")
    y = data.targets(y, x.shape[0], spec)
    n_train = x.shape[0] - data.holdout_size(x.shape[0], options.validation_fraction)
    if request.y_scaling is not None and spec.task is not Task.REGRESSION:
        raise InvalidArgument(
            f"y_scaling is for REGRESSION only; a {spec.task.value} model predicts class labels"
        )
    work = options.epochs * n_train
    if work > max_work:
        raise ResourceExhausted(
            f"training work {options.epochs} epochs x {n_train} rows = {work} exceeds the limit "
            f"max_training_work={max_work}; train on fewer rows or epochs"
        )
    estimate = None
    if admission is not None:
        cost = ModelCost.of(plan(spec))
        n_validation = x.shape[0] - n_train
        batch = min(options.batch_size, max(n_train, n_validation))  # no batch holds more rows than there are
        estimate = admission.training(
            cost, batch, n_train, n_validation, f"training with batch_size {options.batch_size}"
        )
        if estimate.memory_bytes > admission.memory_budget_bytes:
            fits = admission.max_batch_size(cost, n_train, n_validation)
            hint = f"use batch_size {fits} or less" if fits else "train a smaller model or on fewer rows"
            admission.reserve(estimate, hint)  # raises, naming the estimate and the budget
    return _Prepared(spec, options, x, y, n_train, estimate)


class _Progress(keras.callbacks.Callback):
    """Stops fit within a batch of a cancel; reports every epoch."""

    def __init__(self, job: TrainingJob, epochs: int, n_train: int) -> None:
        super().__init__()
        self._job = job
        self._epochs = epochs
        self._n_train = n_train
        self._started = time.perf_counter()
        self._epoch_started = self._started
        self.history: list[EpochProgress] = []

    def on_train_batch_end(self, batch: int, logs: dict[str, Any] | None = None) -> None:
        if self._job.cancelled:
            self.model.stop_training = True

    def on_epoch_begin(self, epoch: int, logs: dict[str, Any] | None = None) -> None:
        self._epoch_started = time.perf_counter()

    def on_epoch_end(self, epoch: int, logs: dict[str, Any] | None = None) -> None:
        if self._job.cancelled:
            self.model.stop_training = True
            return
        now = time.perf_counter()
        logs = dict(logs or {})
        loss = float(logs.pop("loss", math.nan))
        val_loss = logs.pop("val_loss", None)
        metrics = {}
        for name, value in logs.items():
            with contextlib.suppress(TypeError, ValueError):  # only scalar figures are metrics
                metrics[name] = float(value)
        event = EpochProgress(
            epoch=epoch + 1,
            epochs=self._epochs,
            loss=loss,
            val_loss=None if val_loss is None else float(val_loss),
            metrics=metrics,
            elapsed_seconds=now - self._started,
            rows_per_second=self._n_train / max(now - self._epoch_started, 1e-9),
        )
        self.history.append(event)
        self._job.emit(event)


def _dataset(x: np.ndarray, y: np.ndarray, batch_size: int, shuffle_seed: int | None) -> tf.data.Dataset:
    dataset = tf.data.Dataset.from_tensor_slices((x.astype(np.float32), y))
    if shuffle_seed is not None:
        dataset = dataset.shuffle(x.shape[0], seed=shuffle_seed, reshuffle_each_iteration=True)
    # Repeated, with steps_per_epoch given to fit: one iterator serves every epoch.
    return dataset.batch(batch_size).repeat().prefetch(2)


class TrainingJob:
    def __init__(
        self,
        prepared: _Prepared,
        request: TrainInput,
        record: ModelRecord,
        registry: Publisher,
        fitter: ScalerFitter,
        serving: ServingOptions,
        on_finish: Callable[[], None],
        track: Callable[[], contextlib.AbstractContextManager[Any]],
        memory: Reservation | None = None,
    ) -> None:
        self.model_id = record.model_id
        self._memory = memory
        self.version = record.version
        self._prepared = prepared
        self._request = request
        self._record = record
        self._registry = registry
        self._fitter = fitter
        self._serving = serving
        self._on_finish = on_finish
        self._track = track
        self._events: queue.Queue[Any] = queue.Queue()
        self._cancel = threading.Event()
        self._error: BaseException | None = None
        self._scalers: list[ScalerRef] = []
        self._thread = threading.Thread(
            target=self._run, name=f"train-{self.model_id}-v{self.version}", daemon=True
        )

    # ---- control -------------------------------------------------------------------------------

    def start(self) -> None:
        self._thread.start()

    def cancel(self) -> None:
        self._cancel.set()

    @property
    def cancelled(self) -> bool:
        return self._cancel.is_set()

    def join(self, timeout: float | None = None) -> bool:
        self._thread.join(timeout)
        return not self._thread.is_alive()

    def emit(self, event: TrainEvent) -> None:
        self._events.put(event)

    def events(
        self, is_active: Callable[[], bool] = lambda: True, poll_seconds: float = 0.2
    ) -> Iterator[TrainEvent]:
        """Every event until the job ends; re-raises its error. Cancels the job once ``is_active`` is False."""
        while True:
            try:
                item = self._events.get(timeout=poll_seconds)
            except queue.Empty:
                if not is_active():
                    self.cancel()
                    return
                continue
            if item is _END:
                if self._error is not None:
                    raise self._error
                return
            yield item

    # ---- the worker thread ---------------------------------------------------------------------

    def _check_cancelled(self) -> None:
        if self._cancel.is_set():
            raise Cancelled(f"training of {self.model_id} v{self.version} was cancelled; nothing was saved")

    def _run(self) -> None:
        committed = False
        try:
            with self._track():
                done = self._train()
            committed = True
            self.emit(done)
        except BaseException as exc:  # noqa: BLE001 - handed to the caller through events()
            self._error = exc
            if isinstance(exc, ServiceError):
                log.info("training %s v%d ended: %s", self.model_id, self.version, exc)
            else:
                log.exception("training %s v%d failed", self.model_id, self.version)
        finally:
            if not committed:
                self._registry.release(self.model_id, self.version)
                for ref in self._scalers:
                    try:
                        self._fitter.delete(ref)
                    except Exception as exc:  # noqa: BLE001 - best effort: an orphan scaler harms nobody
                        log.warning("could not delete scaler %s v%d: %s", ref.scaler_id, ref.version, exc)
            if self._memory is not None:
                self._memory.release()
            self._on_finish()
            self._events.put(_END)

    def _scale(
        self, suffix: str, spec: Any, train: np.ndarray, holdout: np.ndarray
    ) -> tuple[AffineScaler, np.ndarray, np.ndarray]:
        outcome = self._fitter.fit_transform(
            f"{self.model_id}-{suffix}", spec, train, {"validation": holdout} if holdout.shape[0] else {}
        )
        self._scalers.append(outcome.scaler.ref)
        # Serving applies the cached affine form locally: it must reproduce the service's transform.
        if not np.allclose(
            outcome.scaler.transform(train), outcome.train, rtol=AFFINE_RTOL, atol=AFFINE_ATOL
        ):
            raise RuntimeError(
                f"scaler {outcome.scaler.ref.scaler_id} v{outcome.scaler.ref.version}: its affine form does "
                "not reproduce its transform; refusing to cache it"
            )
        scaled_holdout = outcome.others.get("validation", holdout[:0])
        return outcome.scaler, outcome.train, scaled_holdout

    def _train(self) -> ModelRecord:
        p = self._prepared
        spec, options, n_train = p.spec, p.options, p.n_train
        started = time.perf_counter()
        x_train, x_val = p.x[:n_train], p.x[n_train:]
        y_train, y_val = p.y[:n_train], p.y[n_train:]
        x_scaler = y_scaler = None
        if self._request.x_scaling is not None:
            x_scaler, x_train, x_val = self._scale("x", self._request.x_scaling, x_train, x_val)
            self._check_cancelled()
        if self._request.y_scaling is not None:
            y_scaler, y_train, y_val = self._scale("y", self._request.y_scaling, y_train, y_val)
            self._check_cancelled()
        # The model trains in float32: refuse what float32 cannot hold rather than train on inf.
        scaled = " (scaled by the x scaler)" if x_scaler else ""
        x_train, x_val = data.narrowed(x_train, f"x{scaled}"), data.narrowed(x_val, f"x{scaled}")
        if spec.task is not Task.MULTICLASS:
            scaled = " (scaled by the y scaler)" if y_scaler else ""
            y_train, y_val = data.narrowed(y_train, f"y{scaled}"), data.narrowed(y_val, f"y{scaled}")
        self.emit(
            TrainStarted(
                self.model_id,
                self.version,
                n_train,
                p.n_validation,
                x_scaler.ref if x_scaler else None,
                y_scaler.ref if y_scaler else None,
            )
        )
        y_dtype = np.int64 if spec.task is Task.MULTICLASS else np.float32
        seeds = builder.seed_stream(options.seed)
        with builder.seeded(options.seed):
            model = builder.build(spec, options.seed)
            train_set = _dataset(
                x_train, y_train.astype(y_dtype), options.batch_size, next(seeds) if options.shuffle else None
            )
            val_set = (
                _dataset(x_val, y_val.astype(y_dtype), options.batch_size, None) if p.n_validation else None
            )
        progress = _Progress(self, options.epochs, n_train)
        callbacks: list[keras.callbacks.Callback] = [progress]
        if options.patience:
            callbacks.append(
                keras.callbacks.EarlyStopping(
                    monitor="val_loss" if val_set is not None else "loss",
                    patience=options.patience,
                    min_delta=options.min_delta,
                    restore_best_weights=options.restore_best_weights,
                )
            )
        model.fit(
            train_set,
            epochs=options.epochs,
            steps_per_epoch=math.ceil(n_train / options.batch_size),
            validation_data=val_set,
            validation_steps=math.ceil(p.n_validation / options.batch_size) if val_set is not None else None,
            callbacks=callbacks,
            shuffle=False,  # the dataset shuffles itself, seeded
            verbose=0,
        )
        self._check_cancelled()
        record = replace(self._record, x_scaler=x_scaler, y_scaler=y_scaler)
        predictor = CompiledPredictor(
            model,
            spec.timesteps,
            spec.features,
            self._serving.jit_compile,
            max(64, self._serving.max_batch_size),
        )
        holdout: dict[str, float] = {}
        if p.n_validation:
            # Scored through the serving path itself (raw units in, original units out), unbatched.
            scorer = ServedModel(
                record,
                predictor,
                ServingOptions(
                    max_batch_size=1,
                    jit_compile=self._serving.jit_compile,
                    # Chunked as served, but not counted again: the job's reservation covers the scoring.
                    admission=self._serving.admission.untracked() if self._serving.admission else None,
                ),
            )
            holdout = scorer.evaluate(p.x[n_train:], p.y[n_train:])
        keras_bytes = builder.to_keras_bytes(model)
        record = replace(
            record,
            history=tuple(progress.history),
            holdout_metrics=holdout,
            n_train=n_train,
            n_validation=p.n_validation,
            epochs_run=len(progress.history),
            train_seconds=time.perf_counter() - started,
        )
        self._check_cancelled()
        self._registry.commit(record, keras_bytes)
        return record


class TrainingManager:
    """Starts jobs, bounded by ``max_jobs`` running at once (the next gets RESOURCE_EXHAUSTED)."""

    def __init__(
        self,
        registry: Publisher,
        fitter: ScalerFitter,
        serving: ServingOptions,
        max_jobs: int,
        max_work: int,
        track: Callable[[], contextlib.AbstractContextManager[Any]] = contextlib.nullcontext,
    ) -> None:
        self._registry = registry
        self._fitter = fitter
        self._serving = serving
        self.max_jobs = max_jobs
        self.max_work = max_work
        self._track = track
        self._lock = threading.Lock()
        self._jobs: set[TrainingJob] = set()
        self._closed = False

    def start(self, request: TrainInput) -> TrainingJob:
        admission = self._serving.admission
        prepared = prepare(request, self.max_work, admission)
        with self._lock:
            if self._closed:
                raise Cancelled("the model service is shutting down")
            if len(self._jobs) >= self.max_jobs:
                raise ResourceExhausted(
                    f"{len(self._jobs)} training job(s) already running, the limit is max_training_jobs="
                    f"{self.max_jobs}; retry when one has finished"
                )
            memory = admission.reserve(prepared.estimate) if admission and prepared.estimate else None
            try:
                record = self._registry.reserve(request.model_id, prepared.spec, prepared.options.seed)
            except BaseException:
                if memory is not None:
                    memory.release()
                raise
            job = TrainingJob(
                prepared,
                request,
                record,
                self._registry,
                self._fitter,
                self._serving,
                lambda: self._finished(job),
                self._track,
                memory,
            )
            self._jobs.add(job)
        job.start()
        return job

    def _finished(self, job: TrainingJob) -> None:
        with self._lock:
            self._jobs.discard(job)

    def running(self) -> int:
        with self._lock:
            return len(self._jobs)

    def shutdown(self, timeout: float = 30.0) -> None:
        """Cancel every job and wait for them to stop (each stops within one batch)."""
        with self._lock:
            self._closed = True
            jobs = list(self._jobs)
        for job in jobs:
            job.cancel()
        deadline = time.monotonic() + timeout
        for job in jobs:
            if not job.join(max(0.0, deadline - time.monotonic())):
                log.warning("training %s v%d did not stop within %.0fs", job.model_id, job.version, timeout)
