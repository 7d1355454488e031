"""The seed walkthrough end to end: in process against the test stack, and as `python -m demo` would run."""

from __future__ import annotations

import io
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from demo import main as demo_main
from demo import walkthrough
from demo.services import REPO_ROOT
from tests.clients.conftest import Stack
from tests.clients.pngs import assert_png

PLOTS = [
    "example1-training.png",
    "example1-predictions.png",
    "example2-scaling.png",
    "example2-training.png",
    "example2-predictions.png",
    "example3-forecast.png",
    "example3-backtest.png",
]


def test_demo_needs_both_addresses_or_neither(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exited:
        demo_main.main(["--scaler-address", "127.0.0.1:1"])
    assert exited.value.code == 2
    assert "both --scaler-address and --model-address" in capsys.readouterr().err


def test_demo_fails_non_zero_when_services_are_unreachable(capsys: pytest.CaptureFixture[str]) -> None:
    from demo.services import free_port

    address = f"127.0.0.1:{free_port()}"
    code = demo_main.main(["--scaler-address", address, "--model-address", address, "--wait", "1"])
    assert code == 1
    assert "demo failed:" in capsys.readouterr().err


def test_python_m_demo_runs_the_walkthrough_with_its_own_services(tmp_path: Path) -> None:
    """What `make run` does, with few epochs: services as subprocesses on free ports, the walkthrough
    through the client, plots written, services stopped cleanly."""
    output = tmp_path / "out"
    env = {**os.environ, "PYTHONPATH": str(REPO_ROOT)}
    result = subprocess.run(
        [sys.executable, "-m", "demo", "--epochs", "3", "--output", str(output), "--run-dir", str(tmp_path / "run")],
        cwd=REPO_ROOT, env=env, capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    printed = result.stdout
    assert result.returncode == 0, printed[-3000:] + result.stderr[-3000:]
    assert "services SERVING after" in printed
    # Example 1: both shape flows, training progress, the [50, 60, 70] prediction.
    for shape in ("(None, 3, 10)", "(None, 3, 2)", "(None, 10)", "(None, 10, 1)"):
        assert shape in printed
    assert "epoch 3/3 [" in printed
    assert "predict [50, 60, 70] -> " in printed
    # Example 2: the three scalers side by side on the test split, then one model per scaler.
    assert "x_test (original)      minmax" in printed
    assert "[30000, 40000, 50000]" in printed
    for kind in ("minmax", "standard", "robust"):
        assert f"example 2 ({kind}): model " in printed
    assert "mean absolute error (original units):" in printed
    assert "kept the weights of epoch" in printed
    # Example 3: sunspots, a quantile head, a backtest against the seasonal-naive forecast.
    assert "yearly sunspots (statsmodels)" in printed and "example 3: model " in printed
    assert "seasonal-naive MAE" in printed and "after 2008: 2009: " in printed
    # the comparison is said whichever way it went
    assert re.search(
        r"^the LSTM (beat|did not beat) the seasonal-naive forecast on these years: MAE ",
        printed,
        re.MULTILINE,
    )
    assert re.search(r"^example 1 [\d.]+s, .*, example 3 [\d.]+s$", printed, re.MULTILINE)
    for name in PLOTS:
        assert_png(output / name)
        assert f"wrote {output / name}" in printed
    assert "services stopped (exit codes [0, 0])" in printed
    assert "demo finished in" in printed
    # The services used their own signed stores under --run-dir, and logged there.
    assert (tmp_path / "run" / "logs" / "model.log").stat().st_size > 0
    assert any((tmp_path / "run" / "scaler-store").rglob("SIGNATURE"))
    assert any((tmp_path / "run" / "model-store").rglob("SIGNATURE"))


def test_demo_security_options_are_for_running_services(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    with pytest.raises(SystemExit) as exited:
        demo_main.parse_args(["--tls-ca", "ca.pem"])
    assert exited.value.code == 2
    assert "TLS options are for running services" in capsys.readouterr().err
    addresses = ["--scaler-address", "127.0.0.1:1", "--model-address", "127.0.0.1:2"]
    with pytest.raises(SystemExit):
        demo_main.parse_args([*addresses, "--tls-ca", "ca.pem", "--tls-cert", "client.pem"])
    assert "--tls-cert and --tls-key go together" in capsys.readouterr().err
    monkeypatch.setenv("LSTM_STACK_TOKEN", "from-the-environment-0123")
    monkeypatch.setenv("LSTM_STACK_TLS_CA", "ca.pem")
    args = demo_main.parse_args(addresses)
    assert (args.token, args.tls_ca, args.tls_cert) == ("from-the-environment-0123", "ca.pem", None)


def test_a_dead_start_is_shown_and_the_next_seed_tried(stack: Stack, tmp_path: Path) -> None:
    """Seed 5 kills the seed model's 2-unit ReLU layer at initialisation (constant output from the first
    epoch); the walkthrough says so and trains seed 6 instead."""
    out = io.StringIO()
    results = walkthrough.Results()
    settings = walkthrough.Settings(output=tmp_path, epochs1=5, seed=5)
    with stack.client(timeout=60) as client:
        walkthrough.example1(client, settings, walkthrough.Printer(out), results)
    printed = out.getvalue()
    assert results.example1_dead_seeds == [5], printed
    assert results.example1_seed == 6
    assert "seed 5: every window gives the same" in printed and "trying the next seed" in printed
    assert f"seed 6 trained; its model {results.example1_model} is the one used below" in printed
    assert "example 1 (seed 6): model " in printed
    assert f"predict [50, 60, 70] -> {results.example1_prediction:.2f}" in printed
    assert_png(tmp_path / "example1-predictions.png")


def test_example1_with_the_demo_settings_predicts_about_80(stack: Stack, tmp_path: Path) -> None:
    """What `make run` prints for [50, 60, 70]: the seed note's "about 80", with the demo's own defaults."""
    out = io.StringIO()
    results = walkthrough.Results()
    settings = walkthrough.Settings(output=tmp_path)
    with stack.client(timeout=60) as client:
        walkthrough.example1(client, settings, walkthrough.Printer(out), results)
    printed = out.getvalue()
    assert results.example1_dead_seeds == [] and results.example1_seed == settings.seed, printed
    assert 70 <= results.example1_prediction <= 90, printed
    assert "WARNING" not in printed


def test_example2_keeps_each_models_best_epoch(stack: Stack, tmp_path: Path) -> None:
    """The robust model used to end on a worse epoch than its best: every example-2 model now keeps its
    lowest-loss weights (early stopping with restore_best_weights, on the training loss)."""
    out = io.StringIO()
    results = walkthrough.Results()
    settings = walkthrough.Settings(output=tmp_path, epochs2=40)
    with stack.client(timeout=60) as client:
        walkthrough.example2_model(client, settings, walkthrough.Printer(out), results)
    printed = out.getvalue()
    for kind in walkthrough.SCALER_KINDS:
        best, run = results.example2_best_epochs[kind]
        assert 1 <= best <= run <= 40
        assert f"kept the weights of epoch {best} of {run}" in printed


def test_example3_forecasts_sunspots_with_intervals_and_a_backtest(stack: Stack, tmp_path: Path) -> None:
    """The real-data example with a short training: scalers and model see only the training years, the
    backtest covers the held-back years with every metric, and both plots are written."""
    out = io.StringIO()
    results = walkthrough.Results()
    settings = walkthrough.Settings(output=tmp_path, epochs3=3)
    with stack.client(timeout=60) as client:
        walkthrough.example3(client, settings, walkthrough.Printer(out), results)
    printed = out.getvalue()
    summary = results.example3_backtest
    assert {"mae", "rmse", "mase", "smape", "coverage", "naive_mae", "seasonal_naive_mae"} <= set(summary)
    assert 0.0 <= summary["coverage"] <= 1.0 and results.example3_coverage["nominal"] == pytest.approx(0.8)
    assert "backtest on the 40 unseen years: 8 rolling origins 5 years apart" in printed
    assert "1969" in printed  # the first backtest origin: 2008 - 40 + 1
    assert_png(tmp_path / "example3-forecast.png")
    assert_png(tmp_path / "example3-backtest.png")
