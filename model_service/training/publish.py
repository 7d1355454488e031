"""The publish step: the trained version written whole and signed, visible to every process on the store."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import replace

import keras

from model_service import builder
from model_service.records import EpochProgress, ModelRecord
from model_service.training.request import Publisher


def publish(
    publisher: Publisher,
    record: ModelRecord,
    model: keras.Model,
    graph: bytes,
    history: list[EpochProgress],
    holdout: dict[str, float],
    n_train: int,
    n_validation: int,
    train_seconds: float,
    check_cancelled: Callable[[], None],
    extra_files: dict[str, bytes] | None = None,
    coverage: dict[str, float] | None = None,
) -> ModelRecord:
    """The final record, committed with the model, its serving graph and ``extra_files`` (its TensorBoard event files) in
    one signed artifact (nothing is written once the job is cancelled)."""
    keras_bytes = builder.to_keras_bytes(model)
    record = replace(
        record,
        history=tuple(history),
        holdout_metrics=holdout,
        n_train=n_train,
        n_validation=n_validation,
        epochs_run=len(history),
        train_seconds=train_seconds,
        tensorboard=bool(extra_files),
        holdout_coverage=coverage or {},
    )
    check_cancelled()
    publisher.commit(record, keras_bytes, graph, extra_files or {})
    return record
