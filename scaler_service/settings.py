"""Scaler service settings: the shared server settings under the LSTM_SCALER_ environment prefix."""

from __future__ import annotations

import dataclasses

from service_common.settings import ServerSettings


@dataclasses.dataclass(frozen=True)
class ScalerSettings(ServerSettings):
    ENV_PREFIX = "LSTM_SCALER_"
