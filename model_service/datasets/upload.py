"""An upload: chunks of rows checked as they arrive, written part by part, named by their content.

Every chunk must agree with the first in dtype and sample shape (all but the first dimension) and hold
finite numbers. The id is a sha256 over the header (kind, columns, each array's dtype and sample shape)
and each array's row-major bytes as one stream, so it does not depend on how the rows were chunked:
the same data uploaded twice gives the same id. Nothing is listed until ``finish``; a failed or
abandoned upload removes what it wrote (``abort``).

Rows are buffered until they fill a part of about ``PART_BYTES``, so the number of parts follows the
dataset's size, not how many chunks the client cut it into: thousands of one-row chunks make one part,
not thousands of files to fsync, verify and read back.
"""

from __future__ import annotations

import errno
import hashlib
import json
from collections.abc import Iterator
from contextlib import contextmanager

import numpy as np

from model_service.datasets.dataset_store import (
    ID_PREFIX,
    SERIES,
    SUPERVISED,
    ArrayInfo,
    DatasetMeta,
    DatasetStore,
    part_name,
)
from model_service.records import now_text
from service_common.artifacts import is_valid_id
from service_common.codec import require_finite
from service_common.errors import InvalidArgument, ResourceExhausted, echo

# Dtypes a dataset may hold (the codec's): training narrows floats to float32 block by block.
DTYPES = frozenset({"<f4", "<f8", "<i4", "<i8"})
MAX_COLUMNS = 4096
# Bytes of rows (every array of the dataset together) written as one part. A part is read a block at a
# time, so this bounds the upload's buffer, not what training holds.
PART_BYTES = 8 << 20
_DISK_FULL = (errno.ENOSPC, errno.EDQUOT)


def _shape(shape: tuple[int, ...]) -> str:
    return "[" + ", ".join(str(d) for d in shape) + "]"


def check_header(kind: str, columns: list[str]) -> tuple[str, ...]:
    if kind == SUPERVISED:
        if columns:
            raise InvalidArgument("header.columns is for DATASET_SERIES; a supervised dataset has x and y")
        return ()
    if kind != SERIES:
        raise InvalidArgument("header.kind is required: DATASET_SUPERVISED or DATASET_SERIES")
    if not columns:
        raise InvalidArgument("a DATASET_SERIES header needs columns: one name per column of the series")
    if len(columns) > MAX_COLUMNS:
        raise InvalidArgument(f"header has {len(columns)} columns; at most {MAX_COLUMNS} are accepted")
    seen: set[str] = set()
    for index, name in enumerate(columns):
        if not is_valid_id(name):
            raise InvalidArgument(
                f"header.columns[{index}] {echo(name)} is not valid: expected 1-128 letters, digits, '_', "
                "'-', '.', starting with a letter or digit"
            )
        if name in seen:
            raise InvalidArgument(f"header.columns[{index}] {echo(name)} repeats an earlier column")
        seen.add(name)
    return tuple(columns)


