"""Jobs on a stored dataset, in process (a local fitter stands in for the scaler service): scalers see
the training split only, in chunks; robust is refused past the in-memory limit; the hold always goes."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from model_service.affine_scalers import PER_FEATURE, AffineScaler, ScalerRef
from model_service.datasets.dataset_store import DatasetStore
from model_service.datasets.upload import DatasetUpload
from model_service.model_registry import ModelRegistry
from model_service.records import ModelRecord
from model_service.serving import ServingOptions
from model_service.spec import Head, Lstm, ModelSpec, Task
from model_service.training import DatasetOptions, DatasetRequest, TrainInput, TrainOptions
from model_service.training.jobs import TrainingManager
from scaler_service import sklearn_scalers as fitting
from service_common.artifacts import ArtifactStore
from service_common.errors import FailedPrecondition, ResourceExhausted
from tests.model_service.test_training import LocalFitter

KEY = b"test-signing-key-0123456789"
SPEC = ModelSpec(3, 2, (Lstm(4),), Head(Task.REGRESSION))


class StreamFitter(LocalFitter):
    """LocalFitter plus the streamed and one-call fits; records every chunk it was given."""

    def __init__(self) -> None:
        super().__init__()
        self.chunks: dict[str, list[int]] = {}
        self.whole: list[str] = []

    def streams(self, spec: Any) -> bool:
        return spec != "robust"

    def _ref(self, scaler_id: str, fitted: fitting.FittedScaler) -> AffineScaler:
        self._versions[scaler_id] = self._versions.get(scaler_id, 0) + 1
        scale, offset = fitted.affine()
        return AffineScaler(
            ScalerRef(scaler_id, self._versions[scaler_id]), PER_FEATURE, fitted.sample_shape, scale, offset
        )

    def fit_stream(self, scaler_id: str, spec: Any, chunks: Iterator[np.ndarray]) -> AffineScaler:
        stream = fitting.StreamingFit(fitting.make_spec(spec))
        for index, chunk in enumerate(chunks):
            self.chunks.setdefault(scaler_id, []).append(chunk.shape[0])
            stream.add(chunk, f"chunk {index}")
        return self._ref(scaler_id, stream.finish())

    def fit(self, scaler_id: str, spec: Any, data: np.ndarray) -> AffineScaler:
        self.whole.append(scaler_id)
        self.chunks[scaler_id] = [data.shape[0]]
        return self._ref(scaler_id, fitting.fit(fitting.make_spec(spec), data))


class Stack:
    def __init__(self, root: Path, in_memory_fit_bytes: int = 1 << 30, max_jobs: int = 2) -> None:
        self.datasets = DatasetStore(ArtifactStore(root / "datasets", KEY))
        self.fitter = StreamFitter()
        self.registry = ModelRegistry(ArtifactStore(root / "models", KEY), ServingOptions(max_batch_size=16))
        self.trainer = TrainingManager(
            self.registry,
            self.fitter,
            ServingOptions(max_batch_size=16),
            max_jobs,
            max_work=10**9,
            datasets=self.datasets,
            dataset_options=DatasetOptions(shuffle_buffer=64, in_memory_fit_bytes=in_memory_fit_bytes),
        )

    def upload(self, series: np.ndarray, rows_per_chunk: int = 100) -> str:
        upload = DatasetUpload(self.datasets, "series", ["a", "b"])
        for index, start in enumerate(range(0, len(series), rows_per_chunk)):
            upload.add({"series": series[start : start + rows_per_chunk]}, index)
        return upload.finish().dataset_id

    def close(self) -> None:
        self.trainer.shutdown()
        self.registry.close()


@pytest.fixture
def stack(tmp_path: Path) -> Iterator[Stack]:
    built = Stack(tmp_path)
    yield built
    built.close()


def _input(dataset_id: str, x_scaling: Any = "minmax", **options: Any) -> TrainInput:
    return TrainInput(
        model_id="",
        spec=SPEC,
        options=TrainOptions(**{"epochs": 1, "batch_size": 32, "seed": 3, **options}),
        dataset=DatasetRequest(dataset_id, target_columns=("b",)),
        x_scaling=x_scaling,
        y_scaling="standard",
    )


def _series(rows: int) -> np.ndarray:
    return np.random.default_rng(rows).normal(size=(rows, 2))


def test_scalers_are_fitted_on_the_training_split_only_chunk_by_chunk(
    stack: Stack, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr("model_service.datasets.samples.BLOCK_SAMPLES", 500)
    dataset_id = stack.upload(_series(3003))
    events = list(stack.trainer.start(_input(dataset_id, validation_fraction=0.1, shuffle=True)).events())
    record = events[-1]
    assert isinstance(record, ModelRecord) and record.dataset_id == dataset_id
    assert (record.n_train, record.n_validation) == (2700, 300)
    # Blocks of 500 samples up to the end of the training split; never a holdout sample.
    assert stack.fitter.chunks[f"{record.model_id}-x"] == [500, 500, 500, 500, 500, 200]
    assert stack.fitter.chunks[f"{record.model_id}-y"] == [500, 500, 500, 500, 500, 200]
    assert set(record.holdout_metrics) == {"mse", "mae", "rmse"}
    assert record.holdout_metrics["rmse"] == pytest.approx(np.sqrt(record.holdout_metrics["mse"]))
    assert not stack.datasets.get(dataset_id).in_use  # the job let go of it


def test_robust_gets_the_split_in_one_call_within_the_limit_and_is_refused_past_it(tmp_path: Path) -> None:
    small = Stack(tmp_path / "small", in_memory_fit_bytes=1 << 20)
    try:
        dataset_id = small.upload(_series(400))
        record = list(small.trainer.start(_input(dataset_id, x_scaling="robust")).events())[-1]
        assert small.fitter.whole == [f"{record.model_id}-x"]
        assert small.fitter.chunks[f"{record.model_id}-x"] == [397]
    finally:
        small.close()
    tight = Stack(tmp_path / "tight", in_memory_fit_bytes=1000)
    try:
        dataset_id = tight.upload(_series(400))
        job = tight.trainer.start(_input(dataset_id, x_scaling="robust"))
        with pytest.raises(FailedPrecondition) as caught:
            list(job.events())
        message = str(caught.value)
        assert "has no partial_fit" in message and "dataset_in_memory_fit_mb" in message
        assert "minmax, standard or maxabs" in message
        assert not tight.datasets.get(dataset_id).in_use
        assert tight.registry.list()[0] == []  # nothing was published
    finally:
        tight.close()


def test_a_job_refused_at_the_door_lets_go_of_the_dataset(tmp_path: Path) -> None:
    stack = Stack(tmp_path, max_jobs=1)
    try:
        dataset_id = stack.upload(_series(300))
        first = stack.trainer.start(_input(dataset_id, epochs=5000))
        with pytest.raises(ResourceExhausted, match="max_training_jobs=1"):
            stack.trainer.start(_input(dataset_id))
        assert stack.datasets.artifacts.live_holds(dataset_id) == 1  # the running job's only
        first.cancel()
        assert first.join(60)
        assert stack.datasets.artifacts.live_holds(dataset_id) == 0
    finally:
        stack.close()
