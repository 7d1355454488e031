"""DatasetService over gRPC: upload, get, list (paging), delete, and bad input with precise statuses."""

from __future__ import annotations

import errno
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import grpc
import numpy as np
import pytest

from model_service.datasets import upload as upload_module
from protos.lstm_stack.v1 import dataset_pb2, dataset_pb2_grpc, tensor_pb2
from service_common import codec
from tests.model_service.conftest import ModelServerHandle
from tests.model_service.datasets.helpers import series_chunks, supervised_chunks, toy_series, upload
from tests.model_service.helpers import status_of

INVALID = grpc.StatusCode.INVALID_ARGUMENT


@pytest.fixture(scope="module")
def datasets(model_server: ModelServerHandle) -> dataset_pb2_grpc.DatasetServiceStub:
    return dataset_pb2_grpc.DatasetServiceStub(model_server.channel)


def _leftovers(store: Path) -> list[Path]:
    return list((store / "datasets").glob(".tmp-*"))


def _assert_healthy(datasets: dataset_pb2_grpc.DatasetServiceStub) -> None:
    info = upload(datasets, series_chunks(np.arange(6.0).reshape(3, 2), ["p", "q"], 2))
    assert datasets.GetDataset(dataset_pb2.GetDatasetRequest(dataset_id=info.id), timeout=10).rows == 3


def test_a_series_uploaded_in_chunks_is_described_listed_and_deleted(
    datasets: dataset_pb2_grpc.DatasetServiceStub, model_server: ModelServerHandle
) -> None:
    series = toy_series(250, 3, seed=5)
    info = upload(datasets, series_chunks(series, ["t", "u", "v"], 64))
    assert info.id.startswith("ds-") and info.kind == dataset_pb2.DATASET_SERIES
    assert (list(info.columns), info.rows, info.chunks) == (["t", "u", "v"], 250, 1)  # 4 chunks, one part
    assert [(a.name, a.dtype, list(a.shape)) for a in info.arrays] == [
        ("series", tensor_pb2.FLOAT32, [250, 3])
    ]
    assert info.size_bytes == series.nbytes and not info.in_use
    assert datasets.GetDataset(dataset_pb2.GetDatasetRequest(dataset_id=info.id), timeout=10) == info
    # The same data again, chunked otherwise: the same dataset, stored once.
    assert upload(datasets, series_chunks(series, ["t", "u", "v"], 250)).id == info.id
    parts = sorted(p.name for p in (model_server.store / "datasets" / info.id / "1").iterdir())
    assert parts == ["SIGNATURE", "meta.json", "series-00000.npy"]
    assert (
        datasets.DeleteDataset(dataset_pb2.DeleteDatasetRequest(dataset_id=info.id), timeout=10).dataset_id
        == info.id
    )
    code, details = status_of(
        datasets.GetDataset, dataset_pb2.GetDatasetRequest(dataset_id=info.id), timeout=10
    )
    assert code == grpc.StatusCode.NOT_FOUND and info.id in details
    code, _ = status_of(
        datasets.DeleteDataset, dataset_pb2.DeleteDatasetRequest(dataset_id=info.id), timeout=10
    )
    assert code == grpc.StatusCode.NOT_FOUND


def test_a_supervised_dataset_keeps_x_and_y(datasets: dataset_pb2_grpc.DatasetServiceStub) -> None:
    x = np.random.default_rng(2).normal(size=(90, 3, 2))
    y = x.sum(axis=(1, 2))
    info = upload(datasets, supervised_chunks(x, y, 40))
    assert info.kind == dataset_pb2.DATASET_SUPERVISED and (info.rows, info.chunks) == (90, 1)
    assert [(a.name, list(a.shape)) for a in info.arrays] == [("x", [90, 3, 2]), ("y", [90])]


