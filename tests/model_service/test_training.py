"""Training jobs and the model registry serving them, in process without gRPC: a local fake stands in for the scaler service."""

from __future__ import annotations

import dataclasses
import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import keras
import numpy as np
import pytest

from model_service import builder, training
from model_service.affine_scalers import PER_FEATURE, AffineScaler, ScalerRef
from model_service.cost import MIB, Admission, ModelCost
from model_service.model_registry import ModelRegistry, VersionState
from model_service.model_store import GRAPH_FILE, META_FILE, MODEL_FILE
from model_service.records import EpochProgress, ModelRecord
from model_service.serving import ModelSignature, ServedModel, ServingOptions
from model_service.spec import Dense, Head, Lstm, ModelSpec, Task, plan, with_defaults
from model_service.training import TrainInput, TrainOptions, TrainStarted
from model_service.training.graph import StoredGraphs
from model_service.training.jobs import TrainingManager
from scaler_service import sklearn_scalers as fitting
from service_common.artifacts import ArtifactStore
from service_common.errors import Cancelled, FailedPrecondition, IntegrityError, NotFound, ResourceExhausted
from tests.model_service.helpers import seed_example


class LocalFitter:
    """Fits with the scaler service's own domain code, in process; records what it was asked."""

    def __init__(self) -> None:
        self.fitted: list[tuple[str, int]] = []
        self.deleted: list[ScalerRef] = []
        self._versions: dict[str, int] = {}

    def fit(self, scaler_id: str, spec: Any, data: np.ndarray) -> AffineScaler:
        fitted = fitting.fit(fitting.make_spec(spec), data)
        self._versions[scaler_id] = self._versions.get(scaler_id, 0) + 1
        ref = ScalerRef(scaler_id, self._versions[scaler_id])
        self.fitted.append((scaler_id, data.shape[0]))
        scale, offset = fitted.affine()
        return AffineScaler(ref, PER_FEATURE, fitted.sample_shape, scale, offset)

    def delete(self, ref: ScalerRef) -> None:
        self.deleted.append(ref)


class Stack:
    def __init__(self, root: Path, max_jobs: int = 2) -> None:
        self.store = ArtifactStore(root, b"test-signing-key-0123456789")
        self.graphs = ArtifactStore(root.parent / "serving-graphs", b"test-signing-key-0123456789")
        self.fitter = LocalFitter()
        self.options = ServingOptions(max_batch_size=16)
        # What the trainer process does for a version stored without a serving graph.
        made = StoredGraphs(self.store, self.graphs)
        self.registry = ModelRegistry(
            self.store, self.options, graphs=self.graphs, make_graph=lambda i, v: made.ensure(i, v) and None
        )
        self.registry.load_all()
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
    first = stack.registry.served(alone.model_id).infer(query).values
    # Again with the same seed while a job with another seed trains at the same time.
    other = stack.trainer.start(seed_input(seed=99, epochs=6))
    _, again = run(stack, seed_input(seed=11))
    list(other.events())
    second = stack.registry.served(again.model_id).infer(query).values
    np.testing.assert_allclose(first, second, rtol=1e-5, atol=1e-5)
    _, different = run(stack, seed_input(seed=12))
    third = stack.registry.served(different.model_id).infer(query).values
    assert not np.allclose(first, third, rtol=1e-5, atol=1e-5)


