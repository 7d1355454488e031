"""CLI input handling and exit codes that need no real service (a scripted one at most)."""

from __future__ import annotations

import io
import json
import os
import signal
import threading
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
from google.protobuf import json_format
from lstm_stack_client import cli, model_spec
from lstm_stack_client.specs import SpecError, parse_layers, scaler_spec

from protos.lstm_stack.v1 import model_pb2, scaler_pb2
from tests.clients.fakes import FakeModel, Script, start_fake


def run_cli(*argv: str) -> tuple[int, str, str]:
    out, err = io.StringIO(), io.StringIO()
    code = cli.main(list(argv), out=out, err=err)
    return code, out.getvalue(), err.getvalue()


# ---- arrays from the command line


def test_inline_values_one_window_and_rows() -> None:
    np.testing.assert_array_equal(cli.load_array("50,60,70", "--x"), [50, 60, 70])
    np.testing.assert_array_equal(cli.load_array("1,2,3;2,3,4", "--x"), [[1, 2, 3], [2, 3, 4]])
    np.testing.assert_array_equal(cli.load_array("1 2;3 4;", "--x"), [[1, 2], [3, 4]])
    # Longer than a file name may be: still inline numbers.
    long_series = ",".join(str(v) for v in range(1, 501))
    np.testing.assert_array_equal(cli.load_array(long_series, "--series"), np.arange(1, 501))


def test_csv_with_and_without_header_and_npy(tmp_path: Path) -> None:
    (tmp_path / "plain.csv").write_text("1,2,3\n4,5,6\n")
    (tmp_path / "header.csv").write_text("t0,t1,t2\n1,2,3\n4,5,6\n")
    np.save(tmp_path / "x.npy", np.arange(6.0).reshape(2, 3, 1))
    expected = [[1, 2, 3], [4, 5, 6]]
    np.testing.assert_array_equal(cli.load_array(str(tmp_path / "plain.csv"), "--x"), expected)
    np.testing.assert_array_equal(cli.load_array(str(tmp_path / "header.csv"), "--x"), expected)
    assert cli.load_array(str(tmp_path / "x.npy"), "--x").shape == (2, 3, 1)


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("1,2,x", "neither a file nor numbers"),
        ("1,2;3", "different lengths"),
        ("missing.npy", "no such file"),
    ],
)
def test_bad_inline_values_are_usage_errors(text: str, message: str) -> None:
    with pytest.raises(cli.UsageError, match=message):
        cli.load_array(text, "--x")


def test_windows_are_shaped_for_the_model() -> None:
    assert cli.windows_for(np.array([50.0, 60, 70]), 3, 1).shape == (1, 3, 1)
    assert cli.windows_for(np.ones((4, 6)), 3, 2).shape == (4, 3, 2)
    with pytest.raises(cli.UsageError, match="timesteps x features = 3 x 1 = 3"):
        cli.windows_for(np.ones((4, 4)), 3, 1)


# ---- specs


def test_compact_layers_follow_the_seed() -> None:
    layers = parse_layers("lstm:10:relu,lstm:2:relu:seq,lstm:10:relu:noseq,reshape:10x1,dropout:0.2,dense:5")
    assert [layer.WhichOneof("kind") for layer in layers] == [
        "lstm",
        "lstm",
        "lstm",
        "reshape",
        "dropout",
        "dense",
    ]
    assert layers[0].lstm.units == 10 and layers[0].lstm.activation == "relu"
    assert not layers[0].lstm.HasField("return_sequences")  # derived by the service
    assert layers[1].lstm.return_sequences is True
    assert layers[2].lstm.HasField("return_sequences") and layers[2].lstm.return_sequences is False
    assert list(layers[3].reshape.target_shape) == [10, 1]
    assert layers[4].dropout.rate == pytest.approx(0.2)
    assert layers[5].dense.units == 5 and layers[5].dense.activation == ""


@pytest.mark.parametrize("text", ["lstm", "lstm:ten", "conv:3", "dense:1:relu:x", "reshape", "dropout:a"])
def test_bad_layers_say_what_was_expected(text: str) -> None:
    with pytest.raises(SpecError, match=text.split(":")[0]):
        parse_layers(text)