def test_listing_pages_through_every_dataset_in_id_order(
    datasets: dataset_pb2_grpc.DatasetServiceStub,
) -> None:
    ids = {upload(datasets, series_chunks(np.full((4, 1), float(i)), ["k"], 4)).id for i in range(5)}
    seen: list[str] = []
    token = ""
    while True:
        page = datasets.ListDatasets(
            dataset_pb2.ListDatasetsRequest(page_size=2, page_token=token), timeout=10
        )
        assert len(page.datasets) <= 2
        seen.extend(d.id for d in page.datasets)
        token = page.next_page_token
        if not token:
            break
    assert seen == sorted(seen) and ids <= set(seen)
    code, details = status_of(
        datasets.ListDatasets, dataset_pb2.ListDatasetsRequest(page_token="nope"), timeout=10
    )
    assert code == INVALID and "ListDatasets" in details


def _chunk(series: np.ndarray | None = None, **fields: object) -> dataset_pb2.DatasetChunk:
    chunk = dataset_pb2.DatasetChunk(**fields)
    if series is not None:
        chunk.series.CopyFrom(codec.from_numpy(series))
    return chunk


SERIES_HEADER = dataset_pb2.DatasetHeader(kind=dataset_pb2.DATASET_SERIES, columns=["a", "b"])


@pytest.mark.parametrize(
    ("chunks", "expected"),
    [
        (
            [_chunk(np.ones((3, 2)), header=SERIES_HEADER), _chunk(np.ones((3, 2), dtype=np.float32))],
            "chunk 1 series has dtype float32; the first chunk's was float64",
        ),
        (
            [_chunk(np.ones((3, 2)), header=SERIES_HEADER), _chunk(np.ones((3, 3)))],
            "chunk 1 series has shape [3, 3]; the header names 2 column(s), so expected (rows, 2)",
        ),
        (
            [_chunk(np.ones((3, 2)), header=SERIES_HEADER), _chunk(np.array([[1.0, np.nan]]))],
            "chunk 1 series: values must be finite; found nan at index [0, 1]",
        ),
        (
            [_chunk(np.array([[1.0, np.inf]]), header=SERIES_HEADER)],
            "chunk 0 series: values must be finite; found inf",
        ),
        ([_chunk(np.ones((3, 2)))], "the first chunk must carry the header"),
        (
            [_chunk(np.ones((3, 2)), header=SERIES_HEADER), _chunk(np.ones((1, 2)), header=SERIES_HEADER)],
            "chunk 1 carries a header; only the first chunk may",
        ),
        ([], "Upload received no chunks"),
        ([_chunk(header=SERIES_HEADER)], "the upload carried no rows"),
        (
            [_chunk(np.ones((3, 2)), header=dataset_pb2.DatasetHeader(kind=dataset_pb2.DATASET_SERIES))],
            "needs columns",
        ),
        (
            [
                dataset_pb2.DatasetChunk(
                    header=SERIES_HEADER,
                    series=tensor_pb2.Tensor(dtype=tensor_pb2.FLOAT64, shape=[2, 2], raw=b"123"),
                )
            ],
            "chunk 0 series: shape [2, 2] of FLOAT64 needs 32 bytes, got 3",
        ),
    ],
)
def test_bad_uploads_are_invalid_argument_leave_nothing_and_the_server_stays_healthy(
    datasets: dataset_pb2_grpc.DatasetServiceStub,
    model_server: ModelServerHandle,
    chunks: list[dataset_pb2.DatasetChunk],
    expected: str,
) -> None:
    before = datasets.ListDatasets(dataset_pb2.ListDatasetsRequest(page_size=1000), timeout=10).datasets
    code, details = status_of(datasets.Upload, iter(chunks), timeout=30)
    assert (code, expected in details) == (INVALID, True), details
    after = datasets.ListDatasets(dataset_pb2.ListDatasetsRequest(page_size=1000), timeout=10).datasets
    assert list(after) == list(before)
    _wait_until(lambda: not _leftovers(model_server.store), "the failed upload's draft to be removed")
    _assert_healthy(datasets)