def test_cancel_leaves_nothing(stack: Stack) -> None:
    job = stack.trainer.start(dataclasses.replace(slow_input(), x_scaling="standard"))
    events = job.events()
    assert isinstance(next(events), TrainStarted)
    assert isinstance(next(events), EpochProgress)
    assert [e.state for e in stack.registry.index()] == [VersionState.TRAINING]
    job.cancel()
    with pytest.raises(Cancelled):
        list(events)
    assert job.join(10)
    assert stack.registry.index() == []
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
    assert stack.registry.served("m").version == 1
    assert stack.registry.served("m", 1).infer(np.ones((2, 3))).values.shape == (2, 1)
    with pytest.raises(FailedPrecondition, match="version 2 is still training"):
        stack.registry.served("m", 2)
    with pytest.raises(FailedPrecondition, match="no ready version yet"):
        stack.registry.served(second.model_id)
    with pytest.raises(NotFound):
        stack.registry.served("m", 3)
    for job in (first, second):
        job.cancel()
        assert job.join(10)
    assert stack.trainer.running() == 0
    assert [(e.model_id, e.version, e.state) for e in stack.registry.index()] == [
        ("m", 1, VersionState.READY)
    ]
    assert ready.version == 1


def test_served_models_interface_for_the_inference_protocol(stack: Stack, tmp_path: Path) -> None:
    classes = ModelSpec(4, 2, (Lstm(5), Dense(4, "relu")), Head(Task.MULTICLASS, n_classes=3))
    rng = np.random.default_rng(1)
    x = rng.normal(size=(40, 4, 2))
    request = TrainInput(
        "cls", classes, TrainOptions(epochs=2, batch_size=8, seed=3), x=x, y=rng.integers(0, 3, 40)
    )
    run(stack, request)
    model = stack.registry.served("cls")
    assert (model.model_id, model.version) == ("cls", 1)
    assert model.signature == ModelSignature(timesteps=4, features=2, task=Task.MULTICLASS, outputs=3)
    prediction = model.infer(x[:5].astype(np.float32))
    assert prediction.values is None
    assert prediction.probabilities.shape == (5, 3) and prediction.labels.dtype == np.int64
    np.testing.assert_allclose(prediction.probabilities.sum(axis=1), 1.0, atol=1e-5)
    assert prediction.labels.tolist() == prediction.probabilities.argmax(axis=1).tolist()

    stack.registry.unload("cls")
    assert [(e.state, e.reason) for e in stack.registry.index()] == [(VersionState.UNAVAILABLE, "unloaded")]
    with pytest.raises(FailedPrecondition, match="unloaded"):
        stack.registry.served("cls")
    stack.registry.load("cls")
    assert [e.state for e in stack.registry.index()] == [VersionState.READY]
    np.testing.assert_allclose(
        stack.registry.served("cls").infer(x[:5]).probabilities, prediction.probabilities, rtol=1e-6
    )
    with pytest.raises(NotFound):
        stack.registry.load("nope")

    # A second registry on the same store (a restart) serves the same predictions.
    reopened = ModelRegistry(stack.store, ServingOptions())
    reopened.load_all()
    restored = reopened.served("cls").infer(x[:5]).probabilities
    np.testing.assert_allclose(restored, prediction.probabilities, rtol=1e-6)
    reopened.close()


def test_concurrent_predictions_through_the_registry_match_single_ones(stack: Stack) -> None:
    _, record = run(stack, seed_input())
    model = stack.registry.served(record.model_id)
    rng = np.random.default_rng(5)
    queries = [rng.uniform(0, 60, size=(int(rng.integers(1, 4)), 3, 1)) for _ in range(40)]
    expected = [model.infer(q).values for q in queries]
    results: list[Any] = [None] * len(queries)

    def worker(i: int) -> None:
        results[i] = model.infer(queries[i]).values

    threads = [threading.Thread(target=worker, args=(i,)) for i in range(len(queries))]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(30)
    for got, want in zip(results, expected, strict=True):
        np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-4)


