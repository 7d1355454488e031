"""Training jobs and the model runtime, in process without gRPC: a local fake stands in for the scaler service."""

from __future__ import annotations

import dataclasses
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from model_service.records import EpochProgress, ModelRecord
from model_service.registry import ModelRegistry
from model_service.runtime import ModelRuntime, ModelSignature
from model_service.scaling import PER_FEATURE, AffineScaler, FitOutcome, ScalerRef
from model_service.serving import ServingOptions
from model_service.spec import Dense, Head, Lstm, ModelSpec, Task
from model_service.training import TrainingManager, TrainInput, TrainOptions, TrainStarted
from scaler_service import scaling as fitting
from service_common.artifacts import ArtifactStore
from service_common.errors import Cancelled, FailedPrecondition, NotFound, ResourceExhausted
from tests.model_service.helpers import seed_example


class LocalFitter:
    """Fits with the scaler service's own domain code, in process; records what it was asked."""

    def __init__(self) -> None:
        self.fitted: list[tuple[str, int]] = []
        self.deleted: list[ScalerRef] = []
        self._versions: dict[str, int] = {}

    def fit_transform(
        self, scaler_id: str, spec: Any, train: np.ndarray, others: dict[str, np.ndarray]
    ) -> FitOutcome:
        fitted = fitting.fit(fitting.make_spec(spec), train)
        self._versions[scaler_id] = self._versions.get(scaler_id, 0) + 1
        ref = ScalerRef(scaler_id, self._versions[scaler_id])
        self.fitted.append((scaler_id, train.shape[0]))
        scale, offset = fitted.affine()
        affine = AffineScaler(ref, PER_FEATURE, fitted.sample_shape, scale, offset)
        return FitOutcome(
            affine, fitted.transform(train), {k: fitted.transform(v) for k, v in others.items()}
        )

    def delete(self, ref: ScalerRef) -> None:
        self.deleted.append(ref)


class Stack:
    def __init__(self, root: Path, max_jobs: int = 2) -> None:
        self.store = ArtifactStore(root, b"test-signing-key-0123456789")
        self.fitter = LocalFitter()
        self.options = ServingOptions(max_batch_size=16)
        self.registry = ModelRegistry(self.store, self.options)
        self.registry.load_all()
        self.runtime = ModelRuntime(self.registry)
        self.trainer = TrainingManager(self.registry, self.fitter, self.options, max_jobs, max_work=10**9)

    def close(self) -> None:
        self.trainer.shutdown()
        self.registry.close()


@pytest.fixture
def stack(tmp_path: Path) -> Iterator[Stack]:
    built = Stack(tmp_path / "models")
    yield built
    built.close()


SPEC = ModelSpec(3, 1, (Lstm(6, "relu"), Lstm(3)), Head(Task.REGRESSION))


def seed_input(seed: int = 7, epochs: int = 3, model_id: str = "", **options: Any) -> TrainInput:
    x, y = seed_example()
    return TrainInput(
        model_id=model_id,
        spec=SPEC,
        options=TrainOptions(epochs=epochs, batch_size=4, seed=seed, shuffle=True, **options),
        x=x,
        y=y,
        x_scaling="minmax",
        y_scaling="standard",
    )


def run(stack: Stack, request: TrainInput) -> tuple[list[Any], ModelRecord]:
    events = list(stack.trainer.start(request).events())
    assert isinstance(events[-1], ModelRecord)
    return events, events[-1]


def slow_input(model_id: str = "") -> TrainInput:
    rng = np.random.default_rng(0)
    x = rng.normal(size=(512, 3, 1))
    return TrainInput(
        model_id=model_id,
        spec=SPEC,
        options=TrainOptions(epochs=5000, batch_size=8, seed=1),
        x=x,
        y=x.sum(axis=(1, 2)),
    )


def test_events_scalers_and_holdout(stack: Stack) -> None:
    events, record = run(stack, seed_input(validation_fraction=0.25))
    started = events[0]
    assert isinstance(started, TrainStarted)
    assert (started.n_train, started.n_validation) == (10, 3)
    epochs = [e for e in events if isinstance(e, EpochProgress)]
    assert [e.epoch for e in epochs] == [1, 2, 3] and all(e.epochs == 3 for e in epochs)
    assert all(e.val_loss is not None and np.isfinite(e.loss) and e.rows_per_second > 0 for e in epochs)
    assert "mae" in epochs[0].metrics and "val_mae" in epochs[0].metrics
    # Scalers are fitted on the 10 training samples only, never on the holdout.
    assert stack.fitter.fitted == [(f"{record.model_id}-x", 10), (f"{record.model_id}-y", 10)]
    assert set(record.holdout_metrics) == {"mse", "mae", "rmse"}
    assert record.holdout_metrics["rmse"] == pytest.approx(np.sqrt(record.holdout_metrics["mse"]))
    assert record.epochs_run == 3 and len(record.history) == 3