@pytest.mark.parametrize("dataset_id", ["", "ds-123", "../etc", "ds-" + "g" * 32])
def test_malformed_ids_are_invalid_argument(
    datasets: dataset_pb2_grpc.DatasetServiceStub, dataset_id: str
) -> None:
    code, details = status_of(
        datasets.GetDataset, dataset_pb2.GetDatasetRequest(dataset_id=dataset_id), timeout=10
    )
    assert code == INVALID and ("required" in details or "expected 'ds-' and 32 hex digits" in details)


def test_an_unknown_id_is_not_found(datasets: dataset_pb2_grpc.DatasetServiceStub) -> None:
    code, details = status_of(
        datasets.GetDataset, dataset_pb2.GetDatasetRequest(dataset_id="ds-" + "0" * 32), timeout=10
    )
    assert code == grpc.StatusCode.NOT_FOUND and "upload it first" in details


def _wait_until(condition: object, what: str, timeout: float = 20.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():  # type: ignore[operator]
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.05)


def test_an_upload_cancelled_midway_lists_nothing_and_leaves_nothing_on_disk(
    datasets: dataset_pb2_grpc.DatasetServiceStub,
    model_server: ModelServerHandle,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(upload_module, "PART_BYTES", 1)  # the server (in this process): a part per chunk
    sent = threading.Event()
    release = threading.Event()
    series = np.random.default_rng(9).normal(size=(300, 2))

    def chunks() -> Iterator[dataset_pb2.DatasetChunk]:
        parts = series_chunks(series, ["a", "b"], 100)
        yield next(parts)
        yield next(parts)
        sent.set()
        release.wait(10)  # the client gives up before the last chunk
        yield next(parts)

    before = datasets.ListDatasets(dataset_pb2.ListDatasetsRequest(page_size=1000), timeout=10).datasets
    call = datasets.Upload.future(chunks(), timeout=30)
    assert sent.wait(10)
    # The parts written so far are in the draft until the call ends.
    _wait_until(lambda: any(d.glob("series-*.npy") for d in _leftovers(model_server.store)), "a part on disk")
    call.cancel()
    release.set()
    with pytest.raises(grpc.FutureCancelledError):
        call.result()
    _wait_until(lambda: not _leftovers(model_server.store), "the cancelled upload's parts to be removed")
    after = datasets.ListDatasets(dataset_pb2.ListDatasetsRequest(page_size=1000), timeout=10).datasets
    assert list(after) == list(before)
    _assert_healthy(datasets)


def test_a_full_disk_is_resource_exhausted_leaves_nothing_and_the_server_stays_healthy(
    datasets: dataset_pb2_grpc.DatasetServiceStub,
    model_server: ModelServerHandle,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # The server runs in this process: its writes of the second part fail as on a full disk.
    real = np.lib.format.write_array
    written = []

    def write_until_full(fh: object, array: np.ndarray, **kwargs: object) -> None:
        if written:
            raise OSError(errno.ENOSPC, "No space left on device")
        written.append(len(array))
        real(fh, array, **kwargs)

    monkeypatch.setattr(np.lib.format, "write_array", write_until_full)
    monkeypatch.setattr(upload_module, "PART_BYTES", 1)  # a part per chunk
    before = datasets.ListDatasets(dataset_pb2.ListDatasetsRequest(page_size=1000), timeout=10).datasets
    series = np.random.default_rng(12).normal(size=(30, 2))
    code, details = status_of(datasets.Upload, series_chunks(series, ["a", "b"], 10), timeout=30)
    assert code == grpc.StatusCode.RESOURCE_EXHAUSTED
    assert "ran out of disk space after 10 row(s)" in details and "nothing of this upload was kept" in details
    monkeypatch.undo()
    _wait_until(lambda: not _leftovers(model_server.store), "the failed upload's parts to be removed")
    after = datasets.ListDatasets(dataset_pb2.ListDatasetsRequest(page_size=1000), timeout=10).datasets
    assert list(after) == list(before)
    _assert_healthy(datasets)
