"""Uploading datasets in tests: chunk builders and the Upload call."""

from __future__ import annotations

from collections.abc import Iterator, Sequence

import numpy as np

from protos.lstm_stack.v1 import dataset_pb2, dataset_pb2_grpc
from service_common import codec


def series_chunks(
    series: np.ndarray, columns: Sequence[str], rows_per_chunk: int
) -> Iterator[dataset_pb2.DatasetChunk]:
    header = dataset_pb2.DatasetHeader(kind=dataset_pb2.DATASET_SERIES, columns=list(columns))
    for start in range(0, len(series), rows_per_chunk):
        chunk = dataset_pb2.DatasetChunk(series=codec.from_numpy(series[start : start + rows_per_chunk]))
        if start == 0:
            chunk.header.CopyFrom(header)
        yield chunk


def supervised_chunks(
    x: np.ndarray, y: np.ndarray, rows_per_chunk: int
) -> Iterator[dataset_pb2.DatasetChunk]:
    for start in range(0, len(x), rows_per_chunk):
        chunk = dataset_pb2.DatasetChunk(
            x=codec.from_numpy(x[start : start + rows_per_chunk]),
            y=codec.from_numpy(y[start : start + rows_per_chunk]),
        )
        if start == 0:
            chunk.header.kind = dataset_pb2.DATASET_SUPERVISED
        yield chunk


def upload(
    stub: dataset_pb2_grpc.DatasetServiceStub, chunks: Iterator[dataset_pb2.DatasetChunk]
) -> dataset_pb2.DatasetInfo:
    return stub.Upload(chunks, timeout=60)


def toy_series(rows: int = 400, columns: int = 2, seed: int = 0) -> np.ndarray:
    """A smooth multivariate series (rows, columns): sines of different periods plus a little noise."""
    t = np.arange(rows, dtype=np.float64)
    rng = np.random.default_rng(seed)
    waves = [np.sin(t / (5 + 3 * c)) * (10 + c) + 50 * c for c in range(columns)]
    return (np.stack(waves, axis=1) + rng.normal(0, 0.05, (rows, columns))).astype(np.float32)
