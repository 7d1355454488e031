"""Settings: every field a flag and a prefixed environment variable; flag > environment > default."""

from __future__ import annotations

import dataclasses
import inspect
from pathlib import Path

import pytest

from model_service.settings import ModelSettings
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


def test_a_choice_setting_names_its_choices(monkeypatch: pytest.MonkeyPatch, capsys) -> None:
    assert load_settings(DemoSettings, []).event_loop == "uvloop"
    assert load_settings(DemoSettings, ["--event-loop", "asyncio"]).event_loop == "asyncio"
    with pytest.raises(SystemExit):
        load_settings(DemoSettings, ["--event-loop", "tornado"])
    assert "invalid choice: 'tornado' (choose from 'uvloop', 'asyncio')" in capsys.readouterr().err
    monkeypatch.setenv("LSTM_DEMO_EVENT_LOOP", "trio")
    with pytest.raises(SystemExit):
        load_settings(DemoSettings, [])
    assert "LSTM_DEMO_EVENT_LOOP: expected one of uvloop, asyncio, got 'trio'" in capsys.readouterr().err
    monkeypatch.setenv("LSTM_DEMO_EVENT_LOOP", "asyncio")
    assert load_settings(DemoSettings, []).event_loop == "asyncio"


def test_scaler_settings_use_their_own_prefix(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("LSTM_SCALER_PORT", "5123")
    monkeypatch.setenv("LSTM_DEMO_PORT", "9")
    settings = load_settings(ScalerSettings, ["--store", "/data/scalers"])
    assert (settings.port, settings.store) == (5123, Path("/data/scalers"))


@pytest.mark.parametrize("settings_class", [ScalerSettings, ModelSettings])
def test_every_setting_says_what_it_means_in_help(
    settings_class: type[ServerSettings], capsys: pytest.CaptureFixture[str]
) -> None:
    for field in dataclasses.fields(settings_class):
        assert len(field.metadata.get("help", "")) > 10, f"{field.name} has no meaning for --help"
    with pytest.raises(SystemExit):
        load_settings(settings_class, ["--help"])
    shown = " ".join(capsys.readouterr().out.split())
    assert "calls in flight at once per worker process" in shown
    assert f"(env {settings_class.ENV_PREFIX}WORKERS, default 0)" in shown


def test_the_batch_ceiling_has_one_default() -> None:
    from model_service.serving import ServingOptions

    assert ModelSettings().max_batch_size == ServingOptions().max_batch_size


def test_the_client_leaves_the_epoch_default_to_the_service() -> None:
    from lstm_stack_client import ModelClient

    from model_service.training.request import TrainOptions

    assert inspect.signature(ModelClient.train).parameters["epochs"].default == 0
    assert TrainOptions(epochs=0).with_defaults().epochs == 10
