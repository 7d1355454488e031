"""The model runtime: what serving code (the Predict RPC, the Open Inference Protocol) uses.

Final names (agreed with model_service/inference_protocol/):

- ``ModelRuntime`` (one per server, built in app.create_server, handed to both servicers):
  - ``resolve(model_id, version=0) -> ServedModel``: 0 = the latest READY version. NotFound for an
    unknown id/version; FailedPrecondition while that version is training or when it is unloaded.
  - ``index() -> list[ModelEntry]``: every version, state "READY" / "UNAVAILABLE" (unloaded, reason
    "unloaded") / "TRAINING" (reason "training").
  - ``load(model_id)``: load every stored version of the id into memory again (RepositoryModelLoad).
  - ``unload(model_id)``: drop every version from memory, keep it on disk (RepositoryModelUnload).
- ``ServedModel``: ``model_id``, ``version``, ``signature``, ``max_batch_size`` (rows per forward
  pass); ``infer(x) -> Prediction`` takes raw units (batch, timesteps, features) (or (batch, timesteps)
  when features == 1), any float dtype; goes through the adaptive batcher, the train-fitted x scaler
  and the inverse y scaler; raises InvalidArgument naming expected vs received shape.
  ``evaluate(x, y) -> dict[str, float]``.
- ``ModelSignature(timesteps, features, task, outputs)``: task "regression" | "binary" | "multiclass";
  outputs = targets per sample, 1 for binary, n_classes for multiclass.
- ``Prediction(values, probabilities, labels)``: regression values (batch, outputs) float64 in original
  units; classification probabilities (batch, 1) or (batch, n_classes) float64 and labels (batch,) int64;
  the fields a task does not have are None. ``timing`` (InferTiming: input_ns, queue_ns, the
  ForwardPass that computed it, output_ns) says where the call spent its time.
- ``ModelEntry(model_id, version, state, reason)``.

Domain code only: no grpc here.
"""

from __future__ import annotations

from model_service.registry import ModelEntry, ModelRegistry
from model_service.serving import ModelSignature, Prediction, ServedModel

__all__ = ["ModelEntry", "ModelRuntime", "ModelSignature", "Prediction", "ServedModel"]


class ModelRuntime:
    def __init__(self, registry: ModelRegistry) -> None:
        self.registry = registry

    def resolve(self, model_id: str, version: int = 0) -> ServedModel:
        return self.registry.resolve(model_id, version)

    def index(self) -> list[ModelEntry]:
        return self.registry.index()

    def load(self, model_id: str) -> None:
        self.registry.load(model_id)

    def unload(self, model_id: str) -> None:
        self.registry.unload(model_id)
