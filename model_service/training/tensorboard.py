"""The TensorBoard step: a trained version's event file, written into its artifact when it is published.

One run per version: the event file sits in the version's own directory ``<store>/models/<id>/<version>/``,
signed with the model and deleted with it, so ``tensorboard --logdir <store>/models/<id>`` shows every
version of an id as a run named by its number. It holds, per epoch, the scalars the Train stream
reported (``epoch_loss``, ``epoch_val_loss``, ``epoch_<metric>``: Keras' own TensorBoard names), the
model's graph as Keras' TensorBoard callback writes it (the conceptual graph: the model's Keras config,
plugin ``graph_keras_model``, tag ``keras``), and the hyperparameters for the hparams plugin. They are
written after fitting, from the history the job kept, so a job that is cancelled or fails writes nothing.

Everything is written as summary protos with TensorBoard's own writer: no TensorFlow op runs, and no
function is traced (tracing the unrolled forward pass for an op-level graph would cost more than the
rest of this step many times over, on every training job).
"""

from __future__ import annotations

import tempfile
import time
from collections.abc import Sequence
from pathlib import Path

import keras
import numpy as np
from tensorboard.compat.proto.event_pb2 import Event
from tensorboard.compat.proto.summary_pb2 import Summary, SummaryMetadata
from tensorboard.plugins.graph import metadata as graph_metadata
from tensorboard.plugins.hparams import api as hparams_api
from tensorboard.plugins.scalar import metadata as scalar_metadata
from tensorboard.summary.writer.event_file_writer import EventFileWriter
from tensorboard.util import tensor_util

from model_service.records import EpochProgress, ModelRecord
from model_service.spec import Dense, Dropout, Lstm, Reshape
from model_service.training.request import TrainOptions

KERAS_GRAPH_TAG = "keras"
SCALARS_PLUGIN = scalar_metadata.PLUGIN_NAME

# TensorBoard finds event files by this part of their name.
EVENT_FILE_MARK = "tfevents"


def epoch_scalars(history: Sequence[EpochProgress]) -> dict[str, list[tuple[int, float]]]:
    """Tag -> [(epoch, value)], as written: what a reader must find again."""
    scalars: dict[str, list[tuple[int, float]]] = {}
    for epoch in history:
        figures = {"loss": epoch.loss, **epoch.metrics}
        if epoch.val_loss is not None:
            figures["val_loss"] = epoch.val_loss
        for name, value in figures.items():
            scalars.setdefault(f"epoch_{name}", []).append((epoch.epoch, value))
    return scalars


def hyperparameters(record: ModelRecord, options: TrainOptions) -> dict[str, bool | int | float | str]:
    """The run's hyperparameters, flat, for the hparams plugin (scalars and strings only)."""
    spec = record.spec

    def layer_text(layer: Lstm | Dense | Reshape | Dropout) -> str:
        if isinstance(layer, Lstm):
            return f"lstm:{layer.units}:{layer.activation}:{'seq' if layer.return_sequences else 'noseq'}"
        if isinstance(layer, Dense):
            return f"dense:{layer.units}:{layer.activation}"
        if isinstance(layer, Reshape):
            return "reshape:" + "x".join(str(d) for d in layer.target_shape)
        return f"dropout:{layer.rate}"

    return {
        "layers": ",".join(layer_text(layer) for layer in spec.layers),
        "task": spec.task.value,
        "timesteps": spec.timesteps,
        "features": spec.features,
        "outputs": spec.head.units,
        "optimizer": spec.optimizer.name,
        "learning_rate": spec.optimizer.learning_rate,
        "epochs": options.epochs,
        "batch_size": options.batch_size,
        "seed": options.seed,
        "shuffle": options.shuffle,
        "validation_fraction": options.validation_fraction,
        "early_stopping_patience": options.patience,
        "x_scaler": record.x_scaler.ref.scaler_id if record.x_scaler else "",
        "y_scaler": record.y_scaler.ref.scaler_id if record.y_scaler else "",
    }


def scalar(tag: str, value: float) -> Summary:
    """One scalar as tf.summary.scalar writes it (a float32 tensor for the scalars plugin)."""
    metadata = SummaryMetadata(plugin_data=SummaryMetadata.PluginData(plugin_name=SCALARS_PLUGIN))
    tensor = tensor_util.make_tensor_proto(np.float32(value))
    return Summary(value=[Summary.Value(tag=tag, metadata=metadata, tensor=tensor)])


def keras_graph(model: keras.Model) -> Summary:
    """The model's conceptual graph, as Keras' TensorBoard callback writes it (write_graph)."""
    metadata = SummaryMetadata(
        plugin_data=SummaryMetadata.PluginData(
            plugin_name=graph_metadata.PLUGIN_NAME_KERAS_MODEL, content=b"1"
        )
    )
    tensor = tensor_util.make_tensor_proto(model.to_json())
    return Summary(value=[Summary.Value(tag=KERAS_GRAPH_TAG, metadata=metadata, tensor=tensor)])


def event_files(
    record: ModelRecord, model: keras.Model, history: Sequence[EpochProgress], options: TrainOptions
) -> dict[str, bytes]:
    """File name -> bytes of the version's event file, ready to be committed with it."""
    now = time.time()
    with tempfile.TemporaryDirectory(prefix="lstm-tensorboard-") as folder:
        writer = EventFileWriter(folder, filename_suffix=f".{record.model_id}-v{record.version}")
        try:
            trial = f"{record.model_id} v{record.version}"
            writer.add_event(Event(wall_time=now, step=0, summary=keras_graph(model)))
            hparams = hparams_api.hparams_pb(hyperparameters(record, options), trial_id=trial)
            # TensorBoard builds it with TensorFlow's Summary class when TensorFlow is importable.
            writer.add_event(
                Event(wall_time=now, step=0, summary=Summary.FromString(hparams.SerializeToString()))
            )
            for tag, points in epoch_scalars(history).items():
                for step, value in points:
                    writer.add_event(Event(wall_time=now, step=step, summary=scalar(tag, value)))
        finally:
            writer.close()
        return {
            path.name: path.read_bytes()
            for path in sorted(Path(folder).iterdir())
            if EVENT_FILE_MARK in path.name
        }