class DatasetUpload:
    """One upload in progress. ``add`` each chunk, then ``finish``; ``abort`` if it does not complete."""

    def __init__(
        self, store: DatasetStore, kind: str, columns: list[str], part_bytes: int | None = None
    ) -> None:
        self.kind = kind
        self.columns = check_header(kind, columns)
        self._store = store
        self._names = ("x", "y") if kind == SUPERVISED else ("series",)
        self._draft = store.draft()
        self._first: dict[str, tuple[str, tuple[int, ...]]] = {}  # name -> (dtype, sample shape)
        self._hashes = {name: hashlib.sha256() for name in self._names}
        self._part_rows: list[int] = []
        self._size = 0
        self._part_bytes = max(1, PART_BYTES if part_bytes is None else part_bytes)
        # Checked rows not written yet: name -> arrays in order, all names with the same row counts.
        self._pending: dict[str, list[np.ndarray]] = {name: [] for name in self._names}
        self._pending_rows = 0
        self._pending_bytes = 0

    @property
    def rows(self) -> int:
        return sum(self._part_rows) + self._pending_rows

    @contextmanager
    def _disk(self) -> Iterator[None]:
        try:
            yield
        except OSError as exc:
            if exc.errno in _DISK_FULL:
                self.abort()
                raise ResourceExhausted(
                    f"the dataset store ran out of disk space after {sum(self._part_rows)} row(s) "
                    f"({exc.strerror}); nothing of this upload was kept"
                ) from None
            raise

    def _check(self, name: str, array: np.ndarray, index: int) -> np.ndarray:
        where = f"chunk {index} {name}"
        array = array.astype(array.dtype.newbyteorder("<"), copy=False)
        if array.dtype.str not in DTYPES:
            raise InvalidArgument(
                f"{where}: dtype {array.dtype} is not supported; expected float32/64, int32/64"
            )
        if self.kind == SERIES and array.ndim == 1:
            array = array.reshape(-1, 1)
        if name == "series":
            if array.ndim != 2 or array.shape[1] != len(self.columns):
                raise InvalidArgument(
                    f"{where} has shape {_shape(array.shape)}; the header names {len(self.columns)} column(s), "
                    f"so expected (rows, {len(self.columns)})"
                )
        elif name == "x" and array.ndim not in (2, 3):
            raise InvalidArgument(
                f"{where} has shape {_shape(array.shape)}; expected (rows, timesteps, features) or (rows, timesteps)"
            )
        elif name == "y" and array.ndim not in (1, 2):
            raise InvalidArgument(
                f"{where} has shape {_shape(array.shape)}; expected (rows,) or (rows, outputs)"
            )
        first = self._first.get(name)
        if first is not None:
            dtype, sample = first
            if array.dtype.str != dtype:
                raise InvalidArgument(
                    f"{where} has dtype {np.dtype(array.dtype).name}; the first chunk's was "
                    f"{np.dtype(dtype).name}: every chunk must have the same dtype"
                )
            if array.shape[1:] != sample:
                raise InvalidArgument(
                    f"{where} has shape {_shape(array.shape)}; the first chunk's rows were "
                    f"{_shape(sample)}, so expected (rows, {', '.join(str(d) for d in sample)})"
                )
        require_finite(array, where)
        return np.ascontiguousarray(array)

    def add(self, arrays: dict[str, np.ndarray | None], index: int) -> None:
        """Check one chunk (every array of the dataset's kind, same number of rows) and write it. A
        chunk with no array at all (e.g. a first chunk carrying only the header) adds nothing."""
        if all(value is None for value in arrays.values()):
            return
        missing = [name for name in self._names if arrays.get(name) is None]
        extra = [name for name, value in arrays.items() if value is not None and name not in self._names]
        if extra:
            raise InvalidArgument(
                f"chunk {index} sets {', '.join(extra)}; a {self.kind} dataset takes {' and '.join(self._names)}"
            )
        if missing:
            raise InvalidArgument(
                f"chunk {index} has no {' and no '.join(missing)}; every chunk of a {self.kind} dataset "
                f"carries {' and '.join(self._names)}"
            )
        checked = {name: self._check(name, arrays[name], index) for name in self._names}  # type: ignore[arg-type]
        rows = {name: a.shape[0] for name, a in checked.items()}
        if len(set(rows.values())) > 1:
            raise InvalidArgument(
                f"chunk {index}: x has {rows['x']} rows but y has {rows['y']}; they must match"
            )
        n = next(iter(rows.values()))
        if n == 0:
            return
        for name, array in checked.items():
            self._first.setdefault(name, (array.dtype.str, array.shape[1:]))
            self._hashes[name].update(array.data)  # C-contiguous: the row-major bytes
            # A copy when the chunk's rows are a view into a larger buffer the caller may reuse.
            self._pending[name].append(array if array.base is None else array.copy())
            self._pending_bytes += array.nbytes
        self._pending_rows += n
        if self._pending_bytes >= self._part_bytes:
            self._write_part()

    def _write_part(self) -> None:
        """The buffered rows as the next part (one file per array)."""
        if not self._pending_rows:
            return
        part = len(self._part_rows)
        with self._disk():
            for name in self._names:
                pieces = self._pending[name]
                array = pieces[0] if len(pieces) == 1 else np.concatenate(pieces)
                with self._draft.create(part_name(name, part)) as fh:
                    np.lib.format.write_array(fh, array, allow_pickle=False)
                self._size += array.nbytes
        self._part_rows.append(self._pending_rows)
        self._pending = {name: [] for name in self._names}
        self._pending_rows = 0
        self._pending_bytes = 0

    def _content_id(self) -> str:
        header = {
            "kind": self.kind,
            "columns": list(self.columns),
            "arrays": {name: [dtype, list(sample)] for name, (dtype, sample) in sorted(self._first.items())},
        }
        digest = hashlib.sha256(json.dumps(header, sort_keys=True).encode())
        for name in self._names:
            digest.update(self._hashes[name].digest())
        return ID_PREFIX + digest.hexdigest()[:32]

    def finish(self) -> DatasetMeta:
        """Commit (or, when the same data is stored already, drop this copy); the dataset's metadata."""
        self._write_part()
        if not self._part_rows:
            self.abort()
            raise InvalidArgument("the upload carried no rows; send at least one chunk with data")
        arrays = tuple(
            ArrayInfo(name, self._first[name][0], (self.rows, *self._first[name][1])) for name in self._names
        )
        meta = DatasetMeta(
            self._content_id(),
            self.kind,
            self.columns,
            tuple(self._part_rows),
            arrays,
            self._size,
            now_text(),
        )
        with self._disk():
            return self._store.commit(self._draft, meta)

    def abort(self) -> None:
        self._draft.discard()
