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
from typing import Any, Literal, TypeVar, get_args, get_origin, get_type_hints

from service_common.stores import S3Location, parse_store

S = TypeVar("S", bound="ServerSettings")
EventLoopKind = Literal["uvloop", "asyncio"]
T = TypeVar("T")


def setting(default: T, meaning: str) -> T:
    """A settings field: its default and what it means (the flag's --help text)."""
    return dataclasses.field(default=default, metadata={"help": meaning})


@dataclasses.dataclass(frozen=True)
class ServerSettings:
    """What both services share; each service subclasses it and sets ENV_PREFIX."""

    ENV_PREFIX = "LSTM_"

    host: str = setting("127.0.0.1", "address to bind; 'unix:/path' binds a unix socket instead of a port")
    port: int = setting(0, "port to bind (0 = a free port, printed on start)")
    store: Path | S3Location = setting(
        Path("./store"),
        "the store every process and instance shares: a directory, or s3://bucket/prefix (an S3-API "
        "bucket; endpoint and credentials from the AWS_* environment variables; needs a signing key)",
    )
    max_message_mb: int = setting(64, "largest request or reply message, MiB")
    max_concurrent_rpcs: int = setting(
        4096,
        "calls in flight at once per worker process, idle streams included (on grpc.aio an idle stream "
        "costs no thread); past it new calls get RESOURCE_EXHAUSTED",
    )
    workers: int = setting(
        0,
        "server processes sharing the port (SO_REUSEPORT); 0 = the usable cores (CPU affinity mask and "
        "cgroup quota); 1 = one process, no supervisor",
    )
    executor_threads: int = setting(
        16, "threads per process for blocking work handed off the event loop (sklearn, disk, Keras)"
    )
    event_loop: EventLoopKind = setting(
        "uvloop",
        "the event loop serving calls: 'uvloop' (libuv's, as MLServer runs; measured in docs/performance.md) "
        "or 'asyncio' (the standard library's)",
    )
    reuse_port: bool = setting(
        False, "share the port with other processes (SO_REUSEPORT); the supervisor sets it for its workers"
    )
    grace_seconds: float = setting(10.0, "on SIGTERM: seconds calls in flight get to finish")
    drain_seconds: float = setting(
        0.0, "on SIGTERM: seconds of NOT_SERVING health while still answering, before new calls are refused"
    )
    log_level: str = setting("INFO", "DEBUG, INFO, WARNING or ERROR")
    signing_key: str = setting(
        "", "HMAC key for artifacts; empty = the key file, else <store>/.signing-key (directory stores only)"
    )
    signing_key_file: str = setting("", "file holding the HMAC key for artifacts")
    auth_token: str = setting(
        "",
        "bearer tokens callers must send, comma-separated for rotation (health is exempt); "
        "none set = no auth",
    )
    auth_token_file: str = setting("", "file of accepted bearer tokens, one per line")
    tls_cert: str = setting("", "PEM certificate chain; with --tls-key turns TLS on")
    tls_key: str = setting("", "PEM key of the TLS certificate")
    tls_client_ca: str = setting("", "PEM CA that client certificates must be signed by (mutual TLS)")
    metrics_host: str = setting("127.0.0.1", "address of the Prometheus endpoint")
    metrics_port: int = setting(
        -1,
        "port of the Prometheus endpoint http://metrics_host:metrics_port/metrics; 0 = a free port, -1 = off",
    )
    store_poll_seconds: float = setting(
        1.0,
        "seconds between looks at the store for versions other processes committed, deleted or "
        "unloaded (as TF Serving's --file_system_poll_wait_seconds); 0 = only on a cache miss",
    )
    store_lease_seconds: float = setting(
        30.0,
        "S3 store: a version being produced (training) is a lease its owner renews every third of this; "
        "one not renewed for this long is dead (its process died) for every replica",
    )

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


def _one_of(choices: tuple[str, ...]) -> Any:
    def convert(text: str) -> str:
        if text not in choices:
            raise ValueError(f"expected one of {', '.join(choices)}, got {text!r}")
        return text

    return convert


def _converter(kind: Any) -> Any:
    if get_origin(kind) is Literal:
        return _one_of(get_args(kind))
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
        choices = get_args(hints[field.name]) if get_origin(hints[field.name]) is Literal else None
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
            # A choice: argparse checks it and names the choices; the environment goes through convert.
            type=str if choices else convert,
            choices=choices,
            default=default,
            help=f"{field.metadata.get('help', '')} (env {env_name}, default {field.default!s})",
        )
    namespace = parser.parse_args(argv)
    for field in dataclasses.fields(cls):
        values[field.name] = getattr(namespace, field.name)
    return cls(**values)