def test_holdout_is_the_time_ordered_tail_scaled_with_the_training_fit(
    stack: Stack, monkeypatch: pytest.MonkeyPatch
) -> None:
    built: list[tuple[np.ndarray, np.ndarray, int | None, Any]] = []
    original = training.fitting.dataset

    def spy(x: np.ndarray, y: np.ndarray, batch_size: int, shuffle_seed: int | None) -> Any:
        dataset = original(x, y, batch_size, shuffle_seed)
        built.append((x.copy(), y.copy(), shuffle_seed, dataset))
        return dataset

    monkeypatch.setattr(training.fitting, "dataset", spy)
    x, y = seed_example()
    run(stack, seed_input(validation_fraction=0.25))  # shuffle on; 13 samples: 10 train, last 3 holdout
    (train_x, train_y, train_seed, train_set), (val_x, val_y, val_seed, _) = built
    assert train_seed is not None and val_seed is None  # only the training split is ever shuffled
    # x: MinMax fitted on the 10 training windows (values 1..12); y: standard, on y[:10] only.
    low, high = x[:10].min(), x[:10].max()
    np.testing.assert_allclose(train_x, (x[:10] - low) / (high - low))
    np.testing.assert_allclose(val_x, (x[10:] - low) / (high - low))
    assert val_x.max() > 4  # [40, 50, 60] far outside [0, 1]: the holdout took no part in the fit
    mean, std = y[:10].mean(), y[:10].std()
    np.testing.assert_allclose(train_y.reshape(-1), (y[:10] - mean) / std)
    np.testing.assert_allclose(val_y.reshape(-1), (y[10:] - mean) / std)
    # One epoch of the shuffled training set (ceil(10 / 4) = 3 batches) holds exactly the 10 training rows.
    epoch = np.concatenate([batch_x.numpy() for batch_x, _ in train_set.take(3)]).reshape(10, 3)
    assert not np.array_equal(epoch, train_x.reshape(10, 3).astype(np.float32))  # shuffled...
    by_first_value = np.argsort(epoch[:, 0])
    np.testing.assert_allclose(
        epoch[by_first_value], train_x.reshape(10, 3), rtol=1e-6
    )  # ...training rows only


def test_serving_runs_the_versions_onnx_graph_never_model_predict(
    stack: Stack, monkeypatch: pytest.MonkeyPatch
) -> None:
    def forbidden(*args: object, **kwargs: object) -> None:
        raise AssertionError("model.predict must not be used for serving")

    monkeypatch.setattr(keras.Model, "predict", forbidden)
    monkeypatch.setattr(keras.Model, "predict_on_batch", forbidden)
    _, record = run(stack, seed_input(validation_fraction=0.25))  # the holdout is scored by serving too
    files = stack.store.read(record.model_id, record.version)
    assert set(files) >= {MODEL_FILE, GRAPH_FILE, META_FILE}  # the graph is committed with the version
    keras_model = builder.from_keras_bytes(files[MODEL_FILE], record.spec, "trained")
    model = stack.registry.served(record.model_id)
    assert not model.loaded  # built on its first call
    rng = np.random.default_rng(2)
    for batch in (1, 7, 64):  # one graph serves every batch size
        x = rng.uniform(0, 60, size=(batch, 3, 1))
        got = model.infer(x).values
        scaled = record_scalers(stack, record.model_id)
        direct = keras_model(scaled[0].transform(x).astype(np.float32), training=False).numpy()
        np.testing.assert_allclose(got, scaled[1].inverse_transform(direct), rtol=1e-5, atol=1e-5)
    # After a restart the stored graph is served the same way.
    reopened = ModelRegistry(stack.store, ServingOptions(), graphs=stack.graphs)
    reopened.load_all()
    again = reopened.served(record.model_id)
    np.testing.assert_allclose(again.infer(x).values, got, rtol=1e-6)
    reopened.close()


