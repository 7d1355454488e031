"""`lstm-stack model ...` against real in-process services: shape table, train, predict, plots, Ctrl-C."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from google.protobuf import json_format
from lstm_stack_client import display, model_spec

from demo.seed_examples import EXAMPLE1_X, EXAMPLE1_Y
from demo.services import REPO_ROOT
from demo.walkthrough import EXAMPLE1_LAYERS
from tests.clients.conftest import Stack
from tests.clients.pngs import assert_png
from tests.clients.test_cli_input import run_cli

X_INLINE = ";".join(",".join(str(int(v)) for v in row) for row in EXAMPLE1_X)
Y_INLINE = ",".join(str(int(v)) for v in EXAMPLE1_Y)
TINY = ["--layers", "lstm:4", "--timesteps", "3", "--features", "1", "--learning-rate", "0.01"]


def test_validate_prints_the_shape_table(stack: Stack) -> None:
    code, out, err = run_cli(
        *stack.cli_args(), "model", "validate", "--layers", EXAMPLE1_LAYERS, "--timesteps", "3"
    )
    assert code == 0, err
    lines = out.splitlines()
    assert lines[0].split() == [
        "#",
        "layer",
        "kind",
        "output",
        "shape",
        "params",
        "activation",
        "return_sequences",
    ]
    body = "\n".join(lines[2:])
    assert "(None, 3, 1)" in lines[2]  # the input row
    rows = [line for line in lines if line.lstrip()[:1].isdigit()]
    assert "(None, 3, 10)" in rows[0] and "yes" in rows[0]
    assert "(None, 3, 2)" in rows[1] and "yes" in rows[1]
    assert "(None, 10)" in rows[2] and rows[2].rstrip().endswith("no")
    assert "head" in body and lines[-1].startswith("total params: ")


def test_validate_from_a_spec_file_and_the_reshape_alternative(stack: Stack, tmp_path: Path) -> None:
    spec = model_spec("lstm:10:relu,reshape:10x1,lstm:2:relu,lstm:10:relu,dense:5", timesteps=3)
    path = tmp_path / "spec.json"
    path.write_text(json_format.MessageToJson(spec))
    code, out, err = run_cli(*stack.cli_args(), "model", "validate", "--spec", str(path))
    assert code == 0, err
    assert "(None, 10, 1)" in out and "reshape" in out
    code, out, err = run_cli(
        *stack.cli_args(), "model", "validate", "--layers", "lstm:4:noseq,lstm:4", "--timesteps", "3"
    )
    assert code == 1 and err.startswith("error: INVALID_ARGUMENT")


def test_train_predict_evaluate_with_plots(stack: Stack, tmp_path: Path) -> None:
    plots = tmp_path / "plots"
    code, out, err = run_cli(
        *stack.cli_args(), "model", "train", *TINY, "--id", "cli-tiny", "--x", X_INLINE, "--y", Y_INLINE,
        "--epochs", "4", "--seed", "1", "--x-scaler", "minmax", "--y-scaler", "minmax", "--plot", str(plots),
    )  # fmt: skip
    assert code == 0, err
    assert "training model cli-tiny v1: 13 training samples, 0 held out, x scaler" in out
    # Not a terminal: one progress line per logged epoch, ending at 4/4.
    assert "epoch 1/4 [" in out and "epoch 4/4 [##############################] loss " in out
    assert "model cli-tiny v1 (READY)" in out and "(None, 4)" in out
    assert_png(plots / "cli-tiny-v1-training.png")

    code, out, err = run_cli(*stack.cli_args(), "model", "predict", "--id", "cli-tiny", "--x", "50,60,70")
    assert code == 0, err
    assert out.splitlines()[0] == "model cli-tiny v1"
    row = out.splitlines()[-1]
    assert row.split()[:4] == ["0", "[50,", "60,", "70]"]
    predicted = float(row.split("[")[-1].rstrip("]"))
    assert np.isfinite(predicted)

    csv = tmp_path / "x.csv"
    csv.write_text("t0,t1,t2\n" + "\n".join(",".join(str(v) for v in r) for r in EXAMPLE1_X[:5]) + "\n")
    y_csv = tmp_path / "y.csv"
    np.savetxt(y_csv, EXAMPLE1_Y[:5], delimiter=",")
    out_npy = tmp_path / "pred.npy"
    code, out, err = run_cli(
        *stack.cli_args(), "model", "predict", "--id", "cli-tiny", "--x", str(csv), "--y", str(y_csv),
        "--plot", str(plots), "--output", str(out_npy),
    )  # fmt: skip
    assert code == 0, err
    assert "actual" in out.splitlines()[1]
    assert len([line for line in out.splitlines() if line[:1].isdigit()]) == 5
    assert_png(plots / "cli-tiny-v1-predictions.png")
    from_csv = np.load(out_npy)
    assert from_csv.shape == (5, 1)

    npy = tmp_path / "x.npy"
    np.save(npy, EXAMPLE1_X[:5].reshape(5, 3, 1))
    code, out, err = run_cli(
        *stack.cli_args(), "--json", "model", "predict", "--id", "cli-tiny", "--x", str(npy)
    )
    assert code == 0, err
    np.testing.assert_allclose(json.loads(out)["values"], from_csv, rtol=1e-6)

    code, out, err = run_cli(
        *stack.cli_args(), "model", "evaluate", "--id", "cli-tiny", "--x", X_INLINE, "--y", Y_INLINE
    )
    assert code == 0, err
    assert "on 13 samples" in out.splitlines()[0]
    metrics = {line.split()[0]: float(line.split()[1]) for line in out.splitlines()[3:]}
    assert {"mae", "mse", "rmse"} <= set(metrics)

    code, out, _ = run_cli(*stack.cli_args(), "model", "list", "--id", "cli-tiny")
    assert code == 0 and out.splitlines()[2].split()[:4] == ["cli-tiny", "1", "READY", "regression"]
    code, out, _ = run_cli(*stack.cli_args(), "model", "describe", "--id", "cli-tiny")
    assert code == 0 and "trained: 4 epochs" in out and "x scaler: " in out
    code, out, _ = run_cli(*stack.cli_args(), "model", "delete", "--id", "cli-tiny")
    assert code == 0 and "deleted model cli-tiny versions 1" in out
    code, _, err = run_cli(*stack.cli_args(), "model", "describe", "--id", "cli-tiny")
    assert code == 1 and "NOT_FOUND" in err


def test_predict_input_that_does_not_fit_the_model_is_a_usage_error(stack: Stack) -> None:
    code, _, err = run_cli(*stack.cli_args(), "model", "train", *TINY, "--id", "cli-shape", "--x", X_INLINE, "--y", Y_INLINE, "--epochs", "1")  # fmt: skip
    assert code == 0, err
    code, _, err = run_cli(*stack.cli_args(), "model", "predict", "--id", "cli-shape", "--x", "1,2,3,4")
    assert code == 2 and "timesteps x features = 3 x 1 = 3" in err


def test_ctrl_c_during_training_cancels_and_saves_nothing(
    stack: Stack, monkeypatch: pytest.MonkeyPatch
) -> None:
    original = display.ProgressBar.update

    def interrupt_at_epoch_2(self: display.ProgressBar, event: object) -> None:
        original(self, event)  # type: ignore[arg-type]
        if event.epoch == 2:  # type: ignore[attr-defined]
            raise KeyboardInterrupt  # what a terminal's Ctrl-C raises in the main thread

    monkeypatch.setattr(display.ProgressBar, "update", interrupt_at_epoch_2)
    code, out, err = run_cli(*stack.cli_args(), "model", "train", *TINY, "--id", "cli-cancel", "--x", X_INLINE, "--y", Y_INLINE, "--epochs", "5000")  # fmt: skip
    assert code == 130
    assert "training cancelled (model cli-cancel v1): nothing was saved" in err
    monkeypatch.undo()
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        code, out, _ = run_cli(*stack.cli_args(), "model", "list", "--id", "cli-cancel")
        if out.strip() == "no models":
            break
        time.sleep(0.2)
    assert code == 0 and out.strip() == "no models"


def _wait_until_no_models(stack: Stack, model_id: str) -> None:
    """A cancelled job winds down within a batch; until then its version is listed as TRAINING."""
    deadline = time.monotonic() + 20
    while True:
        code, out, _ = run_cli(*stack.cli_args(), "model", "list", "--id", model_id)
        if code == 0 and out.strip() == "no models":
            return
        assert time.monotonic() < deadline, out
        time.sleep(0.2)


def test_a_real_sigint_cancels_training_in_the_cli_process(stack: Stack) -> None:
    """`lstm-stack model train` as its own process, interrupted by SIGINT as a terminal's Ctrl-C does."""
    command = [
        sys.executable, "-m", "lstm_stack_client.cli", *stack.cli_args(), "model", "train", *TINY,
        "--id", "cli-sigint", "--x", X_INLINE, "--y", Y_INLINE, "--epochs", "5000",
    ]  # fmt: skip
    process = subprocess.Popen(
        command, cwd=REPO_ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    )
    try:
        assert process.stdout is not None
        seen = []
        # Off a terminal the progress bar logs epoch 1 at once: training is under way.
        while not any(line.startswith("epoch ") for line in seen):
            line = process.stdout.readline()
            assert line, f"the CLI ended before training: {''.join(seen)}{process.stderr.read()}"  # type: ignore[union-attr]
            seen.append(line)
        process.send_signal(signal.SIGINT)
        out, err = process.communicate(timeout=60)
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
    assert process.returncode == 130, out + err
    assert "training cancelled (model cli-sigint v1): nothing was saved" in err
    assert "Traceback" not in err
    assert any(line.startswith("training model cli-sigint v1:") for line in seen)
    _wait_until_no_models(stack, "cli-sigint")


def test_series_training_and_json_output(stack: Stack) -> None:
    code, out, err = run_cli(
        *stack.cli_args(), "--json", "model", "train", *TINY, "--series", ",".join(str(v) for v in range(1, 21)),
        "--window", "3", "--epochs", "2",
    )  # fmt: skip
    assert code == 0, err
    info = json.loads(out)
    assert info["state"] == "READY" and int(info["n_train"]) + int(info.get("n_validation", 0)) == 17
    code, _, err = run_cli(*stack.cli_args(), "model", "train", *TINY, "--series", "1,2,3,4")
    assert code == 2 and "--window" in err
