"""The serving graph of a version, made in the trainer process (it holds TensorFlow) and checked there
against the Keras model before anything is published.

Trained and imported versions get theirs before they are committed (in the same signed artifact);
versions stored before serving graphs existed get theirs once, the first time a serving process
calls them (``StoredGraphs.ensure``), kept beside the version in the store's ``serving-graphs``.
"""

from __future__ import annotations

import keras
import numpy as np

from model_service import builder
from model_service.export import Exported, onnx_export
from model_service.model_store import read_graph, read_version, write_graph
from model_service.records import ModelRecord
from model_service.saved_model import saved_model_export
from model_service.serving_graph_keras import checked_graph
from service_common.artifacts import StoredArtifacts

# Rows the graph is checked on: some drawn around the scaler's range, plus real rows when there are.
PROBE_ROWS = 32


def probe(record: ModelRecord, x: np.ndarray | None = None) -> np.ndarray:
    """Raw-unit rows to check a graph on: standard normal in the model's (scaled) input space, mapped
    back through the x scaler, so they cover the range the model was trained on; then up to
    PROBE_ROWS of ``x`` (raw training rows) when given."""
    spec = record.spec
    z = np.random.default_rng(record.seed % 2**32).normal(size=(PROBE_ROWS, spec.timesteps, spec.features))
    raw = record.x_scaler.inverse_transform(z) if record.x_scaler is not None else z
    if x is not None and len(x):
        raw = np.concatenate([raw, np.asarray(x[:PROBE_ROWS], np.float64).reshape(-1, *raw.shape[1:])])
    return raw


def serving_graph(record: ModelRecord, model: keras.Model, x: np.ndarray | None = None) -> bytes:
    """The version's serving graph, checked against ``model`` (GraphMismatch when they disagree)."""
    return checked_graph(record, model, probe(record, x))


class StoredGraphs:
    """Serving graphs and SavedModels of stored versions (signatures verified before anything loads)."""

    def __init__(self, store: StoredArtifacts, graphs: StoredArtifacts) -> None:
        self._store = store
        self._graphs = graphs

    def _model(self, model_id: str, version: int) -> tuple[ModelRecord, keras.Model]:
        record, keras_bytes = read_version(self._store, model_id, version)
        return record, builder.from_keras_bytes(keras_bytes, record.spec, f"{model_id} v{version}")

    def ensure(self, model_id: str, version: int) -> Exported:
        """The version's serving graph as an ONNX export, made and kept first when it has none."""
        graph = read_graph(self._store, self._graphs, model_id, version)
        if graph is None:
            record, model = self._model(model_id, version)
            graph = serving_graph(record, model)
            write_graph(self._graphs, model_id, version, graph)
        else:
            record, _ = read_version(self._store, model_id, version)
        return onnx_export(record, graph)

    def saved_model(self, model_id: str, version: int) -> Exported:
        record, model = self._model(model_id, version)
        return saved_model_export(record, model)