def test_a_version_stored_without_a_graph_gets_one_made_once(stack: Stack) -> None:
    """As versions stored before serving graphs existed: the first call has the trainer make it."""
    _, record = run(stack, seed_input(model_id="old"))
    files = stack.store.read("old", 1)
    legacy = {name: data for name, data in files.items() if name in (MODEL_FILE, META_FILE)}
    stack.store.write(
        "legacy", 1, {**legacy, META_FILE: dataclasses.replace(record, model_id="legacy").to_json()}
    )
    x = np.random.default_rng(3).uniform(0, 60, size=(5, 3, 1))
    want = stack.registry.served("old").infer(x).values
    got = stack.registry.served("legacy").infer(x).values
    np.testing.assert_allclose(got, want, rtol=1e-6)
    assert [ref.version for ref in stack.graphs.scan("legacy")] == [1]  # kept for every process
    reopened = ModelRegistry(stack.store, ServingOptions(), graphs=stack.graphs)  # no trainer at all
    reopened.load_all()
    np.testing.assert_allclose(reopened.served("legacy").infer(x).values, want, rtol=1e-6)
    reopened.close()
    stack.registry.delete("legacy")
    assert list(stack.graphs.scan("legacy")) == []  # deleted with its version


def record_scalers(stack: Stack, model_id: str) -> tuple[AffineScaler, AffineScaler]:
    record = stack.registry.served(model_id).record
    assert record.x_scaler is not None and record.y_scaler is not None
    return record.x_scaler, record.y_scaler


class GatedSession:
    """The real session; its first pass blocks until released, so the next requests queue up behind it."""

    def __init__(self, inner: Any) -> None:
        self.inner = inner
        self.passes: list[int] = []
        self.first_pass = threading.Event()
        self.release = threading.Event()

    def run(self, x: np.ndarray) -> np.ndarray:
        self.passes.append(int(x.shape[0]))
        if len(self.passes) == 1:
            self.first_pass.set()
            assert self.release.wait(10)
        return self.inner.run(x)


def gated_copy(
    stack: Stack, served: ServedModel, options: ServingOptions, observe: Any = None
) -> tuple[ServedModel, GatedSession]:
    """A second ServedModel of ``served``'s version whose passes go through a GatedSession."""
    record = served.record
    model = ServedModel(
        record, lambda: stack.registry.graph(record.model_id, record.version), options, observe
    )
    gated = GatedSession(model.load())
    model._session = gated  # type: ignore[assignment]
    return model, gated


def wait_until_queued(model: ServedModel, requests: int) -> None:
    deadline = time.monotonic() + 10
    while len(model._batcher._queue) < requests:
        assert time.monotonic() < deadline, "requests did not queue up"
        time.sleep(0.005)


def test_concurrent_requests_share_forward_passes_in_the_serving_path(stack: Stack) -> None:
    _, record = run(stack, seed_input())
    served = stack.registry.served(record.model_id)
    observed: list[int] = []
    model, gated = gated_copy(stack, served, ServingOptions(max_batch_size=64), observed.append)
    queries = [np.full((1, 3, 1), float(i)) + np.arange(3.0).reshape(1, 3, 1) for i in range(12)]
    expected = [served.infer(q).values for q in queries]
    with ThreadPoolExecutor(13) as pool:
        blocker = pool.submit(model.infer, np.ones((1, 3, 1)))
        assert gated.first_pass.wait(10)
        futures = [pool.submit(model.infer, q) for q in queries]
        wait_until_queued(model, len(queries))
        gated.release.set()
        results = [future.result(10).values for future in futures]
        blocker.result(10)
    assert gated.passes == [1, 12] and observed == [1, 12]  # twelve requests, one forward pass
    for got, want in zip(results, expected, strict=True):
        np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-4)  # each caller gets its own rows
    model.close("done")