def test_same_seed_same_predictions_even_next_to_another_job(stack: Stack) -> None:
    query = np.array([[[5.0], [6.0], [7.0]], [[50.0], [60.0], [70.0]]])
    _, alone = run(stack, seed_input(seed=11))
    first = stack.runtime.resolve(alone.model_id).predict(query).values
    # Again with the same seed while a job with another seed trains at the same time.
    other = stack.trainer.start(seed_input(seed=99, epochs=6))
    _, again = run(stack, seed_input(seed=11))
    list(other.events())
    second = stack.runtime.resolve(again.model_id).predict(query).values
    np.testing.assert_allclose(first, second, rtol=1e-5, atol=1e-5)
    _, different = run(stack, seed_input(seed=12))
    third = stack.runtime.resolve(different.model_id).predict(query).values
    assert not np.allclose(first, third, rtol=1e-5, atol=1e-5)


def test_cancel_leaves_nothing(stack: Stack) -> None:
    job = stack.trainer.start(dataclasses.replace(slow_input(), x_scaling="standard"))
    events = job.events()
    assert isinstance(next(events), TrainStarted)
    assert isinstance(next(events), EpochProgress)
    assert [e.state for e in stack.runtime.index()] == ["TRAINING"]
    job.cancel()
    with pytest.raises(Cancelled):
        list(events)
    assert job.join(10)
    assert stack.runtime.index() == []
    assert list(stack.store.scan()) == []
    assert stack.fitter.deleted == [ScalerRef(f"{job.model_id}-x", 1)]
    assert stack.trainer.running() == 0


def test_job_limit_and_serving_rules_while_training(stack: Stack) -> None:
    _, ready = run(stack, seed_input(model_id="m"))
    first = stack.trainer.start(slow_input(model_id="m"))
    second = stack.trainer.start(slow_input())
    with pytest.raises(ResourceExhausted, match="max_training_jobs=2"):
        stack.trainer.start(slow_input())
    # Version 1 keeps serving; version 2 is still training.
    assert stack.runtime.resolve("m").version == 1
    assert stack.runtime.resolve("m", 1).predict(np.ones((2, 3))).values.shape == (2, 1)
    with pytest.raises(FailedPrecondition, match="version 2 is still training"):
        stack.runtime.resolve("m", 2)
    with pytest.raises(FailedPrecondition, match="no ready version yet"):
        stack.runtime.resolve(second.model_id)
    with pytest.raises(NotFound):
        stack.runtime.resolve("m", 3)
    for job in (first, second):
        job.cancel()
        assert job.join(10)
    assert stack.trainer.running() == 0
    assert [(e.model_id, e.version, e.state) for e in stack.runtime.index()] == [("m", 1, "READY")]
    assert ready.version == 1


def test_runtime_interface_for_the_inference_protocol(stack: Stack, tmp_path: Path) -> None:
    classes = ModelSpec(4, 2, (Lstm(5), Dense(4, "relu")), Head(Task.MULTICLASS, n_classes=3))
    rng = np.random.default_rng(1)
    x = rng.normal(size=(40, 4, 2))
    request = TrainInput(
        "cls", classes, TrainOptions(epochs=2, batch_size=8, seed=3), x=x, y=rng.integers(0, 3, 40)
    )
    run(stack, request)
    model = stack.runtime.resolve("cls")
    assert (model.model_id, model.version) == ("cls", 1)
    assert model.signature == ModelSignature(timesteps=4, features=2, task="multiclass", outputs=3)
    prediction = model.predict(x[:5].astype(np.float32))
    assert prediction.values is None
    assert prediction.probabilities.shape == (5, 3) and prediction.labels.dtype == np.int64
    np.testing.assert_allclose(prediction.probabilities.sum(axis=1), 1.0, atol=1e-5)
    assert prediction.labels.tolist() == prediction.probabilities.argmax(axis=1).tolist()

    stack.runtime.unload("cls")
    assert [(e.state, e.reason) for e in stack.runtime.index()] == [("UNAVAILABLE", "unloaded")]
    with pytest.raises(FailedPrecondition, match="unloaded"):
        stack.runtime.resolve("cls")
    stack.runtime.load("cls")
    assert [e.state for e in stack.runtime.index()] == ["READY"]
    np.testing.assert_allclose(
        stack.runtime.resolve("cls").predict(x[:5]).probabilities, prediction.probabilities, rtol=1e-6
    )
    with pytest.raises(NotFound):
        stack.runtime.load("nope")

    # A second registry on the same store (a restart) serves the same predictions.
    reopened = ModelRegistry(stack.store, ServingOptions())
    reopened.load_all()
    restored = ModelRuntime(reopened).resolve("cls").predict(x[:5]).probabilities
    np.testing.assert_allclose(restored, prediction.probabilities, rtol=1e-6)
    reopened.close()


def test_concurrent_predictions_through_the_runtime_match_single_ones(stack: Stack) -> None:
    _, record = run(stack, seed_input())
    model = stack.runtime.resolve(record.model_id)
    rng = np.random.default_rng(5)
    queries = [rng.uniform(0, 60, size=(int(rng.integers(1, 4)), 3, 1)) for _ in range(40)]
    expected = [model.predict(q).values for q in queries]
    results: list[Any] = [None] * len(queries)

    def worker(i: int) -> None:
        results[i] = model.predict(queries[i]).values

    threads = [threading.Thread(target=worker, args=(i,)) for i in range(len(queries))]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(30)
    for got, want in zip(results, expected, strict=True):
        np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-4)
