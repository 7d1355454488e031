"""Datasets as stored: ``meta.json`` plus ``<array>-<part>.npy`` files in one signed artifact per dataset.

A dataset is immutable and named by its content (upload.py), so it has one version, 1. Parts are
written one by one as they arrive (ArtifactStore.draft) and read back memory-mapped once every file's
signature verified; a job holds the dataset (ArtifactStore.hold) so it cannot be deleted under it.
A part is mapped only while rows are copied out of it (``StoredPart.load``): a mapping holds a file
descriptor, and a dataset may have more parts than a process may have descriptors open.
Persistence only: no grpc, no TensorFlow.
"""

from __future__ import annotations

import builtins
import errno
import json
import logging
import re
import threading
from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np

from model_service.settings import ModelSettings
from service_common.artifacts import ArtifactDraft, ArtifactStore, Hold, load_signing_key
from service_common.errors import (
    FailedPrecondition,
    IntegrityError,
    InvalidArgument,
    NotFound,
    ResourceExhausted,
    echo,
)
from service_common.versioning import Page

log = logging.getLogger(__name__)

ARTIFACT_DIR = "datasets"
# Errors opening a part that say the process is out of descriptors or memory, not that the part is bad.
_OUT_OF_RESOURCES = (errno.EMFILE, errno.ENFILE, errno.ENOMEM)
VERSION = 1  # content-named, immutable: the only version
META_FILE = "meta.json"
FORMAT = 1
SUPERVISED = "supervised"
SERIES = "series"
ID_PREFIX = "ds-"
DATASET_ID = re.compile(r"ds-[0-9a-f]{32}")


# Datasets are memory-mapped while a job trains on them, so they need a directory store.
NEEDS_A_DIRECTORY = (
    "stored datasets need a directory store (training memory-maps their parts); this service's store "
    "is an S3 bucket: send the data in the Train request, or run the model service on a directory store"
)


def open_dataset_store(settings: ModelSettings) -> DatasetStore | None:
    """The datasets under ``<store>/datasets``, signed with the model store's key (every process alike);
    None on an S3 store (see NEEDS_A_DIRECTORY)."""
    if not isinstance(settings.store, Path):
        return None
    key = load_signing_key(settings.signing_key, settings.signing_key_file, settings.store)
    return DatasetStore(ArtifactStore(settings.store / ARTIFACT_DIR, key))


def check_dataset_id(dataset_id: str) -> str:
    if not dataset_id:
        raise InvalidArgument("dataset_id is required")
    if DATASET_ID.fullmatch(dataset_id) is None:
        raise InvalidArgument(
            f"dataset id {echo(dataset_id)} is not valid: expected 'ds-' and 32 hex digits, as Upload returns"
        )
    return dataset_id


def part_name(array: str, index: int) -> str:
    return f"{array}-{index:05d}.npy"


@dataclass(frozen=True)
class ArrayInfo:
    name: str  # x, y or series
    dtype: str  # numpy dtype string, e.g. "<f4"
    shape: tuple[int, ...]  # the whole array: (rows, ...)


@dataclass(frozen=True)
class DatasetMeta:
    dataset_id: str
    kind: str  # SUPERVISED | SERIES
    columns: tuple[str, ...]
    part_rows: tuple[int, ...]  # rows of each part, in order
    arrays: tuple[ArrayInfo, ...]
    size_bytes: int
    created_at: str
    in_use: bool = field(default=False, compare=False)  # not stored: live holds at the time of reading

    @property
    def rows(self) -> int:
        return sum(self.part_rows)

    def array(self, name: str) -> ArrayInfo:
        for info in self.arrays:
            if info.name == name:
                return info
        raise IntegrityError(f"dataset {self.dataset_id} has no array {name!r}")

    def to_json(self) -> bytes:
        body = {
            "format": FORMAT,
            "dataset_id": self.dataset_id,
            "kind": self.kind,
            "columns": list(self.columns),
            "part_rows": list(self.part_rows),
            "arrays": [{"name": a.name, "dtype": a.dtype, "shape": list(a.shape)} for a in self.arrays],
            "size_bytes": self.size_bytes,
            "created_at": self.created_at,
        }
        return json.dumps(body, indent=1).encode()

    @classmethod
    def from_json(cls, data: bytes, dataset_id: str) -> DatasetMeta:
        try:
            body = json.loads(data)
            if body.get("format") != FORMAT:
                raise IntegrityError(f"unsupported dataset format {body.get('format')!r}, expected {FORMAT}")
            if body["dataset_id"] != dataset_id:
                raise IntegrityError(f"metadata says it is {body['dataset_id']}")
            return cls(
                dataset_id=dataset_id,
                kind=str(body["kind"]),
                columns=tuple(str(c) for c in body["columns"]),
                part_rows=tuple(int(r) for r in body["part_rows"]),
                arrays=tuple(
                    ArrayInfo(str(a["name"]), str(a["dtype"]), tuple(int(d) for d in a["shape"]))
                    for a in body["arrays"]
                ),
                size_bytes=int(body["size_bytes"]),
                created_at=str(body["created_at"]),
            )
        except IntegrityError:
            raise
        except (ValueError, KeyError, TypeError, AttributeError) as exc:
            raise IntegrityError(f"malformed dataset metadata: {type(exc).__name__}: {exc}") from exc


