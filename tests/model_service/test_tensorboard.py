"""Every trained version carries TensorBoard event files, read back here with TensorBoard's own reader."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
from tensorboard.plugins.graph import keras_util
from tensorboard.plugins.hparams import plugin_data_pb2
from tensorboard.util import tensor_util

from model_service.records import EpochProgress
from model_service.training.tensorboard import epoch_scalars
from protos.lstm_stack.v1 import model_pb2
from tests.model_service.conftest import ModelServerHandle
from tests.model_service.helpers import scaler, seed_example, tiny_spec, train, train_request


def _accumulator(logdir: str) -> EventAccumulator:
    events = EventAccumulator(logdir, size_guidance={"tensors": 0})
    events.Reload()
    return events


def _scalar(events: EventAccumulator, tag: str) -> list[tuple[int, float]]:
    return [(e.step, float(tensor_util.make_ndarray(e.tensor_proto))) for e in events.Tensors(tag)]


@pytest.fixture(scope="module")
def trained(model_server: ModelServerHandle) -> tuple[list[model_pb2.TrainEvent], model_pb2.ModelInfo]:
    x, y = seed_example()
    request = train_request(
        tiny_spec(), x, y, epochs=3, validation_fraction=0.25, x_scaling=scaler(), y_scaling=scaler()
    )
    return train(model_server.stub, request)


def test_epoch_scalars_read_back_equal_the_train_event_history(
    trained: tuple[list[model_pb2.TrainEvent], model_pb2.ModelInfo],
) -> None:
    events, info = trained
    epochs = [e.epoch for e in events if e.HasField("epoch")]
    assert len(epochs) == 3
    assert info.tensorboard_logdir and Path(info.tensorboard_logdir).is_dir()
    reader = _accumulator(info.tensorboard_logdir)
    expected = {
        "epoch_loss": [e.loss for e in epochs],
        "epoch_val_loss": [e.val_loss for e in epochs],
        "epoch_mae": [e.metrics["mae"] for e in epochs],
        "epoch_val_mae": [e.metrics["val_mae"] for e in epochs],
    }
    for tag, want in expected.items():
        points = _scalar(reader, tag)
        assert [step for step, _ in points] == [1, 2, 3], tag
        # Written as float32 summaries: equal to the reported float64 figures to float32 precision.
        assert [value for _, value in points] == pytest.approx(want, rel=1e-6), tag
    # The stored history (GetModel) is what the stream reported, and so what TensorBoard shows.
    assert [h.loss for h in info.history] == [e.loss for e in epochs]


def test_the_event_file_holds_the_keras_graph_and_the_hyperparameters(
    trained: tuple[list[model_pb2.TrainEvent], model_pb2.ModelInfo],
) -> None:
    _, info = trained
    reader = _accumulator(info.tensorboard_logdir)
    assert "keras" in reader.PluginTagToContent("graph_keras_model")
    (graph,) = reader.Tensors("keras")
    config = json.loads(tensor_util.make_ndarray(graph.tensor_proto).item())
    # What TensorBoard's Graphs tab draws from it: input -> the LSTM -> the head.
    nodes = keras_util.keras_model_to_graph_def(config).node
    assert [node.name.split("/")[-1] for node in nodes] == ["x", "lstm_0", "head"]
    assert [list(node.input) for node in nodes][1:] == [[nodes[0].name], [nodes[1].name]]
    content = reader.PluginTagToContent("hparams")
    assert "_hparams_/session_start_info" in content
    start = plugin_data_pb2.HParamsPluginData.FromString(
        content["_hparams_/session_start_info"]
    ).session_start_info
    assert start.hparams["epochs"].number_value == 3
    assert start.hparams["batch_size"].number_value == 4
    assert start.hparams["layers"].string_value == "lstm:4:tanh:noseq"
    assert start.hparams["x_scaler"].string_value == info.x_scaler.scaler_id


def test_the_event_file_is_signed_with_the_version_and_goes_when_it_is_deleted(
    model_server: ModelServerHandle,
    trained: tuple[list[model_pb2.TrainEvent], model_pb2.ModelInfo],
) -> None:
    _, info = trained
    run = Path(info.tensorboard_logdir)
    assert run == (model_server.store / "models" / info.id / str(info.version)).absolute()
    names = {p.name for p in run.iterdir() if "tfevents" in p.name}
    assert names
    signed = (run / "SIGNATURE").read_text()
    assert all(name in signed for name in names)
    listed = model_server.stub.GetModel(model_pb2.GetModelRequest(model_id=info.id), timeout=10)
    assert listed.tensorboard_logdir == info.tensorboard_logdir and listed.origin == "train"
    model_server.stub.DeleteModel(model_pb2.DeleteModelRequest(model_id=info.id), timeout=30)
    assert not run.exists()


def test_epochs_without_a_holdout_get_no_val_loss_tag() -> None:
    history = [EpochProgress(n, 2, 1.0 / n, None, {"mae": 0.5 / n}, 0.1 * n, 100.0) for n in (1, 2)]
    assert epoch_scalars(history) == {
        "epoch_loss": [(1, 1.0), (2, 0.5)],
        "epoch_mae": [(1, 0.5), (2, 0.25)],
    }
    assert epoch_scalars([]) == {}
