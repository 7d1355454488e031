"""What a training request is, and every check that needs no training (the validate/prepare step).

Bad requests fail here, synchronously, before a job, a version number or a scaler exists.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace
from typing import Any, Protocol

import numpy as np

from model_service import input_checks
from model_service.affine_scalers import ScalerRef
from model_service.cost import Admission, Estimate, ModelCost
from model_service.datasets.dataset_store import NEEDS_A_DIRECTORY, DatasetStore, OpenedDataset
from model_service.datasets.samples import DatasetSamples, dataset_forecast_config, windowing_for
from model_service.forecasting import calibration
from model_service.forecasting.config import ForecastConfig, SeriesRequest, as_rows, series_config
from model_service.forecasting.windowing import forecast_windows
from model_service.records import EpochProgress, ModelRecord
from model_service.spec import ModelSpec, Task, plan, with_defaults
from service_common.errors import FailedPrecondition, InvalidArgument, ResourceExhausted

DEFAULT_EPOCHS = 10
MAX_EPOCHS = 10_000
DEFAULT_BATCH_SIZE = 32
MAX_BATCH_SIZE = 65_536
MAX_PATIENCE = 10_000


class Publisher(Protocol):
    """Where a job reserves its version, then commits or releases it: the serving registry (which then
    serves it) or a bare model_store.ModelPublisher (the trainer process, which serves nothing)."""

    def reserve(self, model_id: str, spec: ModelSpec, seed: int) -> ModelRecord: ...

    def release(self, model_id: str, version: int) -> None: ...

    def commit(
        self,
        record: ModelRecord,
        keras_bytes: bytes,
        graph: bytes,
        extra_files: dict[str, bytes] | None = None,
    ) -> None: ...


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

    def with_defaults(self) -> TrainOptions:
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
class DatasetRequest:
    """Training data by reference: a stored dataset and, for a series, how to window it."""

    dataset_id: str
    window: int = 0  # 0 = the spec's timesteps
    stride: int = 0  # 0 = 1
    input_columns: tuple[str, ...] = ()  # empty = every column
    target_columns: tuple[str, ...] = ()  # empty = the first column
    horizon: int = 1


@dataclass(frozen=True)
class DatasetOptions:
    """How a job reads a dataset: the shuffle buffer (samples), and how much of a training split a
    scaler without partial_fit (robust) may be handed in one Fit call."""

    shuffle_buffer: int = 65_536
    in_memory_fit_bytes: int = 64 << 20


@dataclass(frozen=True)
class TrainInput:
    """A training request in domain terms. Exactly one of (x, y) and ``series`` is set."""

    model_id: str
    spec: ModelSpec
    options: TrainOptions
    x: np.ndarray | None = None
    y: np.ndarray | None = None
    series: np.ndarray | None = None
    series_request: SeriesRequest = SeriesRequest()  # how ``series`` is windowed and forecast
    dataset: DatasetRequest | None = None
    # Scaler specs as the request carried them, passed to the ScalerFitter untouched; None = no scaling.
    x_scaling: Any = None
    y_scaling: Any = None
    recipe: bytes = b""  # kept with the version (ModelRecord.recipe), never read here


@dataclass(frozen=True)
class TrainStarted:
    model_id: str
    version: int
    n_train: int
    n_validation: int
    x_scaler: ScalerRef | None
    y_scaler: ScalerRef | None


TrainEvent = TrainStarted | EpochProgress | ModelRecord


@dataclass(frozen=True)
class Prepared:
    spec: ModelSpec
    options: TrainOptions
    x: np.ndarray  # (n, timesteps, features) float64, raw units
    y: np.ndarray  # as input_checks.targets returns it
    n_train: int
    estimate: Estimate | None = None  # memory, held against the budget while the job runs
    forecast: ForecastConfig | None = None  # series models

    @property
    def n_validation(self) -> int:
        return self.x.shape[0] - self.n_train


def prepare(request: TrainInput, max_work: int, admission: Admission | None = None) -> Prepared:
    """Every check that needs no training, so bad requests fail before a job starts."""
    spec = with_defaults(request.spec)
    options = request.options.with_defaults()
    forecast = None
    if request.series is not None:
        series = as_rows(request.series)
        forecast, spec = series_config(request.series_request, series, spec, request.spec.head.outputs)
        spec = with_defaults(spec)
        x, y = forecast_windows(
            series,
            forecast.window,
            forecast.horizon,
            forecast.stride,
            forecast.input_columns,
            forecast.target_columns,
        )
    else:
        if request.x is None or request.y is None:
            raise InvalidArgument(
                "training data is missing: set supervised {x, y} or series {series, window}"
            )
        x, y = request.x, request.y
    x = input_checks.model_input(x, spec.timesteps, spec.features, name="x", what="samples")
    # A quantile head has one output per (value, level); y holds the values.
    y = input_checks.targets(y, x.shape[0], spec) if forecast is None or not forecast.quantiles else y
    n_train = x.shape[0] - input_checks.holdout_size(x.shape[0], options.validation_fraction)
    if forecast is not None:
        calibration.split(n_train, forecast)  # refuses a slice too small to calibrate, before any job
    if request.y_scaling is not None and spec.task is not Task.REGRESSION:
        raise InvalidArgument(
            f"y_scaling is for REGRESSION only; a {spec.task.value} model predicts class labels"
        )
    _check_work(options, n_train, max_work)
    estimate = None
    if admission is not None:
        estimate = _estimate(spec, options, n_train, x.shape[0] - n_train, admission)
    return Prepared(spec, options, x, y, n_train, estimate, forecast)


@dataclass
class StreamedPrepared:
    """A checked request on a stored dataset: read block by block, held (undeletable) until ``close``."""

    spec: ModelSpec
    options: TrainOptions
    samples: DatasetSamples
    opened: OpenedDataset
    n_train: int
    dataset_options: DatasetOptions
    estimate: Estimate | None = None
    forecast: ForecastConfig | None = None  # series datasets: what Forecast and Backtest need

    @property
    def n_validation(self) -> int:
        return self.samples.n - self.n_train

    @property
    def dataset_id(self) -> str:
        return self.opened.meta.dataset_id

    def targets(self, y: np.ndarray, n: int) -> np.ndarray:
        """A block's y checked and shaped for the task, as input_checks.targets does for a whole request."""
        return input_checks.targets(y, n, self.spec)

    def close(self) -> None:
        self.opened.close()


