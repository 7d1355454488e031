"""Settings: every field a flag and a prefixed environment variable; flag > environment > default."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest

from scaler_service.settings import ScalerSettings
from service_common.settings import ServerSettings, load_settings


@dataclasses.dataclass(frozen=True)
class DemoSettings(ServerSettings):
    ENV_PREFIX = "LSTM_DEMO_"
    verbose: bool = False


@pytest.fixture(autouse=True)
def _clean_env(monkeypatch: pytest.MonkeyPatch) -> None:
    import os

    for name in list(os.environ):
        if name.startswith(("LSTM_DEMO_", "LSTM_SCALER_")):
            monkeypatch.delenv(name)


def test_defaults() -> None:
    settings = load_settings(DemoSettings, [])
    assert settings == DemoSettings()
    assert settings.address == "127.0.0.1:0"
    assert settings.max_message_bytes == 64 * 1024 * 1024 > 4 * 1024 * 1024


def test_environment_then_flags(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("LSTM_DEMO_MAX_MESSAGE_MB", "8")
    monkeypatch.setenv("LSTM_DEMO_STORE", "/tmp/from-env")
    monkeypatch.setenv("LSTM_DEMO_VERBOSE", "yes")
    monkeypatch.setenv("LSTM_DEMO_GRACE_SECONDS", "2.5")
    settings = load_settings(DemoSettings, ["--max-message-mb", "16", "--port", "7"])
    assert settings.max_message_mb == 16  # the flag wins
    assert settings.port == 7
    assert settings.store == Path("/tmp/from-env") and settings.verbose is True
    assert settings.grace_seconds == 2.5
    assert load_settings(DemoSettings, ["--verbose", "off"]).verbose is False


def test_bad_values_exit_with_a_usage_error(monkeypatch: pytest.MonkeyPatch, capsys) -> None:
    with pytest.raises(SystemExit):
        load_settings(DemoSettings, ["--port", "eighty"])
    monkeypatch.setenv("LSTM_DEMO_VERBOSE", "maybe")
    with pytest.raises(SystemExit):
        load_settings(DemoSettings, [])
    assert "LSTM_DEMO_VERBOSE: expected a boolean, got 'maybe'" in capsys.readouterr().err


def test_scaler_settings_use_their_own_prefix(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("LSTM_SCALER_PORT", "5123")
    monkeypatch.setenv("LSTM_DEMO_PORT", "9")
    settings = load_settings(ScalerSettings, ["--store", "/data/scalers"])
    assert (settings.port, settings.store) == (5123, Path("/data/scalers"))
