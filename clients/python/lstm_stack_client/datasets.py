"""Reading dataset files a chunk of rows at a time, for DatasetService.Upload: never a whole file.

``.npy`` files are memory-mapped (``np.load(mmap_mode="r")``), so a chunk is read from disk only as it
is sent; CSV files are parsed row by row, a chunk of rows at a time.
"""

from __future__ import annotations

import csv
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np

# Rows per chunk aim at this many bytes per message: well inside the default 64 MiB limit, and small
# enough that the server holds little at once.
CHUNK_BYTES = 4 * 1024 * 1024


def rows_per_chunk(array: Any, chunk_bytes: int = CHUNK_BYTES) -> int:
    """How many rows of ``array`` make about ``chunk_bytes``."""
    row_bytes = max(1, int(np.prod(array.shape[1:], dtype=np.int64)) * array.dtype.itemsize)
    return max(1, chunk_bytes // row_bytes)


def array_chunks(array: Any, rows: int = 0) -> Iterator[np.ndarray]:
    """Slices of ``rows`` rows (default: about CHUNK_BYTES) of an array or a memory map."""
    rows = rows or rows_per_chunk(array)
    for start in range(0, array.shape[0], rows):
        yield np.ascontiguousarray(array[start : start + rows])


def load_npy(path: str | Path) -> np.ndarray:
    """A .npy file memory-mapped: nothing is read until a chunk is sliced out of it."""
    return np.load(path, mmap_mode="r", allow_pickle=False)


def csv_columns(path: str | Path) -> list[str]:
    """The header row of a CSV file (its column names)."""
    with open(path, newline="") as fh:
        header = next(csv.reader(fh), None)
    if not header:
        raise ValueError(f"{path}: empty CSV; expected a header row naming the columns")
    return [name.strip() for name in header]


def csv_chunks(path: str | Path, rows: int = 0, dtype: Any = np.float64) -> Iterator[np.ndarray]:
    """The rows after the header of a CSV file of numbers, ``rows`` at a time (default: about
    CHUNK_BYTES), each chunk a (rows, columns) array."""
    with open(path, newline="") as fh:
        reader = csv.reader(fh)
        header = next(reader, None)
        if not header:
            raise ValueError(f"{path}: empty CSV; expected a header row naming the columns")
        width = len(header)
        rows = rows or max(1, CHUNK_BYTES // (width * np.dtype(dtype).itemsize))
        batch: list[list[float]] = []
        for line_number, row in enumerate(reader, start=2):
            if not row:
                continue
            if len(row) != width:
                raise ValueError(f"{path}:{line_number}: {len(row)} values; the header names {width} columns")
            try:
                batch.append([float(value) for value in row])
            except ValueError:
                raise ValueError(f"{path}:{line_number}: not a number in {row!r}") from None
            if len(batch) == rows:
                yield np.asarray(batch, dtype=dtype)
                batch = []
        if batch:
            yield np.asarray(batch, dtype=dtype)
