"""Uploads in process: content ids, chunk checks, and a full disk that leaves nothing behind."""

from __future__ import annotations

import errno
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from model_service.datasets.dataset_store import DatasetStore
from model_service.datasets.samples import ChunkedArray
from model_service.datasets.upload import PART_BYTES, DatasetUpload
from service_common import artifacts
from service_common.artifacts import ArtifactStore
from service_common.errors import InvalidArgument, ResourceExhausted

REPO = Path(__file__).resolve().parents[3]


@pytest.fixture
def store(tmp_path: Path) -> DatasetStore:
    return DatasetStore(ArtifactStore(tmp_path / "datasets", b"k" * 32))


def _upload(
    store: DatasetStore,
    series: np.ndarray,
    rows_per_chunk: int,
    columns: tuple[str, ...] = ("a", "b"),
    part_bytes: int = PART_BYTES,
):
    upload = DatasetUpload(store, "series", list(columns), part_bytes=part_bytes)
    for index, start in enumerate(range(0, len(series), rows_per_chunk)):
        upload.add({"series": series[start : start + rows_per_chunk]}, index)
    return upload.finish()


def _files(store: DatasetStore) -> list[Path]:
    return sorted(p for p in store.artifacts.root.rglob("*") if p.is_file() and not p.name.startswith("."))


def test_the_same_data_in_any_chunking_is_one_dataset_stored_once(store: DatasetStore) -> None:
    series = np.arange(40, dtype=np.float32).reshape(20, 2)
    first = _upload(store, series, 3, part_bytes=1)  # a part per chunk
    again = _upload(store, series, 20)
    assert again.dataset_id == first.dataset_id and first.dataset_id.startswith("ds-")
    assert again.part_rows == first.part_rows == (3, 3, 3, 3, 3, 3, 2)  # the first upload's parts answer
    assert [m.dataset_id for m in store.list()[0]] == [first.dataset_id]
    assert not list(store.artifacts.root.glob(".tmp-*"))
    # Other data, other columns or another dtype: another id.
    assert _upload(store, series + 1, 5).dataset_id != first.dataset_id
    assert _upload(store, series, 5, ("a", "c")).dataset_id != first.dataset_id
    assert _upload(store, series.astype(np.float64), 5).dataset_id != first.dataset_id


def test_parts_are_read_back_memory_mapped_and_equal_to_what_was_sent(store: DatasetStore) -> None:
    series = np.random.default_rng(1).normal(size=(50, 2))
    meta = _upload(store, series, 16, part_bytes=1)
    opened = store.open(meta.dataset_id)
    try:
        assert [part.rows for part in opened.parts["series"]] == [16, 16, 16, 2]
        assert all(isinstance(part.load(), np.memmap) for part in opened.parts["series"])
        np.testing.assert_array_equal(ChunkedArray(opened.parts["series"]).take(0, 50), series)
        assert store.get(meta.dataset_id).in_use
    finally:
        opened.close()
    assert not store.get(meta.dataset_id).in_use


