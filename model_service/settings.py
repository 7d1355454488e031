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
    # The trainer process serving processes forward Train to ("unix:/path"). The supervisor sets it for
    # its workers; empty = this process starts (on the first Train) and owns a trainer of its own.
    trainer_address: str = ""
    # The trainer exits after this many jobs, once idle, and a fresh one takes over (its memory goes
    # back to the system); 0 = never.
    trainer_recycle_jobs: int = 20
    # CPU priority the trainer lowers itself by (nice), so serving keeps the cores it needs.
    trainer_nice: int = 10
    # How long a Train call waits for a trainer process to come up before UNAVAILABLE.
    trainer_start_timeout_seconds: float = 120.0
    # Training on a stored dataset shuffles samples within a buffer of this many (and the order of its
    # blocks every epoch): what a job holds does not grow with the dataset.
    dataset_shuffle_buffer: int = 65_536
    # A scaler without partial_fit (robust) fitted on a dataset's training split gets the split in one
    # Fit call; past this many MiB (as float64) the Train is refused with FAILED_PRECONDITION. Keep it
    # below max_message_mb.
    dataset_in_memory_fit_mb: int = 32


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
