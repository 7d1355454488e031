"""MLServer custom runtime for bench_serving.py: the same Keras model file, a ``tf.function`` forward pass.

Runs inside MLServer's own virtualenv (bench/.mlserver-venv, made by bench_serving.py), never in
lstm-stack's: it imports mlserver, keras and tensorflow only. model-settings.json points
``parameters.uri`` at a model.keras exported from lstm-stack's store (verified there), and MLServer
serves it through ``inference.GRPCInferenceService/ModelInfer``.

The contract mirrors lstm-stack's Open Inference Protocol surface so both servers get the same request
bytes: one input "x" (FP32 or FP64, [batch, timesteps, features]); one output "values" (FP64,
[batch, outputs]). The forward pass is what a careful MLServer user would write: a tf.function with a
fixed input signature (one trace serves every batch size), traced at load time, not ``model.predict``.
"""

from __future__ import annotations

import numpy as np
from mlserver import MLModel
from mlserver.codecs import NumpyCodec
from mlserver.errors import InferenceError
from mlserver.types import InferenceRequest, InferenceResponse
from mlserver.utils import get_model_uri

INPUT_NAME = "x"
OUTPUT_NAME = "values"


class KerasForward(MLModel):
    async def load(self) -> bool:
        # Imported here: MLServer imports runtime modules in its main process too, which never infers.
        import keras
        import tensorflow as tf

        uri = await get_model_uri(self._settings)
        model = keras.saving.load_model(uri, compile=False, safe_mode=True)
        _, timesteps, features = model.input_shape
        signature = [tf.TensorSpec([None, timesteps, features], tf.float32)]
        self._forward = tf.function(lambda x: model(x, training=False), input_signature=signature)
        self._forward(np.zeros((1, timesteps, features), np.float32))  # trace before serving
        self._shape = (timesteps, features)
        return True

    async def predict(self, payload: InferenceRequest) -> InferenceResponse:
        inputs = [tensor for tensor in payload.inputs if tensor.name == INPUT_NAME]
        if len(inputs) != 1:
            raise InferenceError(
                f"expected one input named {INPUT_NAME!r}, got {[t.name for t in payload.inputs]}"
            )
        x = NumpyCodec.decode_input(inputs[0]).astype(np.float32, copy=False)
        if x.ndim != 3 or x.shape[1:] != self._shape:
            raise InferenceError(
                f"expected x of shape [batch, {self._shape[0]}, {self._shape[1]}], got {list(x.shape)}"
            )
        y = self._forward(x).numpy().astype(np.float64)
        return InferenceResponse(
            model_name=self.name,
            model_version=self.version,
            outputs=[NumpyCodec.encode_output(OUTPUT_NAME, y)],
        )
