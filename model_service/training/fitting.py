"""The fit-model step: ``model.fit`` on a seeded tf.data pipeline, reporting every epoch, stoppable.

One iterator serves the whole run: re-creating it per epoch, as fit does for numpy arrays, costs tens
of milliseconds an epoch (docs/performance.md).
"""

from __future__ import annotations

import contextlib
import math
import time
from collections.abc import Callable
from typing import Any, Protocol

import keras
import numpy as np
import tensorflow as tf

from model_service import builder
from model_service.records import EpochProgress
from model_service.spec import ModelSpec, Task
from model_service.training.request import TrainOptions


class Job(Protocol):
    """What the progress callback needs of its job."""

    @property
    def cancelled(self) -> bool: ...

    def emit(self, event: Any) -> None: ...


class Progress(keras.callbacks.Callback):
    """Stops fit within a batch of a cancel; reports every epoch."""

    def __init__(self, job: Job, epochs: int, n_train: int) -> None:
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


def dataset(x: np.ndarray, y: np.ndarray, batch_size: int, shuffle_seed: int | None) -> tf.data.Dataset:
    dataset = tf.data.Dataset.from_tensor_slices((x.astype(np.float32), y))
    if shuffle_seed is not None:
        dataset = dataset.shuffle(x.shape[0], seed=shuffle_seed, reshuffle_each_iteration=True)
    # Repeated, with steps_per_epoch given to fit: one iterator serves every epoch.
    return dataset.batch(batch_size).repeat().prefetch(2)


Sets = tuple[tf.data.Dataset, tf.data.Dataset | None]


def fit_model(
    spec: ModelSpec,
    options: TrainOptions,
    train: tuple[np.ndarray, np.ndarray],
    validation: tuple[np.ndarray, np.ndarray],
    progress: Progress,
    make_dataset: Callable[..., tf.data.Dataset] | None = None,
    loss: keras.losses.Loss | None = None,
) -> keras.Model:
    """The model built from its seed and fitted on ``train``, validated on ``validation`` (may be empty);
    ``loss`` replaces the task's (the quantile head's pinball loss)."""
    make = make_dataset or dataset
    (x_train, y_train), (x_val, y_val) = train, validation
    n_train, n_validation = x_train.shape[0], x_val.shape[0]
    y_dtype = np.int64 if spec.task is Task.MULTICLASS else np.float32

    def make_sets(shuffle_seed: int | None) -> Sets:
        train_set = make(x_train, y_train.astype(y_dtype), options.batch_size, shuffle_seed)
        val_set = make(x_val, y_val.astype(y_dtype), options.batch_size, None) if n_validation else None
        return train_set, val_set

    return fit_model_on(spec, options, make_sets, n_train, n_validation, progress, loss)


def fit_model_on(
    spec: ModelSpec,
    options: TrainOptions,
    make_sets: Callable[[int | None], Sets],
    n_train: int,
    n_validation: int,
    progress: Progress,
    loss: keras.losses.Loss | None = None,
) -> keras.Model:
    """The model built from its seed and fitted on the repeated sets ``make_sets(shuffle_seed)`` makes
    (shuffle_seed None: no shuffling), ``n_train`` and ``n_validation`` samples an epoch; ``loss``
    replaces the task's (the quantile head's pinball loss)."""
    seeds = builder.seed_stream(options.seed)
    with builder.seeded(options.seed):
        model = builder.build(spec, options.seed, loss=loss)
        train_set, val_set = make_sets(next(seeds) if options.shuffle else None)
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
        validation_steps=math.ceil(n_validation / options.batch_size) if val_set is not None else None,
        callbacks=callbacks,
        shuffle=False,  # the dataset shuffles itself, seeded
        verbose=0,
    )
    return model
