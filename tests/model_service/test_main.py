"""The start command: flags and LSTM_MODEL_ variables become settings."""

from __future__ import annotations

from pathlib import Path

import pytest

from model_service.__main__ import main
from model_service.settings import ModelSettings
from service_common.settings import load_settings


def test_flags_and_environment(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("LSTM_MODEL_MAX_TRAINING_JOBS", "3")
    monkeypatch.setenv("LSTM_MODEL_MAX_BATCH_WAIT_MS", "1.5")
    settings = load_settings(
        ModelSettings, ["--port", "0", "--store", str(tmp_path), "--scaler-address", "127.0.0.1:1"]
    )
    assert settings.scaler_address == "127.0.0.1:1"
    assert settings.store == tmp_path
    assert settings.max_training_jobs == 3
    assert settings.max_batch_wait_ms == 1.5
    assert settings.ENV_PREFIX == "LSTM_MODEL_"


def test_missing_scaler_address_is_refused(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["--port", "0", "--store", str(tmp_path)]) == 2
    assert "--scaler-address" in capsys.readouterr().err
