"""Model service settings: the shared server settings plus training, batching and the scaler channel.

Every field is a flag (``--max-training-jobs``) and an LSTM_MODEL_ environment variable; why the
defaults are what they are (measured) is in docs/performance.md.
"""

from __future__ import annotations

import dataclasses

from service_common.settings import ServerSettings, setting

# One default for the serving batch ceiling: the setting, ServingOptions and the predictor's buckets.
DEFAULT_MAX_BATCH_SIZE = 64
# Sessions a replica keeps built by default (each a few hundred KiB for the small models this serves).
DEFAULT_MAX_LOADED_MODELS = 2000


@dataclasses.dataclass(frozen=True)
class ModelSettings(ServerSettings):
    ENV_PREFIX = "LSTM_MODEL_"

    scaler_address: str = setting(
        "", "host:port of the scaler service (it fits every scaler on the training split)"
    )
    scaler_timeout_seconds: float = setting(30.0, "deadline of each call to the scaler service")
    scaler_token: str = setting("", "bearer token for the model -> scaler channel")
    scaler_token_file: str = setting("", "file whose first token is sent to the scaler service")
    scaler_tls_ca: str = setting("", "PEM root certificate to trust for the scaler service; implies TLS")
    scaler_tls_cert: str = setting("", "PEM client certificate presented to the scaler service (mutual TLS)")
    scaler_tls_key: str = setting("", "PEM key of that client certificate")
    scaler_tls_server_name: str = setting("", "name the scaler service's certificate must carry")
    max_training_jobs: int = setting(
        2, "training jobs running at once; the next Train gets RESOURCE_EXHAUSTED"
    )
    max_training_work: int = setting(200_000_000, "ceiling on one job's work, epochs x training rows")
    memory_budget_mb: int = setting(
        2048,
        "memory (MiB) that Predict, Evaluate, ModelInfer and Train calls running at once may take on top "
        "of the loaded models (each call's estimate from model_service/cost.py is held while it runs; one "
        "that would go past it gets RESOURCE_EXHAUSTED; big inference calls run in chunks of a quarter)",
    )
    max_batch_size: int = setting(
        DEFAULT_MAX_BATCH_SIZE,
        "adaptive batching: under load a forward pass takes whatever is queued, up to this many rows "
        "(an idle request runs at once); 1 turns batching off",
    )
    max_batch_wait_ms: float = setting(0.0, "adaptive batching: how long a pass waits for more rows")
    inline_passes: bool = setting(
        False,
        "run a request's forward pass on the event loop when no other pass of its model is queued or "
        "running (no thread hop for a lone call); the adaptive batcher takes the rest",
    )
    max_loaded_models: int = setting(
        DEFAULT_MAX_LOADED_MODELS,
        "versions that keep their ONNX Runtime session built; past it the least recently used one drops "
        "its session and builds it again on its next call (every stored version stays served)",
    )
    preload: str = setting(
        "", "comma-separated model ids whose sessions are built at start and never dropped"
    )
    warm_on_start: bool = setting(
        False, "build every stored version's session in the background after start (up to the budget)"
    )
    trainer_address: str = setting(
        "",
        "the trainer process serving processes forward Train to ('unix:/path'); the supervisor sets it "
        "for its workers; empty = this process starts a trainer of its own on the first Train",
    )
    trainer_recycle_jobs: int = setting(
        20, "the trainer exits after this many jobs, once idle, and a fresh one takes over; 0 = never"
    )
    trainer_nice: int = setting(10, "CPU priority the trainer lowers itself by, so serving keeps its cores")
    trainer_start_timeout_seconds: float = setting(
        120.0, "how long a Train call waits for a trainer process to come up before UNAVAILABLE"
    )
    dataset_shuffle_buffer: int = setting(
        65_536,
        "training on a stored dataset shuffles samples within a buffer of this many (and its blocks' "
        "order every epoch), so what a job holds does not grow with the dataset",
    )
    dataset_in_memory_fit_mb: int = setting(
        32,
        "a scaler without partial_fit (robust) fitted on a dataset's training split gets it in one Fit "
        "call; past this many MiB (float64) the Train is refused with FAILED_PRECONDITION (keep it below "
        "max_message_mb)",
    )


# The trainer process: what serving processes start (single process) or the supervisor runs, and the
# name of its socket inside a private 0700 directory.
TRAINER_FACTORY = "model_service.trainer_process:create_trainer_server"
TRAINER_SOCKET_NAME = "trainer.sock"


def trainer_settings(settings: ModelSettings, socket_path: str) -> ModelSettings:
    """The serving settings, as the trainer serves them: its unix socket, no auth/TLS/metrics of its own
    (only processes of its instance reach the socket), one process."""
    return dataclasses.replace(
        settings,
        host=f"unix:{socket_path}",
        port=0,
        workers=1,
        reuse_port=False,
        auth_token="",
        auth_token_file="",
        tls_cert="",
        tls_key="",
        tls_client_ca="",
        metrics_port=-1,
        trainer_address="",
        # A finished job's last event and status must reach the forwarding process before the port closes.
        grace_seconds=max(settings.grace_seconds, 5.0),
    )