def test_each_prediction_names_the_forward_pass_that_computed_it_and_how_long_it_waited(stack: Stack) -> None:
    _, record = run(stack, seed_input())
    served = stack.registry.served(record.model_id)
    model, gated = gated_copy(stack, served, ServingOptions(max_batch_size=64))
    held_ns = 100_000_000
    with ThreadPoolExecutor(4) as pool:
        blocker = pool.submit(model.infer, np.ones((1, 3, 1)))
        assert gated.first_pass.wait(10)
        futures = [pool.submit(model.infer, np.ones((rows, 3, 1))) for rows in (1, 2, 3)]
        wait_until_queued(model, 3)
        time.sleep(held_ns / 1e9)  # the queued requests wait at least this long for their pass
        gated.release.set()
        queued = [future.result(10).timing for future in futures]
        first = blocker.result(10).timing
    assert gated.passes == [1, 6]
    # The idle request ran at once, in a pass of its own that took as long as it was held.
    assert first.forward.rows == 1 and first.forward.duration_ns >= held_ns
    assert first.queue_ns < held_ns
    # The three queued requests were computed in one pass, after the first, which they waited for.
    shared = queued[0].forward
    assert all(t.forward is shared for t in queued) and shared is not first.forward
    assert shared.rows == 6 and shared.duration_ns > 0
    assert shared.started_ns >= first.forward.started_ns + first.forward.duration_ns
    for timing in queued:
        assert timing.queue_ns >= held_ns
        assert timing.input_ns > 0 and timing.output_ns > 0
    model.close("done")


def test_a_signed_artifact_with_code_in_it_is_refused_by_safe_mode(
    stack: Stack, caplog: pytest.LogCaptureFixture
) -> None:
    _, record = run(stack, seed_input(model_id="kept"))
    # A model that runs arbitrary Python (a Lambda layer), signed with the store's own key.
    unsafe = keras.Sequential(
        [
            keras.Input((3, 1)),
            keras.layers.Lambda(lambda t: t * 2.0),
            keras.layers.Flatten(),
            keras.layers.Dense(1),
        ]
    )
    keras_bytes = builder.to_keras_bytes(unsafe)
    with pytest.raises(IntegrityError, match="Keras refused the model"):
        builder.from_keras_bytes(keras_bytes, record.spec, "sneaky v1")
    sneaky = dataclasses.replace(record, model_id="sneaky", version=1)
    # Stored as versions were before they carried a serving graph: making one needs Keras to load it.
    stack.store.write("sneaky", 1, {MODEL_FILE: keras_bytes, META_FILE: sneaky.to_json()})
    stack.registry.refresh()  # listed, and its graph asked of the "trainer" in the background
    deadline = time.monotonic() + 60
    while [(e.model_id, e.version) for e in stack.registry.index()] != [("kept", 1)]:
        assert time.monotonic() < deadline, stack.registry.index()
        time.sleep(0.05)
    with pytest.raises(NotFound):
        stack.registry.served("sneaky")
    assert list(stack.graphs.scan("sneaky")) == []
    assert any(
        "skipping model artifact" in r.getMessage()
        and "sneaky" in r.getMessage()
        and "Keras refused the model" in r.getMessage()
        for r in caplog.records
    )


def test_the_memory_estimate_counts_the_rows_a_batch_can_really_hold() -> None:
    """batch_size 65 536 on one row is a batch of one row: admitted. On 40 rows the batches hold 40,
    past the budget: refused before anything runs, naming a batch size that fits."""
    wide = ModelSpec(
        2000, 1, (Lstm(8, return_sequences=True), Dense(1024, "relu"), Lstm(4)), Head(Task.REGRESSION)
    )
    admission = Admission(512 * MIB, 64 * MIB)

    def request(rows: int) -> TrainInput:
        options = TrainOptions(epochs=1, batch_size=65_536)
        return TrainInput("", wide, options, x=np.zeros((rows, 2000, 1)), y=np.zeros(rows))

    prepared = training.prepare(request(1), 10**9, admission)
    assert prepared.estimate is not None and prepared.estimate.memory_bytes < 512 * MIB
    with pytest.raises(ResourceExhausted) as info:
        training.prepare(request(40), 10**9, admission)
    fits = admission.max_batch_size(ModelCost.of(plan(with_defaults(wide))), 40, 0)
    assert "training with batch_size 65536 needs an estimated" in str(info.value)
    assert f"use batch_size {fits} or less" in str(info.value) and 1 <= fits < 40