def _check_work(options: TrainOptions, n_train: int, max_work: int) -> None:
    work = options.epochs * n_train
    if work > max_work:
        raise ResourceExhausted(
            f"training work {options.epochs} epochs x {n_train} rows = {work} exceeds the limit "
            f"max_training_work={max_work}; train on fewer rows or epochs"
        )


def _estimate(
    spec: ModelSpec, options: TrainOptions, n_train: int, n_validation: int, admission: Admission
) -> Estimate:
    cost = ModelCost.of(plan(spec))
    batch = min(options.batch_size, max(n_train, n_validation))  # no batch holds more rows than there are
    estimate = admission.training(
        cost, batch, n_train, n_validation, f"training with batch_size {options.batch_size}"
    )
    if estimate.memory_bytes > admission.memory_budget_bytes:
        fits = admission.max_batch_size(cost, n_train, n_validation)
        hint = f"use batch_size {fits} or less" if fits else "train a smaller model or on fewer rows"
        admission.reserve(estimate, hint)  # raises, naming the estimate and the budget
    return estimate


def prepare_streamed(
    request: TrainInput,
    max_work: int,
    datasets: DatasetStore | None,
    dataset_options: DatasetOptions,
    admission: Admission | None = None,
) -> StreamedPrepared:
    """The checks of ``prepare`` for a request on a stored dataset, which is held from here on (the
    caller closes the result when no job takes it). Every target is checked here, reading y only."""
    assert request.dataset is not None
    if datasets is None:
        raise FailedPrecondition(NEEDS_A_DIRECTORY)
    spec = with_defaults(request.spec)
    options = request.options.with_defaults()
    source = request.dataset
    opened = datasets.open(source.dataset_id)
    try:
        windowing = windowing_for(
            opened,
            spec,
            source.window,
            source.stride,
            source.input_columns,
            source.target_columns,
            source.horizon,
        )
        samples = DatasetSamples(opened, windowing)
        accepted = [(spec.timesteps, spec.features)] + ([(spec.timesteps,)] if spec.features == 1 else [])
        if windowing is None and samples.sample_shape not in accepted:
            shape = "[" + ", ".join(str(d) for d in samples.sample_shape) + "]"
            raise InvalidArgument(
                f"dataset {opened.meta.dataset_id} has x samples of shape {shape}; the model expects "
                f"({spec.timesteps}, {spec.features}) (timesteps={spec.timesteps}, features={spec.features})"
            )
        if request.y_scaling is not None and spec.task is not Task.REGRESSION:
            raise InvalidArgument(
                f"y_scaling is for REGRESSION only; a {spec.task.value} model predicts class labels"
            )
        for lo, hi in samples.ranges(0, samples.n, 1 << 20):
            input_checks.targets(
                samples.targets_block(lo, hi), hi - lo, spec, name=f"y (samples {lo}..{hi - 1})"
            )
        n_train = samples.n - input_checks.holdout_size(samples.n, options.validation_fraction)
        _check_work(options, n_train, max_work)
        estimate = None
        if admission is not None:
            # What a job holds at once: the shuffle buffer and a few blocks, not the dataset.
            held = dataset_options.shuffle_buffer + 4 * samples.block_samples
            estimate = _estimate(spec, options, min(n_train, held), min(samples.n - n_train, held), admission)
    except BaseException:
        opened.close()
        raise
    forecast = None if windowing is None else dataset_forecast_config(windowing, tuple(opened.meta.columns))
    return StreamedPrepared(spec, options, samples, opened, n_train, dataset_options, estimate, forecast)
