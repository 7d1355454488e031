"""Model metadata (records.py): the forecasting fields survive meta.json, and older metadata still loads."""

from __future__ import annotations

import json

import pytest

from model_service.forecasting.config import ForecastConfig, Strategy
from model_service.records import ModelRecord
from model_service.spec import Head, Lstm, ModelSpec, Task, with_defaults
from service_common.errors import IntegrityError

SPEC = with_defaults(ModelSpec(4, 2, (Lstm(3),), Head(Task.REGRESSION, 6)))
CONFIG = ForecastConfig(4, 3, Strategy.DIRECT, (0, 1), (1,), 2, 2, (0.1, 0.5, 0.9))


def test_forecast_config_coverage_and_recipe_round_trip() -> None:
    record = ModelRecord(
        "m",
        2,
        SPEC,
        1,
        "now",
        forecast=CONFIG,
        holdout_coverage={"interval": 0.75},
        recipe=b"\x00\x01settings",
    )
    again = ModelRecord.from_json(record.to_json(), "m", 2)
    assert again.forecast == CONFIG and again.holdout_coverage == {"interval": 0.75}
    assert again.recipe == b"\x00\x01settings"


def test_metadata_written_before_forecasting_loads_without_it() -> None:
    body = json.loads(ModelRecord("m", 1, SPEC, 1, "now").to_json())
    for key in ("forecast", "holdout_coverage", "recipe"):
        del body[key]
    old = ModelRecord.from_json(json.dumps(body).encode(), "m", 1)
    assert old.forecast is None and old.holdout_coverage == {} and old.recipe == b""


def test_a_malformed_recipe_is_an_integrity_error() -> None:
    body = json.loads(ModelRecord("m", 1, SPEC, 1, "now").to_json())
    body["recipe"] = "not base64!"
    with pytest.raises(IntegrityError, match="malformed metadata"):
        ModelRecord.from_json(json.dumps(body).encode(), "m", 1)
