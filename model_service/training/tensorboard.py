"""The TensorBoard step: a trained version's event files, written into its artifact when it is published.

One run per version: the event file sits in the version's own directory ``<store>/models/<id>/<version>/``,
signed with the model and deleted with it, so ``tensorboard --logdir <store>/models/<id>`` shows every
version of an id as a run named by its number. It holds, per epoch, the scalars the Train stream
reported (``epoch_loss``, ``epoch_val_loss``, ``epoch_<metric>``: Keras' own TensorBoard names), the
graph of the model's forward pass, and the hyperparameters for the hparams plugin. They are written
after fitting, from the history the job kept, so a job that is cancelled or fails writes nothing.
"""

from __future__ import annotations

import tempfile
from collections.abc import Sequence
from pathlib import Path

import keras
import tensorflow as tf
from tensorboard.plugins.hparams import api as hparams_api

from model_service.records import EpochProgress, ModelRecord
from model_service.spec import Dense, Dropout, Lstm, Reshape
from model_service.training.request import TrainOptions

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


def event_files(
    record: ModelRecord, model: keras.Model, history: Sequence[EpochProgress], options: TrainOptions
) -> dict[str, bytes]:
    """File name -> bytes of the version's event file(s), ready to be committed with it."""
    spec = record.spec
    forward = tf.function(lambda x: model(x, training=False)).get_concrete_function(
        tf.TensorSpec([None, spec.timesteps, spec.features], tf.float32, name="x")
    )
    with tempfile.TemporaryDirectory(prefix="lstm-tensorboard-") as folder:
        writer = tf.summary.create_file_writer(
            folder, filename_suffix=f".{record.model_id}-v{record.version}"
        )
        try:
            with writer.as_default():
                tf.summary.graph(forward.graph)
                hparams_api.hparams(
                    hyperparameters(record, options), trial_id=f"{record.model_id} v{record.version}"
                )
                for tag, points in epoch_scalars(history).items():
                    for step, value in points:
                        tf.summary.scalar(tag, value, step=step)
        finally:
            writer.close()
        return {
            path.name: path.read_bytes()
            for path in sorted(Path(folder).iterdir())
            if EVENT_FILE_MARK in path.name
        }
