"""The quantile head's training loss: the pinball loss, in Keras (trainer process only)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import keras


@keras.saving.register_keras_serializable(package="lstm_stack")
class PinballLoss(keras.losses.Loss):
    """Mean pinball loss of y_pred (batch, values * q) against y_true (batch, values)."""

    def __init__(self, quantiles: Sequence[float], name: str = "pinball", **kwargs: Any) -> None:
        super().__init__(name=name, **kwargs)
        self.quantiles = [float(q) for q in quantiles]

    def call(self, y_true: Any, y_pred: Any) -> Any:
        q = len(self.quantiles)
        levels = keras.ops.convert_to_tensor(self.quantiles, dtype=y_pred.dtype)
        pred = keras.ops.reshape(y_pred, (-1, keras.ops.shape(y_true)[-1], q))
        error = keras.ops.expand_dims(keras.ops.cast(y_true, y_pred.dtype), -1) - pred
        loss = keras.ops.maximum(levels * error, (levels - 1.0) * error)
        return keras.ops.mean(keras.ops.reshape(loss, (keras.ops.shape(y_true)[0], -1)), axis=-1)

    def get_config(self) -> dict[str, Any]:
        return {**super().get_config(), "quantiles": self.quantiles}
