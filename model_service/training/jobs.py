"""Training jobs: checked synchronously, run on a worker thread, reported event by event, cancellable.

A job runs its steps in order (request.prepare before it starts; then scalers.fit_scaler, fitting.fit_model,
holdout.score_holdout, publish.publish). Cancelled or failed jobs leave nothing: no artifact, no listing,
and their scaler versions are deleted again.
"""

from __future__ import annotations

import contextlib
import logging
import queue
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import replace
from typing import Any

import keras
import numpy as np

from model_service import input_checks
from model_service.affine_scalers import AffineScaler, ScalerFitter, ScalerRef
from model_service.cost import Reservation
from model_service.datasets.dataset_store import DatasetStore
from model_service.datasets.pipeline import sample_set
from model_service.forecasting import calibration
from model_service.records import ModelRecord
from model_service.serving import ServingOptions
from model_service.spec import Task
from model_service.training import fitting, tensorboard
from model_service.training.fitting import Progress, Sets, fit_model, fit_model_on
from model_service.training.graph import PROBE_ROWS, serving_graph
from model_service.training.holdout import calibrate, score_holdout, score_holdout_blocks
from model_service.training.pinball import PinballLoss
from model_service.training.publish import publish
from model_service.training.request import (
    DatasetOptions,
    Prepared,
    Publisher,
    StreamedPrepared,
    TrainEvent,
    TrainInput,
    TrainStarted,
    prepare,
    prepare_streamed,
)
from model_service.training.scalers import fit_scaler, fit_scaler_streamed
from service_common.errors import Cancelled, ResourceExhausted, ServiceError

log = logging.getLogger("model_service.training")

_END = object()


