"""A stored version as a file other runtimes load: its serving graph as ONNX, or a SavedModel tar.

The ONNX file is the version's serving graph (model_service/serving_graph.py), byte for byte what the
service runs, with the version's metadata (spec, scaler parameters, history) added as
metadata_props["lstm_stack"]. It takes x in raw units, FLOAT64 (batch, timesteps, features), and gives
``values`` in original units for regression, or ``probabilities`` and ``labels`` (INT64) for
classification. A SavedModel needs TensorFlow: the trainer process writes it (saved_model.py).

Domain code: no grpc, no TensorFlow, no onnx package (the metadata is appended as protobuf bytes,
lstm_stack_client.wire).
"""

from __future__ import annotations

import enum
import hashlib
import json
from dataclasses import dataclass

from lstm_stack_client.wire import length_delimited

from model_service.records import ModelRecord
from model_service.spec import Task

INPUT_NAME = "x"
METADATA_KEY = "lstm_stack"
METADATA_FILE = "lstm_stack.json"
# onnx.ModelProto's field number of metadata_props (repeated StringStringEntryProto {key = 1; value = 2}).
_METADATA_PROPS_FIELD = 14


class ExportFormat(enum.StrEnum):
    ONNX = "onnx"
    SAVED_MODEL = "savedmodel"


@dataclass(frozen=True)
class Exported:
    model_id: str
    version: int
    file_name: str
    data: bytes
    input_name: str
    output_names: tuple[str, ...]
    metadata_json: str

    @property
    def sha256(self) -> str:
        return hashlib.sha256(self.data).hexdigest()


def output_names(task: Task) -> tuple[str, ...]:
    return ("values",) if task is Task.REGRESSION else ("labels", "probabilities")


def metadata(record: ModelRecord) -> str:
    """What the export carries besides the graph: the version's record, scalers in affine form."""
    body = json.loads(record.to_json())
    body["input"] = {
        "name": INPUT_NAME,
        "dtype": "float64",
        "shape": [-1, record.spec.timesteps, record.spec.features],
    }
    body["outputs"] = list(output_names(record.spec.task))
    body["scalers_in_graph"] = True
    return json.dumps(body, sort_keys=True)


def with_metadata(graph: bytes, key: str, value: str) -> bytes:
    """``graph`` (a serialized ModelProto) with one more metadata_props entry. Protobuf parsers
    concatenate a repeated field's occurrences wherever they stand, so appending is the same as adding."""
    entry = length_delimited(1, key.encode()) + length_delimited(2, value.encode())
    return graph + length_delimited(_METADATA_PROPS_FIELD, entry)


def onnx_export(record: ModelRecord, graph: bytes) -> Exported:
    """The version's serving graph as the ONNX file ExportModel sends."""
    meta = metadata(record)
    return Exported(
        record.model_id,
        record.version,
        f"{record.model_id}-v{record.version}.onnx",
        with_metadata(graph, METADATA_KEY, meta),
        INPUT_NAME,
        output_names(record.spec.task),
        meta,
    )