def test_a_tail_verifies_the_dataset_once_and_opens_only_the_parts_it_reads(
    store: DatasetStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    series = np.random.default_rng(2).normal(size=(50, 2))
    meta = _upload(store, series, 7, part_bytes=1)  # 8 parts: 7 x 7 rows and 1
    verified: list[str] = []
    loaded: list[str] = []
    real_verify, real_load = store.artifacts.verified_files, np.load

    def counting_verify(artifact_id: str, version: int) -> dict[str, Path]:
        verified.append(artifact_id)
        return real_verify(artifact_id, version)

    def counting_load(path: Path, *args: object, **kwargs: object) -> np.ndarray:
        loaded.append(Path(path).name)
        return real_load(path, *args, **kwargs)  # type: ignore[no-any-return, arg-type]

    monkeypatch.setattr(store.artifacts, "verified_files", counting_verify)
    monkeypatch.setattr(np, "load", counting_load)
    np.testing.assert_array_equal(store.tail(meta.dataset_id, 9), series[-9:])
    np.testing.assert_array_equal(store.tail(meta.dataset_id, 3), series[-3:])
    assert verified == [meta.dataset_id]  # the second tail trusted the first's verification
    # each tail opened only the parts holding its rows (the last part has 1 row, the others 7)
    assert loaded == ["series-00007.npy", "series-00006.npy", "series-00005.npy"] + [
        "series-00007.npy",
        "series-00006.npy",
    ]
    assert not store.get(meta.dataset_id).in_use  # the hold is released
    # Deleted and uploaded again: a new directory, verified again.
    store.delete(meta.dataset_id)
    assert _upload(store, series, 7, part_bytes=1).dataset_id == meta.dataset_id
    np.testing.assert_array_equal(store.tail(meta.dataset_id, 2), series[-2:])
    assert verified == [meta.dataset_id, meta.dataset_id]


@pytest.mark.parametrize("failing", ["part", "commit"])
def test_a_full_disk_is_resource_exhausted_and_leaves_nothing(
    store: DatasetStore, monkeypatch: pytest.MonkeyPatch, failing: str
) -> None:
    upload = DatasetUpload(store, "series", ["a"], part_bytes=1)
    upload.add({"series": np.ones((10, 1))}, 0)

    def full(*args: object, **kwargs: object) -> None:
        raise OSError(errno.ENOSPC, "No space left on device")

    if failing == "part":
        monkeypatch.setattr(np.lib.format, "write_array", full)
        with pytest.raises(ResourceExhausted, match=r"ran out of disk space after 10 row\(s\).*nothing"):
            upload.add({"series": np.ones((10, 1))}, 1)
    else:
        monkeypatch.setattr(artifacts, "_fsync_dir", full)
        with pytest.raises(ResourceExhausted, match="ran out of disk space"):
            upload.finish()
    monkeypatch.undo()
    assert _files(store) == []
    assert not list(store.artifacts.root.glob(".tmp-*"))
    assert store.list() == ([], "")


@pytest.mark.parametrize(
    ("chunks", "message"),
    [
        (
            [np.ones((3, 2)), np.ones((3, 2), dtype=np.float32)],
            "chunk 1 series has dtype float32; the first chunk's was float64",
        ),
        ([np.ones((3, 2)), np.ones((3, 3))], "chunk 1 series has shape [3, 3]; the header names 2 column(s)"),
        (
            [np.ones((3, 2)), np.array([[1.0, np.nan]])],
            "chunk 1 series: values must be finite; found nan at index [0, 1]",
        ),
        ([np.array([[np.inf, 1.0]])], "chunk 0 series: values must be finite; found inf"),
        ([np.ones((3, 2), dtype=np.complex128)], "dtype complex128 is not supported"),
    ],
)
def test_bad_chunks_are_refused_naming_what_was_expected(
    store: DatasetStore, chunks: list[np.ndarray], message: str
) -> None:
    upload = DatasetUpload(store, "series", ["a", "b"])
    with pytest.raises(InvalidArgument) as caught:
        for index, chunk in enumerate(chunks):
            upload.add({"series": chunk}, index)
    assert message in str(caught.value)
    upload.abort()
    assert _files(store) == [] and not list(store.artifacts.root.glob(".tmp-*"))


def test_supervised_chunks_must_agree_in_sample_shape_and_rows(store: DatasetStore) -> None:
    upload = DatasetUpload(store, "supervised", [])
    upload.add({"x": np.ones((4, 3, 1)), "y": np.ones(4)}, 0)
    with pytest.raises(
        InvalidArgument, match=r"chunk 1 x has shape \[2, 4, 1\]; the first chunk's rows were \[3, 1\]"
    ):
        upload.add({"x": np.ones((2, 4, 1)), "y": np.ones(2)}, 1)
    with pytest.raises(InvalidArgument, match="x has 2 rows but y has 3"):
        upload.add({"x": np.ones((2, 3, 1)), "y": np.ones(3)}, 1)
    with pytest.raises(InvalidArgument, match="chunk 1 has no y"):
        upload.add({"x": np.ones((2, 3, 1)), "y": None}, 1)
    with pytest.raises(InvalidArgument, match="chunk 1 sets series"):
        upload.add({"x": np.ones((2, 3, 1)), "y": np.ones(2), "series": np.ones((2, 1))}, 1)
    upload.abort()


@pytest.mark.parametrize(
    ("kind", "columns", "message"),
    [
        ("", [], "header.kind is required"),
        ("series", [], "needs columns"),
        ("series", ["a", "a"], "header.columns[1] 'a' repeats an earlier column"),
        ("series", ["a b"], "header.columns[0] 'a b' is not valid"),
        ("supervised", ["a"], "header.columns is for DATASET_SERIES"),
    ],
)
def test_bad_headers_are_refused(store: DatasetStore, kind: str, columns: list[str], message: str) -> None:
    with pytest.raises(InvalidArgument) as caught:
        DatasetUpload(store, kind, columns)
    assert message in str(caught.value)
    assert not list(store.artifacts.root.glob(".tmp-*"))


def test_an_upload_without_rows_is_refused(store: DatasetStore) -> None:
    upload = DatasetUpload(store, "series", ["a"])
    upload.add({"series": np.ones((0, 1))}, 0)
    with pytest.raises(InvalidArgument, match="carried no rows"):
        upload.finish()
    assert not list(store.artifacts.root.glob(".tmp-*"))


def test_thousands_of_one_row_chunks_make_a_few_parts_that_read_back_identical(store: DatasetStore) -> None:
    """20 500 one-row chunks were 20 500 parts (a file, an fsync and a descriptor each)."""
    rng = np.random.default_rng(7)
    x = rng.normal(size=(5000, 3, 2))
    y = rng.normal(size=5000)
    upload = DatasetUpload(store, "supervised", [], part_bytes=64 << 10)  # 64 KiB parts: 5000 rows in 5
    for index in range(len(x)):
        upload.add({"x": x[index : index + 1], "y": y[index : index + 1]}, index)
    meta = upload.finish()
    assert meta.rows == 5000 and 3 <= len(meta.part_rows) <= 6, meta.part_rows
    opened = store.open(meta.dataset_id)
    try:
        np.testing.assert_array_equal(ChunkedArray(opened.parts["x"]).take(0, 5000), x)
        np.testing.assert_array_equal(ChunkedArray(opened.parts["y"]).take(0, 5000), y)
    finally:
        opened.close()
    # The default part size: one part for all of it; the id does not depend on the parts.
    upload = DatasetUpload(store, "supervised", [])
    for index in range(0, len(x), 7):
        upload.add({"x": x[index : index + 7], "y": y[index : index + 7]}, index)
    store.delete(meta.dataset_id)
    again = upload.finish()
    assert (again.dataset_id, again.part_rows) == (meta.dataset_id, (5000,))


_READ_UNDER_LOW_FD_LIMIT = """
import resource, sys
from pathlib import Path
import numpy as np
from model_service.datasets.dataset_store import DatasetStore
from model_service.datasets.samples import DatasetSamples, Windowing
from service_common.artifacts import ArtifactStore

store = DatasetStore(ArtifactStore(Path(sys.argv[1]), b"k" * 32))
resource.setrlimit(resource.RLIMIT_NOFILE, (64, resource.getrlimit(resource.RLIMIT_NOFILE)[1]))
opened = store.open(sys.argv[2])
try:
    samples = DatasetSamples(opened, Windowing(4, 1, 1, (0, 1), (1,)))
    xs = [x for x, _ in samples.blocks(0, samples.n)]
    np.save(sys.argv[3], np.concatenate([x[:, 0, :] for x in xs]))
finally:
    opened.close()
tail = store.tail(sys.argv[2], 1500)
np.save(sys.argv[4], tail)
"""


def test_a_dataset_of_more_parts_than_open_files_allowed_reads_back_whole(
    store: DatasetStore, tmp_path: Path
) -> None:
    """Every part was memory-mapped at once, a descriptor each: past RLIMIT_NOFILE, training on an
    intact dataset failed DATA_LOSS "Too many open files"."""
    series = np.random.default_rng(3).normal(size=(2000, 2))
    meta = _upload(store, series, 2, part_bytes=1)  # 1000 parts, as uploads made before compaction
    assert len(meta.part_rows) == 1000
    firsts, tail = tmp_path / "firsts.npy", tmp_path / "tail.npy"
    done = subprocess.run(
        [
            sys.executable,
            "-c",
            _READ_UNDER_LOW_FD_LIMIT,
            str(store.artifacts.root),
            meta.dataset_id,
            firsts,
            tail,
        ],
        cwd=REPO,
        env={**os.environ, "PYTHONPATH": str(REPO)},
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    np.testing.assert_array_equal(np.load(firsts), series[: 2000 - 4])  # each window's first row
    np.testing.assert_array_equal(np.load(tail), series[-1500:])