class TrainingJob:
    def __init__(
        self,
        prepared: Prepared | StreamedPrepared,
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
            if isinstance(self._prepared, StreamedPrepared):
                self._prepared.close()  # the dataset may be deleted from now on
            self._on_finish()
            self._events.put(_END)

    def _train(self) -> ModelRecord:
        """The job's steps: fit scalers, fit the model, score the holdout, publish."""
        p = self._prepared
        if isinstance(p, StreamedPrepared):
            return self._train_streamed(p)
        spec, options, n_train = p.spec, p.options, p.n_train
        started = time.perf_counter()
        x_train, x_val = p.x[:n_train], p.x[n_train:]
        y_train, y_val = p.y[:n_train], p.y[n_train:]
        x_scaler = y_scaler = None
        if self._request.x_scaling is not None:
            x_scaler, x_train, x_val = fit_scaler(
                self._fitter, f"{self.model_id}-x", self._request.x_scaling, x_train, x_val, self._scalers
            )
            self._check_cancelled()
        if self._request.y_scaling is not None:
            y_scaler, y_train, y_val = fit_scaler(
                self._fitter, f"{self.model_id}-y", self._request.y_scaling, y_train, y_val, self._scalers
            )
            self._check_cancelled()
        # The model trains in float32: refuse what float32 cannot hold rather than train on inf.
        scaled = " (scaled by the x scaler)" if x_scaler else ""
        x_train, x_val = (
            input_checks.narrowed(x_train, f"x{scaled}"),
            input_checks.narrowed(x_val, f"x{scaled}"),
        )
        if spec.task is not Task.MULTICLASS:
            scaled = " (scaled by the y scaler)" if y_scaler else ""
            y_train, y_val = (
                input_checks.narrowed(y_train, f"y{scaled}"),
                input_checks.narrowed(y_val, f"y{scaled}"),
            )
        self._started(n_train, p.n_validation, x_scaler, y_scaler)
        # A calibrated quantile model is fitted on the split's first windows only (calibration.split).
        cut = calibration.split(n_train, p.forecast) if p.forecast else None
        fitted = cut.fit if cut else n_train
        progress = Progress(self, options.epochs, fitted)
        quantiles = p.forecast.quantiles if p.forecast else ()
        loss = PinballLoss(quantiles) if quantiles else None
        model = fit_model(
            spec,
            options,
            (x_train[:fitted], y_train[:fitted]),
            (x_val, y_val),
            progress,
            fitting.dataset,
            loss,
        )
        record = replace(
            self._record,
            x_scaler=x_scaler,
            y_scaler=y_scaler,
            forecast=p.forecast,
            recipe=self._request.recipe,
        )
        self._check_cancelled()
        graph = serving_graph(record, model, p.x[:n_train])
        if cut is not None:
            self._check_cancelled()
            record = calibrate(
                record, graph, self._serving, p.x[cut.start : n_train], p.y[cut.start : n_train]
            )
        scored = record
        return self._finish(
            scored,
            model,
            graph,
            progress,
            lambda: score_holdout(scored, graph, self._serving, p.x[n_train:], p.y[n_train:]),
            n_train,
            p.n_validation,
            started,
        )

    def _started(
        self, n_train: int, n_validation: int, x_scaler: AffineScaler | None, y_scaler: AffineScaler | None
    ) -> None:
        """The TrainStarted event, once the splits are known and the scalers fitted."""
        self.emit(
            TrainStarted(
                self.model_id,
                self.version,
                n_train,
                n_validation,
                x_scaler.ref if x_scaler else None,
                y_scaler.ref if y_scaler else None,
            )
        )

    def _finish(
        self,
        record: ModelRecord,
        model: keras.Model,
        graph: bytes,
        progress: Progress,
        score: Callable[[], tuple[dict[str, float], dict[str, float]]],
        n_train: int,
        n_validation: int,
        started: float,
    ) -> ModelRecord:
        """The steps after the model is fitted, for both kinds of job: the holdout scored (``score()``:
        metrics and a quantile model's coverage), the TensorBoard event files written, the version
        published (nothing once the job is cancelled)."""
        self._check_cancelled()
        holdout, coverage = score()
        events = tensorboard.event_files(record, model, progress.history, self._prepared.options)
        return publish(
            self._registry,
            record,
            model,
            graph,
            progress.history,
            holdout,
            n_train,
            n_validation,
            time.perf_counter() - started,
            self._check_cancelled,
            extra_files=events,
            coverage=coverage,
        )

    def _fit_scaler_streamed(self, p: StreamedPrepared, which: str, spec: object) -> AffineScaler:
        """A scaler fitted on the training split's x (or y) read block by block."""
        samples = p.samples

        def chunks() -> Iterator[np.ndarray]:
            for lo, hi in samples.ranges(0, p.n_train):
                self._check_cancelled()
                x, y = samples.block(lo, hi)
                yield (
                    x.reshape(hi - lo, p.spec.timesteps, p.spec.features)
                    if which == "x"
                    else p.targets(y, hi - lo)
                )

        per_sample = p.spec.timesteps * p.spec.features if which == "x" else max(1, p.spec.head.units)
        try:
            scaler = fit_scaler_streamed(
                self._fitter,
                f"{self.model_id}-{which}",
                spec,
                chunks,
                p.n_train * per_sample * 8,
                p.dataset_options.in_memory_fit_bytes,
                self._scalers,
            )
        except ServiceError:
            self._check_cancelled()  # a cancel mid-stream ends the FitStream call: report the cancel
            raise
        self._check_cancelled()
        return scaler

    def _train_streamed(self, p: StreamedPrepared) -> ModelRecord:
        """_train on a stored dataset: every step reads it block by block, none holds it whole."""
        spec, options, n_train, n = p.spec, p.options, p.n_train, p.samples.n
        started = time.perf_counter()
        x_scaler = y_scaler = None
        if self._request.x_scaling is not None:
            x_scaler = self._fit_scaler_streamed(p, "x", self._request.x_scaling)
        if self._request.y_scaling is not None:
            y_scaler = self._fit_scaler_streamed(p, "y", self._request.y_scaling)
        self._started(n_train, p.n_validation, x_scaler, y_scaler)
        classes = spec.task is Task.MULTICLASS
        y_shape: tuple[int, ...] = () if classes else (1,) if spec.task is Task.BINARY else (spec.head.units,)
        y_dtype = np.dtype(np.int64 if classes else np.float32)

        def make_sets(shuffle_seed: int | None) -> Sets:
            def one(start: int, stop: int, seed: int | None) -> Any:
                return sample_set(
                    p.samples,
                    start,
                    stop,
                    options.batch_size,
                    (spec.timesteps, spec.features),
                    p.targets,
                    y_shape,
                    y_dtype,
                    x_scaler,
                    y_scaler,
                    seed,
                    p.dataset_options.shuffle_buffer,
                )

            return one(0, n_train, shuffle_seed), one(n_train, n, None) if n > n_train else None

        progress = Progress(self, options.epochs, n_train)
        model = fit_model_on(spec, options, make_sets, n_train, p.n_validation, progress)
        record = replace(
            self._record,
            x_scaler=x_scaler,
            y_scaler=y_scaler,
            dataset_id=p.dataset_id,
            forecast=p.forecast,
            recipe=self._request.recipe,
        )

        self._check_cancelled()
        first, _ = p.samples.block(0, min(n_train, PROBE_ROWS))
        graph = serving_graph(record, model, first.reshape(len(first), spec.timesteps, spec.features))

        def score() -> tuple[dict[str, float], dict[str, float]]:
            if n == n_train:
                return {}, {}
            blocks = (
                (x.reshape(len(x), spec.timesteps, spec.features), y) for x, y in p.samples.blocks(n_train, n)
            )
            return score_holdout_blocks(record, graph, self._serving, blocks), {}

        return self._finish(record, model, graph, progress, score, n_train, p.n_validation, started)


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
        datasets: DatasetStore | None = None,
        dataset_options: DatasetOptions | None = None,
    ) -> None:
        self._datasets = datasets
        self._dataset_options = dataset_options or DatasetOptions()
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
        prepared: Prepared | StreamedPrepared
        if request.dataset is not None:
            # Holds the dataset (it cannot be deleted) until the job ends, or until refused below.
            prepared = prepare_streamed(
                request, self.max_work, self._datasets, self._dataset_options, admission
            )
        else:
            prepared = prepare(request, self.max_work, admission)
        try:
            return self._start(request, prepared)
        except BaseException:
            if isinstance(prepared, StreamedPrepared):
                prepared.close()
            raise

    def _start(self, request: TrainInput, prepared: Prepared | StreamedPrepared) -> TrainingJob:
        admission = self._serving.admission
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
