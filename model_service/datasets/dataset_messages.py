"""Proto <-> domain for the DatasetService."""

from __future__ import annotations

import numpy as np

from model_service.datasets.dataset_store import SERIES, SUPERVISED, DatasetMeta
from protos.lstm_stack.v1 import dataset_pb2, tensor_pb2
from service_common import codec

KIND_FROM_PROTO: dict[dataset_pb2.DatasetKind.ValueType, str] = {
    dataset_pb2.DATASET_SUPERVISED: SUPERVISED,
    dataset_pb2.DATASET_SERIES: SERIES,
}
KIND_TO_PROTO: dict[str, dataset_pb2.DatasetKind.ValueType] = {
    kind: code for code, kind in KIND_FROM_PROTO.items()
}
_DTYPES: dict[str, tensor_pb2.DType.ValueType] = {
    "<f4": tensor_pb2.FLOAT32,
    "<f8": tensor_pb2.FLOAT64,
    "<i4": tensor_pb2.INT32,
    "<i8": tensor_pb2.INT64,
}


def kind_from_proto(kind: dataset_pb2.DatasetKind.ValueType) -> str:
    return KIND_FROM_PROTO.get(kind, "")  # "" is refused by upload.check_header, naming what is expected


def chunk_arrays(chunk: dataset_pb2.DatasetChunk, index: int) -> dict[str, np.ndarray | None]:
    """The tensors a chunk carries, decoded (the codec checks dtype, shape and byte count)."""
    return {
        name: codec.to_numpy(getattr(chunk, name), f"chunk {index} {name}") if chunk.HasField(name) else None
        for name in ("x", "y", "series")
    }


def info_to_proto(meta: DatasetMeta) -> dataset_pb2.DatasetInfo:
    return dataset_pb2.DatasetInfo(
        id=meta.dataset_id,
        kind=KIND_TO_PROTO.get(meta.kind, dataset_pb2.DATASET_KIND_UNSPECIFIED),
        columns=list(meta.columns),
        rows=meta.rows,
        chunks=len(meta.part_rows),
        arrays=[
            dataset_pb2.DatasetArray(
                name=a.name, dtype=_DTYPES.get(a.dtype, tensor_pb2.DTYPE_UNSPECIFIED), shape=list(a.shape)
            )
            for a in meta.arrays
        ],
        size_bytes=meta.size_bytes,
        created_at=meta.created_at,
        in_use=meta.in_use,
    )
