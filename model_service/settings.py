"""Model service settings: the shared server settings plus training, batching and the scaler channel.

Every field is a flag (``--max-training-jobs``) and an LSTM_MODEL_ environment variable.
"""

from __future__ import annotations

import dataclasses

from service_common.settings import ServerSettings


@dataclasses.dataclass(frozen=True)
class ModelSettings(ServerSettings):
    ENV_PREFIX = "LSTM_MODEL_"

    # host:port of the scaler service (it fits every scaler on the training split).
    scaler_address: str = ""
    scaler_timeout_seconds: float = 30.0
    # Bearer token(s) / TLS for the model -> scaler channel (see the README's SECURITY section).
    scaler_token: str = ""
    scaler_token_file: str = ""
    scaler_tls_ca: str = ""
    scaler_tls_cert: str = ""
    scaler_tls_key: str = ""
    scaler_tls_server_name: str = ""
    # Training jobs running at once; the next Train gets RESOURCE_EXHAUSTED.
    max_training_jobs: int = 2
    # Ceiling on one job's work, epochs x training rows.
    max_training_work: int = 200_000_000
    # Memory (MiB) that Predict, Evaluate, ModelInfer and Train calls running at once may take on top of
    # the loaded models: each call's estimate (model_service/cost.py: activations, its inputs and outputs,
    # for Train also weights and optimizer state) is held against it while the call runs, and a call
    # that would go past it gets RESOURCE_EXHAUSTED naming both. Big inference calls run in chunks of
    # at most a quarter of it.
    memory_budget_mb: int = 2048
    # Adaptive batching (chosen by bench/bench_model.py): an idle request runs at once; under load the
    # worker drains whatever is queued, up to this many rows, waiting up to max_batch_wait_ms for more.
    # With 32 clients, batching gave 1.21-1.33x the unbatched rate (XLA tier); a 1 ms wait was within
    # run-to-run noise of no wait (3 runs, -11 % to +11 %), so none. max_batch_size 1 turns batching off.
    max_batch_size: int = 64
    max_batch_wait_ms: float = 0.0
    # Serve each hot batch-size bucket with XLA (compiled in the background after 16 uses, ~0.8 s each;
    # the graph function serves it until then): 2-3x cheaper forward passes. false = graph only.
    jit_compile: bool = True
    # Trace every stored model in the background after start, so first requests are fast.
    warm_on_start: bool = True