@dataclass(frozen=True)
class StoredPart:
    """One part file of one array, verified, mapped only by ``load``."""

    dataset_id: str
    path: Path
    rows: int
    dtype: np.dtype
    sample_shape: tuple[int, ...]

    def load(self) -> np.ndarray:
        """The part memory-mapped, its dtype and shape checked against the metadata. The mapping (and
        its file descriptor) lives as long as the array or a view of it: copy rows out, then drop it."""
        try:
            part = np.load(self.path, mmap_mode="r", allow_pickle=False)
        except OSError as exc:
            if exc.errno in _OUT_OF_RESOURCES:
                # The process, not the data, is short of something: the part is intact.
                raise ResourceExhausted(
                    f"dataset {self.dataset_id}: part {self.path.name} could not be opened ({exc.strerror}); "
                    "the data is intact, retry when fewer jobs run"
                ) from exc
            raise IntegrityError(
                f"dataset {self.dataset_id}: part {self.path.name} is unreadable ({exc})"
            ) from exc
        except ValueError as exc:
            raise IntegrityError(
                f"dataset {self.dataset_id}: part {self.path.name} is unreadable ({exc})"
            ) from exc
        expected = (self.rows, *self.sample_shape)
        if part.dtype != self.dtype or part.shape != expected:
            raise IntegrityError(
                f"dataset {self.dataset_id}: part {self.path.name} is {part.dtype.str} {list(part.shape)}, its "
                f"metadata says {self.dtype.str} {list(expected)}"
            )
        return part


@dataclass
class OpenedDataset:
    """A verified dataset, its parts checked (nothing read, nothing left open), held until ``close``."""

    meta: DatasetMeta
    parts: dict[str, builtins.list[StoredPart]]  # array name -> parts, in order
    hold: Hold

    def close(self) -> None:
        self.hold.release()


