"""`lstm-stack model export / import / tensorboard` against real in-process services."""

from __future__ import annotations

import json
import re
from pathlib import Path

import keras
import numpy as np
import onnxruntime
import pytest
from lstm_stack_client import LstmStackClient

from tests.clients.conftest import Stack
from tests.clients.test_cli_input import run_cli
from tests.clients.test_cli_model import TINY, X_INLINE, Y_INLINE


@pytest.fixture(scope="module")
def trained(stack: Stack) -> str:
    code, _, err = run_cli(
        *stack.cli_args(), "model", "train", *TINY, "--id", "cli-export", "--x", X_INLINE, "--y", Y_INLINE,
        "--epochs", "2", "--seed", "1", "--x-scaler", "minmax", "--y-scaler", "minmax",
    )  # fmt: skip
    assert code == 0, err
    return "cli-export"


def test_export_writes_an_onnx_file_that_predicts_what_the_service_does(
    stack: Stack, trained: str, client: LstmStackClient, tmp_path: Path
) -> None:
    target = tmp_path / "model.onnx"
    code, out, err = run_cli(*stack.cli_args(), "model", "export", "--id", trained, "-o", str(target))
    assert code == 0, err
    assert f"exported model {trained} v1 as onnx to {target}" in out and "outputs: values" in out
    assert not list(tmp_path.glob(".*.part"))  # written aside, renamed into place
    x = np.array([[50.0, 60.0, 70.0], [1.0, 2.0, 3.0]]).reshape(2, 3, 1)
    session = onnxruntime.InferenceSession(target.read_bytes(), providers=["CPUExecutionProvider"])
    (got,) = session.run(["values"], {"x": x})
    want = client.model.predict(trained, x).values
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)


def test_export_of_an_unknown_model_fails_and_leaves_no_file(stack: Stack, tmp_path: Path) -> None:
    target = tmp_path / "missing.tar"
    code, _, err = run_cli(
        *stack.cli_args(), "model", "export", "--id", "nope", "--format", "savedmodel", "-o", str(target)
    )
    assert code == 1 and err.startswith("error: NOT_FOUND") and "nope" in err
    assert not target.exists() and not list(tmp_path.iterdir())


def test_tensorboard_prints_the_logdir_of_the_id_or_of_one_version(stack: Stack, trained: str) -> None:
    code, out, err = run_cli(*stack.cli_args(), "model", "tensorboard", "--id", trained, "--version", "1")
    assert code == 0, err
    match = re.match(r"tensorboard --logdir (\S+) --host 127\.0\.0\.1 --port 6006$", out.strip())
    assert match, out
    run = Path(match.group(1))
    assert run.name == "1" and any("tfevents" in p.name for p in run.iterdir())
    code, out, err = run_cli(*stack.cli_args(), "--json", "model", "tensorboard", "--id", trained)
    assert code == 0, err
    assert json.loads(out)["logdir"] == str(run.parent)  # every version of the id, one run each


def test_import_brings_a_keras_file_in_and_refuses_one_outside_the_contract(
    stack: Stack, client: LstmStackClient, tmp_path: Path
) -> None:
    keras.utils.set_random_seed(3)
    model = keras.Sequential([keras.Input((3, 1)), keras.layers.LSTM(3), keras.layers.Dense(1)])
    path = tmp_path / "elsewhere.keras"
    model.save(path)
    code, out, err = run_cli(
        *stack.cli_args(), "model", "import", str(path), "--task", "regression", "--id", "cli-imported",
        "--timesteps", "3", "--features", "1",
    )  # fmt: skip
    assert code == 0, err
    assert "imported" in out and "as model cli-imported v1" in out
    x = np.array([[50.0, 60.0, 70.0]]).reshape(1, 3, 1)
    want = keras.ops.convert_to_numpy(model(x.astype(np.float32)))
    np.testing.assert_allclose(client.model.predict("cli-imported", x).values, want, rtol=1e-5, atol=1e-5)
    code, _, err = run_cli(*stack.cli_args(), "model", "tensorboard", "--id", "cli-imported")
    assert code == 2 and "no version with TensorBoard events" in err

    lambda_model = keras.Sequential(
        [
            keras.Input((3, 1)),
            keras.layers.LSTM(3),
            keras.layers.Lambda(lambda t: t + 1),
            keras.layers.Dense(1),
        ]
    )
    bad = tmp_path / "lambda.keras"
    lambda_model.save(bad)
    code, _, err = run_cli(*stack.cli_args(), "model", "import", str(bad), "--task", "regression")
    assert code == 1 and err.startswith("error: INVALID_ARGUMENT") and "Lambda" in err
    code, _, err = run_cli(
        *stack.cli_args(), "model", "import", str(path), "--task", "regression", "--x-scaler", "a:b"
    )
    assert code == 2 and "SCALER_ID:VERSION" in err
