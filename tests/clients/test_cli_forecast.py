"""`lstm-stack model train --horizon/--quantiles`, `model forecast` and `model backtest`, with their plots,
against real in-process services."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from tests.clients.conftest import Stack
from tests.clients.pngs import assert_png
from tests.clients.test_cli_input import run_cli

SERIES = 10 + np.sin(2 * np.pi * np.arange(60.0) / 6)
WINDOW = ["--layers", "lstm:4", "--timesteps", "6", "--features", "1", "--learning-rate", "0.01"]


def test_train_forecast_and_backtest_a_quantile_model_with_plots(stack: Stack, tmp_path: Path) -> None:
    series = tmp_path / "series.csv"
    np.savetxt(series, SERIES.reshape(-1, 1), delimiter=",", header="value")
    code, out, err = run_cli(
        *stack.cli_args(), "model", "train", *WINDOW, "--id", "cli-fc", "--series", str(series), "--window", "6",
        "--horizon", "3", "--quantiles", "0.1,0.5,0.9", "--epochs", "3", "--seed", "1", "--validation-fraction",
        "0.2", "--x-scaler", "minmax", "--y-scaler", "minmax",
    )  # fmt: skip
    assert code == 0, err
    assert "model cli-fc v1 (READY)" in out

    plots = tmp_path / "plots"
    history = ",".join(f"{v:.4f}" for v in SERIES[:30])
    code, out, err = run_cli(
        *stack.cli_args(), "model", "forecast", "--id", "cli-fc", "--history", history, "--plot", str(plots)
    )
    assert code == 0, err
    assert "model cli-fc v1: 3 step(s) ahead" in out
    header = out.splitlines()[1].split()
    assert header == ["series", "step", "target", "forecast", "q0.1", "q0.5", "q0.9"]
    assert_png(plots / "cli-fc-v1-forecast.png")

    code, out, err = run_cli(
        *stack.cli_args(), "--json", "model", "forecast", "--id", "cli-fc", "--history", history
    )
    assert code == 0, err
    body = json.loads(out)
    assert np.array(body["point"]).shape == (1, 3, 1) and np.array(body["quantile_values"]).shape == (
        1,
        3,
        1,
        3,
    )

    code, out, err = run_cli(
        *stack.cli_args(), "model", "backtest", "--id", "cli-fc", "--series", str(series), "--windows", "3",
        "--season-length", "6", "--plot", str(plots),
    )  # fmt: skip
    assert code == 0, err
    lines = out.splitlines()
    assert lines[0] == "backtest of cli-fc: 3 window(s)"
    assert {"mae", "mase", "smape", "coverage", "seasonal_naive_mae"} <= set(lines[1].split())
    assert lines[-2].split()[0] == "all" and lines[-1].startswith("wrote ")
    assert_png(plots / "cli-fc-v1-backtest.png")


def test_bad_forecast_input_is_a_precise_error(stack: Stack) -> None:
    code, _, err = run_cli(*stack.cli_args(), "model", "train", *WINDOW, "--id", "cli-bad", "--series",
                           ",".join(map(str, SERIES)), "--window", "6", "--quantiles", "0.1,x")  # fmt: skip
    assert code == 2 and "--quantiles: expected numbers" in err
    code, _, err = run_cli(*stack.cli_args(), "model", "train", *WINDOW, "--id", "cli-bad", "--series",
                           ",".join(map(str, SERIES)), "--window", "6", "--quantiles", "0.1,0.9",
                           "--epochs", "1")  # fmt: skip
    assert code == 1 and "INVALID_ARGUMENT" in err and "must include 0.5" in err