def test_scaler_spec_parameters() -> None:
    spec = scaler_spec("robust", "per-column", quantile_range=(10, 90), with_centering=False)
    assert spec.kind == scaler_pb2.ROBUST and spec.layout == scaler_pb2.PER_COLUMN
    assert (spec.robust.quantile_min, spec.robust.quantile_max) == (10, 90)
    assert spec.robust.HasField("with_centering") and not spec.robust.HasField("with_scaling")
    assert scaler_spec("standard").WhichOneof("params") == "standard"
    with pytest.raises(SpecError, match="expected one of maxabs, minmax, robust, standard"):
        scaler_spec("zscore")


def test_spec_file_with_flag_overrides(tmp_path: Path) -> None:
    spec = model_spec("lstm:4,dense:2", timesteps=3, task="binary")
    path = tmp_path / "spec.json"
    path.write_text(json_format.MessageToJson(spec))
    parser = cli.build_parser()
    args = parser.parse_args(
        ["model", "validate", "--spec", str(path), "--timesteps", "5", "--learning-rate", "0.1"]
    )
    resolved = cli.spec_from_args(args)
    assert resolved.input.timesteps == 5
    assert resolved.head.task == model_pb2.BINARY
    assert resolved.optimizer.learning_rate == pytest.approx(0.1)
    assert len(resolved.layers) == 2


# ---- exit codes


def test_usage_errors_exit_2(tmp_path: Path) -> None:
    code, _, err = run_cli("model", "validate", "--layers", "lstm:4")
    assert code == 2 and "--timesteps" in err
    (tmp_path / "bad.json").write_text("{not json")
    code, _, err = run_cli("model", "validate", "--spec", str(tmp_path / "bad.json"))
    assert code == 2 and "not a ModelSpec" in err
    code, _, err = run_cli("model", "validate", "--layers", "gru:3", "--timesteps", "3")
    assert code == 2 and "unknown layer kind 'gru'" in err
    with pytest.raises(SystemExit) as exited:
        cli.main(["scaler", "fit", "--kind", "zscore", "--data", "1,2"])
    assert exited.value.code == 2


def test_unreachable_service_exits_1_with_a_hint() -> None:
    from demo.services import free_port

    address = f"127.0.0.1:{free_port()}"
    code, _, err = run_cli("--scaler-address", address, "--timeout", "2", "scaler", "get", "--id", "abc")
    assert code == 1
    assert "UNAVAILABLE" in err and f"scaler at {address}" in err


def test_global_options_work_after_the_subcommand(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("LSTM_STACK_MODEL_ADDRESS", "10.0.0.1:1")
    parser = cli.build_parser()
    args = parser.parse_args(["model", "list", "--model-address", "127.0.0.1:9", "--timeout", "3"])
    assert args.model_address == "127.0.0.1:9" and args.timeout == 3
    args = parser.parse_args(["model", "list"])
    assert args.model_address == "10.0.0.1:1" and args.timeout == cli.DEFAULT_TIMEOUT


# ---- Ctrl-C during training (scripted server that interrupts us mid-stream)


class InterruptingModel(FakeModel):
    """Sends this process SIGINT after the second epoch, as a terminal's Ctrl-C would."""

    def Train(self, request, context):  # noqa: N802
        for event in super().Train(request, context):
            yield event
            if event.WhichOneof("event") == "epoch" and event.epoch.epoch == 2:
                os.kill(os.getpid(), signal.SIGINT)


@pytest.fixture
def interrupting(monkeypatch: pytest.MonkeyPatch) -> Iterator[tuple[str, Script]]:
    assert threading.current_thread() is threading.main_thread()
    script = Script()
    monkeypatch.setattr("tests.clients.fakes.FakeModel", InterruptingModel)
    server, address = start_fake(script)
    yield address, script
    script.release.set()
    server.stop(None).wait()


def test_ctrl_c_cancels_training_and_exits_130(interrupting: tuple[str, Script]) -> None:
    address, script = interrupting
    code, out, err = run_cli(
        "--model-address", address, "model", "train", "--id", "slow",
        "--layers", "lstm:2", "--timesteps", "3", "--x", "1,2,3;2,3,4", "--y", "4,5", "--epochs", "500",
    )  # fmt: skip
    assert code == 130
    assert "training cancelled (model m v1): nothing was saved" in err
    assert "epoch   1/500" in out
    assert script.train_cancelled.wait(5), "the server never saw the cancellation"
    assert script.calls["Train"] == 1


def test_json_output_is_parseable(interrupting: tuple[str, Script]) -> None:
    address, _ = interrupting
    code, out, _ = run_cli("--scaler-address", address, "--json", "scaler", "list")
    assert code == 0
    assert [s["id"] for s in json.loads(out)] == ["s0", "s1", "s2"]
