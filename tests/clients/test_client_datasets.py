"""DatasetClient against the real services: uploads from arrays, memory maps and chunk iterables, then
training by reference through ModelClient."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from lstm_stack_client import LstmStackClient, LstmStackError, model_spec
from lstm_stack_client.datasets import array_chunks, csv_chunks, csv_columns, rows_per_chunk

from protos.lstm_stack.v1 import dataset_pb2


def _series(rows: int = 240) -> np.ndarray:
    t = np.arange(rows, dtype=np.float64)
    return np.stack([np.sin(t / 7), np.cos(t / 11) * 3], axis=1)


def test_a_memory_mapped_series_uploads_in_chunks_and_trains_by_reference(
    client: LstmStackClient, tmp_path: Path
) -> None:
    path = tmp_path / "series.npy"
    np.save(path, _series())
    mapped = np.load(path, mmap_mode="r")
    info = client.datasets.upload_series(mapped, ["s", "c"], rows_per_chunk=50)
    assert (info.rows, info.chunks, list(info.columns)) == (240, 1, ["s", "c"])  # 5 chunks, compacted
    assert client.datasets.get(info.id) == info
    assert info.id in {d.id for d in client.datasets.list(page_size=1)}
    # The same rows from an iterable of chunks: the same dataset.
    assert client.datasets.upload_series(iter(np.array_split(_series(), 3)), ["s", "c"]).id == info.id
    run = client.model.train(
        model_spec("lstm:4", timesteps=4, features=2),
        dataset=info.id,
        target_columns=["c"],
        stride=2,
        epochs=1,
        batch_size=16,
        validation_fraction=0.25,
        x_scaling="standard",
    )
    model = run.result()
    assert model.dataset_id == info.id and model.n_train + model.n_validation == (240 - 4 - 1) // 2 + 1
    client.datasets.delete(info.id)
    with pytest.raises(LstmStackError) as caught:
        client.datasets.get(info.id)
    assert caught.value.code.name == "NOT_FOUND"


def test_supervised_samples_upload_in_matching_chunks(client: LstmStackClient) -> None:
    x = np.random.default_rng(4).normal(size=(70, 3, 1))
    info = client.datasets.upload_supervised(x, x.sum(axis=(1, 2)), rows_per_chunk=32)
    assert info.kind == dataset_pb2.DATASET_SUPERVISED and (info.rows, info.chunks) == (70, 1)
    with pytest.raises(ValueError, match="x has 70 rows but y has 69"):
        client.datasets.upload_supervised(x, x.sum(axis=(1, 2))[:69])


def test_bad_chunks_come_back_as_invalid_argument(client: LstmStackClient) -> None:
    with pytest.raises(LstmStackError) as caught:
        client.datasets.upload_series([np.ones((3, 2)), np.ones((3, 2), dtype=np.float32)], ["a", "b"])
    assert caught.value.code.name == "INVALID_ARGUMENT"
    assert "chunk 1 series has dtype float32" in caught.value.details


def test_csv_files_are_read_a_chunk_of_rows_at_a_time(tmp_path: Path) -> None:
    path = tmp_path / "series.csv"
    path.write_text("load, temp\n1,2\n3,4\n\n5,6\n")
    assert csv_columns(path) == ["load", "temp"]
    chunks = list(csv_chunks(path, rows=2))
    assert [c.tolist() for c in chunks] == [[[1, 2], [3, 4]], [[5, 6]]]
    path.write_text("a,b\n1,2\n3\n")
    with pytest.raises(ValueError, match=r"series.csv:3: 1 values; the header names 2 columns"):
        list(csv_chunks(path))
    path.write_text("a,b\n1,x\n")
    with pytest.raises(ValueError, match="not a number"):
        list(csv_chunks(path))


def test_chunks_of_a_memory_map_hold_about_the_chunk_size(tmp_path: Path) -> None:
    array = np.zeros((10_000, 4), dtype=np.float32)
    assert rows_per_chunk(array, chunk_bytes=1600) == 100
    sizes = [len(c) for c in array_chunks(array, 3000)]
    assert sizes == [3000, 3000, 3000, 1000]
