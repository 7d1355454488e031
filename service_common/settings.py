"""Settings from command-line flags and environment variables with a per-service prefix.

Every field of a settings dataclass becomes a flag (``--max-message-mb``) and an environment
variable (``LSTM_SCALER_MAX_MESSAGE_MB``); a flag beats the environment, which beats the default.
"""

from __future__ import annotations

import argparse
import dataclasses
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any, TypeVar, get_type_hints

from service_common.stores import S3Location, parse_store

S = TypeVar("S", bound="ServerSettings")


@dataclasses.dataclass(frozen=True)
class ServerSettings:
    """What both services share; each service subclasses it and sets ENV_PREFIX."""

    ENV_PREFIX = "LSTM_"

    host: str = "127.0.0.1"
    port: int = 0
    # A directory, or s3://bucket/prefix (an S3-API bucket: endpoint and credentials from the AWS_*
    # environment variables, see service_common/stores.py; needs signing_key or signing_key_file).
    store: Path | S3Location = Path("./store")
    max_message_mb: int = 64
    # Calls in flight at once per worker process (idle streams included; on grpc.aio an idle stream
    # costs no thread); past it, new calls get RESOURCE_EXHAUSTED.
    max_concurrent_rpcs: int = 4096
    # Server processes sharing the port (SO_REUSEPORT); 0 = the usable cores (CPU affinity mask and
    # cgroup quota). 1 = one process, no supervisor.
    workers: int = 0
    # Threads per process for blocking work handed off the event loop (sklearn, disk, Keras).
    executor_threads: int = 16
    # Share the port with other processes (SO_REUSEPORT); the supervisor sets it for its workers.
    reuse_port: bool = False
    grace_seconds: float = 10.0
    # On SIGTERM: seconds of NOT_SERVING health while still answering, before new calls are refused.
    drain_seconds: float = 0.0
    log_level: str = "INFO"
    # HMAC key for artifacts; when empty, <store>/.signing-key is used (created on first start; a
    # directory store only).
    signing_key: str = ""
    signing_key_file: str = ""
    # Bearer tokens callers must send (health is exempt); none set = no auth. The setting may list
    # several comma-separated tokens (rotation); the file holds one per line.
    auth_token: str = ""
    auth_token_file: str = ""
    # TLS: certificate chain + key turn it on; a client CA also requires client certificates (mutual TLS).
    tls_cert: str = ""
    tls_key: str = ""
    tls_client_ca: str = ""
    # Prometheus endpoint http://metrics_host:metrics_port/metrics; 0 = a free port, -1 = off.
    metrics_host: str = "127.0.0.1"
    metrics_port: int = -1
    # Seconds between looks at the store for versions other processes committed, deleted or unloaded
    # (as TF Serving's --file_system_poll_wait_seconds); 0 = look only on a cache miss. A call naming an
    # id or version this process has not seen yet always looks at once.
    store_poll_seconds: float = 1.0
    # S3 store: a version being produced (training) is a lease its owner renews every third of this;
    # one not renewed for this long is dead (its process died) for every replica.
    store_lease_seconds: float = 30.0

    @property
    def max_message_bytes(self) -> int:
        return self.max_message_mb * 1024 * 1024

    @property
    def address(self) -> str:
        # host "unix:/path" binds a unix socket (the model service's trainer), no port.
        return self.host if self.host.startswith("unix:") else f"{self.host}:{self.port}"


def _parse_bool(text: str) -> bool:
    lowered = text.strip().lower()
    if lowered in {"1", "true", "yes", "on"}:
        return True
    if lowered in {"0", "false", "no", "off", ""}:
        return False
    raise ValueError(f"expected a boolean, got {text!r}")


def _converter(kind: Any) -> Any:
    if kind is bool:
        return _parse_bool
    if kind is Path:
        return Path
    if kind == Path | S3Location:
        return parse_store
    return kind


def load_settings(cls: type[S], argv: Sequence[str] | None = None, description: str = "") -> S:
    hints = get_type_hints(cls)
    parser = argparse.ArgumentParser(description=description)
    values: dict[str, Any] = {}
    for field in dataclasses.fields(cls):
        convert = _converter(hints[field.name])
        env_name = f"{cls.ENV_PREFIX}{field.name.upper()}"
        default = field.default
        if env_name in os.environ:
            try:
                default = convert(os.environ[env_name])
            except ValueError as exc:
                parser.error(f"{env_name}: {exc}")
        parser.add_argument(
            "--" + field.name.replace("_", "-"),
            dest=field.name,
            type=convert,
            default=default,
            help=f"(env {env_name}, default {field.default!s})",
        )
    namespace = parser.parse_args(argv)
    for field in dataclasses.fields(cls):
        values[field.name] = getattr(namespace, field.name)
    return cls(**values)