class DatasetStore:
    def __init__(self, artifacts: ArtifactStore) -> None:
        self.artifacts = artifacts
        # Datasets verified for tail(), by id: the version directory's identity when it verified, its
        # metadata and files. A committed dataset never changes in place; a delete and re-upload makes a
        # new directory (another identity), which is verified again.
        self._verified: dict[str, tuple[tuple[int, int], DatasetMeta, dict[str, Path]]] = {}
        self._verified_lock = threading.Lock()

    def draft(self) -> ArtifactDraft:
        """Where an upload writes its parts as they arrive (nothing is listed until ``commit``)."""
        return self.artifacts.draft()

    def commit(self, draft: ArtifactDraft, meta: DatasetMeta) -> DatasetMeta:
        """Sign and place the draft under its content id; when that dataset is already stored (the
        same data uploaded before), the draft is dropped and the stored one answers."""
        draft.add(META_FILE, meta.to_json())
        try:
            draft.commit(meta.dataset_id, VERSION)
        except FileExistsError:
            log.info("dataset %s is already stored; the new upload is dropped", meta.dataset_id)
            return self.get(meta.dataset_id)
        return meta

    def _path(self, dataset_id: str) -> Path:
        return self.artifacts.root / dataset_id / str(VERSION)

    def exists(self, dataset_id: str) -> bool:
        return self._path(dataset_id).is_dir()

    def get(self, dataset_id: str) -> DatasetMeta:
        check_dataset_id(dataset_id)
        if not self.exists(dataset_id):
            raise NotFound(f"dataset {dataset_id!r} is not stored; upload it first (DatasetService.Upload)")
        meta = DatasetMeta.from_json(self.artifacts.read_file(dataset_id, VERSION, META_FILE), dataset_id)
        return replace(meta, in_use=self.artifacts.live_holds(dataset_id) > 0)

    def list(self, page_size: int = 0, page_token: str = "") -> tuple[builtins.list[DatasetMeta], str]:
        """One page in id order and the token of the next page ('' on the last)."""
        page_of = Page.of(page_size, page_token, "ListDatasets")
        keys, next_token = page_of.take(sorted((ref.artifact_id, VERSION) for ref in self.artifacts.scan()))
        page: builtins.list[DatasetMeta] = []
        for dataset_id, _ in keys:
            try:
                page.append(self.get(dataset_id))
            except NotFound:
                continue  # deleted in between
            except IntegrityError as exc:
                log.warning("skipping dataset %s: %s", dataset_id, exc)
        return page, next_token

    def delete(self, dataset_id: str) -> None:
        """Remove a dataset; FailedPrecondition while a job holds it, NotFound when it is not there."""
        check_dataset_id(dataset_id)
        if not self.artifacts.delete(dataset_id, VERSION):
            raise NotFound(f"dataset {dataset_id!r} is not stored")

    def open(self, dataset_id: str) -> OpenedDataset:
        """Hold the dataset, verify every file (hashed in blocks), check every part's dtype and shape
        (one part mapped at a time)."""
        hold = self._hold(dataset_id)
        try:
            files = self.artifacts.verified_files(dataset_id, VERSION)
            meta = DatasetMeta.from_json(files[META_FILE].read_bytes(), dataset_id)
            parts = {info.name: self._checked_parts(meta, info, files) for info in meta.arrays}
        except BaseException:
            hold.release()
            raise
        return OpenedDataset(meta, parts, hold)

    def _hold(self, dataset_id: str) -> Hold:
        """Hold a stored dataset (it cannot be deleted while held); NotFound when it is not stored."""
        check_dataset_id(dataset_id)
        try:
            return self.artifacts.hold(dataset_id)
        except FileNotFoundError:
            raise NotFound(
                f"dataset {dataset_id!r} is not stored; upload it first (DatasetService.Upload)"
            ) from None

    def _directory_identity(self, dataset_id: str) -> tuple[int, int]:
        stat = self._path(dataset_id).stat()
        return stat.st_ino, stat.st_ctime_ns

    def _verified_once(self, dataset_id: str) -> tuple[DatasetMeta, dict[str, Path]]:
        """The dataset's metadata and files, every signature checked the first time it is asked for
        (hashing the whole dataset) and remembered while its directory is the same one."""
        identity = self._directory_identity(dataset_id)
        with self._verified_lock:
            cached = self._verified.get(dataset_id)
        if cached is not None and cached[0] == identity:
            return cached[1], cached[2]
        files = self.artifacts.verified_files(dataset_id, VERSION)
        meta = DatasetMeta.from_json(files[META_FILE].read_bytes(), dataset_id)
        with self._verified_lock:
            self._verified[dataset_id] = (identity, meta, files)
        return meta, files

    def tail(self, dataset_id: str, rows: int, columns: tuple[str, ...] = ()) -> np.ndarray:
        """The last ``rows`` rows of a series dataset, float64 (rows, columns): a forecast's history.
        With ``columns`` (the ones a model was trained on), a dataset with other columns is refused.
        The dataset is verified on its first tail (cached: _verified_once), held while read, and only
        the parts holding those rows are opened and copied."""
        hold = self._hold(dataset_id)
        try:
            meta, files = self._verified_once(dataset_id)
            if meta.kind != SERIES:
                raise FailedPrecondition(
                    f"dataset {dataset_id} holds supervised samples; a forecast reads the tail of a series "
                    "dataset (uploaded with columns)"
                )
            if columns and tuple(meta.columns) != columns:
                raise InvalidArgument(
                    f"dataset {dataset_id} has columns {echo(list(meta.columns))}; the model was trained on "
                    f"{echo(list(columns))}: a forecast reads the same columns in the same order"
                )
            if rows > meta.rows:
                raise InvalidArgument(
                    f"dataset {dataset_id} has {meta.rows} rows; the model's window needs {rows}"
                )
            info = meta.array("series")
            pieces: builtins.list[np.ndarray] = []
            needed = rows
            index = len(meta.part_rows)
            while needed > 0:
                index -= 1
                part = self._part(meta, info, files, index).load()
                take = min(needed, part.shape[0])
                # A copy: the part's mapping is released before the next one is made.
                pieces.append(np.array(part[part.shape[0] - take :], dtype=np.float64))
                del part
                needed -= take
            return np.concatenate(pieces[::-1]).reshape(rows, -1)
        finally:
            hold.release()

    @staticmethod
    def _checked_parts(
        meta: DatasetMeta, info: ArrayInfo, files: dict[str, Path]
    ) -> builtins.list[StoredPart]:
        parts = [DatasetStore._part(meta, info, files, index) for index in range(len(meta.part_rows))]
        for part in parts:
            part.load()  # checked, then unmapped at once
        return parts

    @staticmethod
    def _part(meta: DatasetMeta, info: ArrayInfo, files: dict[str, Path], index: int) -> StoredPart:
        """Part ``index`` of array ``info`` (not opened)."""
        name = part_name(info.name, index)
        if name not in files:
            raise IntegrityError(f"dataset {meta.dataset_id}: part {name} is missing")
        try:
            dtype = np.dtype(info.dtype)
        except TypeError as exc:
            raise IntegrityError(
                f"dataset {meta.dataset_id}: array {info.name} has dtype {info.dtype!r}"
            ) from exc
        return StoredPart(meta.dataset_id, files[name], meta.part_rows[index], dtype, info.shape[1:])
