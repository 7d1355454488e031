"""The real services as subprocesses (``python -m scaler_service ...``) on 127.0.0.1, for system tests."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc
from prometheus_client.parser import text_string_to_metric_families

from demo.services import free_port
from service_common.channels import message_size_options, open_channel
from tests.harness import TEST_MAX_MESSAGE_BYTES

REPO = Path(__file__).resolve().parents[2]
# The model service imports TensorFlow on start; on 2 busy cores that can take a while.
START_TIMEOUT = 120.0
CHANNEL_OPTIONS = [
    *message_size_options(TEST_MAX_MESSAGE_BYTES),
    # Services here restart within seconds: reconnect fast instead of backing off for up to 2 minutes.
    ("grpc.initial_reconnect_backoff_ms", 100),
    ("grpc.min_reconnect_backoff_ms", 100),
    ("grpc.max_reconnect_backoff_ms", 500),
]


def child_env(**extra: str) -> dict[str, str]:
    env = dict(os.environ)
    # No prefix settings leak in from the developer's shell.
    for name in list(env):
        if name.startswith(("LSTM_SCALER_", "LSTM_MODEL_")):
            del env[name]
    env.update(
        # One server process each unless a test passes --workers (the flag beats the environment).
        LSTM_MODEL_WORKERS="1",
        LSTM_SCALER_WORKERS="1",
        PYTHONUNBUFFERED="1",
        TF_CPP_MIN_LOG_LEVEL="2",
        CUDA_VISIBLE_DEVICES="",
        PYTHONPATH=str(REPO) + os.pathsep + env.get("PYTHONPATH", ""),
    )
    env.update(extra)
    return env


class ServiceProcess:
    """One service process; restartable on the same port and store."""

    def __init__(
        self,
        module: str,
        store: Path | str,  # a directory, or an s3://bucket/prefix URL (tests/cluster)
        log_dir: Path,
        extra_args: list[str] | None = None,
        env: dict[str, str] | None = None,
        channel_kwargs: dict[str, Any] | None = None,
        port: int | None = None,
        metrics: bool = False,
    ) -> None:
        self.module = module
        self.store = store
        self.port = port or free_port()
        # The Prometheus endpoint, when asked for: --metrics-port 0, the bound port read from the log.
        self.metrics = metrics
        self.metrics_port: int | None = None
        self.extra_args = list(extra_args or [])
        self.env = env or child_env()
        self.channel_kwargs = dict(channel_kwargs or {})
        self.log_dir = log_dir
        self.cwd = REPO  # the code that runs: `-m module` imports from here first
        self.proc: subprocess.Popen[bytes] | None = None
        self.starts = 0

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"

    @property
    def log_path(self) -> Path:
        return self.log_dir / f"{self.module}-{self.port}.log"

    def command(self) -> list[str]:
        return [
            sys.executable,
            "-m",
            self.module,
            "--host",
            "127.0.0.1",
            "--port",
            str(self.port),
            "--store",
            str(self.store),
            *(["--metrics-port", "0"] if self.metrics else []),
            *self.extra_args,
        ]

    def start(self, wait: bool = True) -> ServiceProcess:
        assert self.proc is None or self.proc.poll() is not None, "already running"
        self.log_dir.mkdir(parents=True, exist_ok=True)
        self.starts += 1
        with open(self.log_path, "ab") as log:
            log.write(f"\n===== start {self.starts}: {' '.join(self.command())}\n".encode())
            log.flush()
            self.proc = subprocess.Popen(
                self.command(), cwd=self.cwd, env=self.env, stdout=log, stderr=subprocess.STDOUT
            )
        if wait:
            self.wait_serving()
        return self

    def channel(self, **overrides: Any) -> grpc.Channel:
        kwargs = {**self.channel_kwargs, **overrides}
        return open_channel(self.address, options=CHANNEL_OPTIONS, **kwargs)

    def health(self, timeout: float = 2.0) -> str:
        with self.channel() as channel:
            reply = health_pb2_grpc.HealthStub(channel).Check(
                health_pb2.HealthCheckRequest(), timeout=timeout
            )
        return health_pb2.HealthCheckResponse.ServingStatus.Name(reply.status)

    def wait_serving(self, timeout: float = START_TIMEOUT) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc is None or self.proc.poll() is not None:
                raise AssertionError(f"{self.module} exited early:\n{self.log_tail()}")
            try:
                if self.health(timeout=1.0) == "SERVING" and self._every_worker_ready():
                    if self.metrics:
                        self.metrics_port = self._logged_metrics_port()
                    return
            except grpc.RpcError:
                pass
            time.sleep(0.1)
        raise AssertionError(f"{self.module} not SERVING after {timeout}s:\n{self.log_tail()}")

    def _this_start_log(self) -> str:
        return self.log_path.read_text(errors="replace").rsplit("===== start ", 1)[-1]

    def _every_worker_ready(self) -> bool:
        """With ``--workers N`` (N > 1) health answers once one worker serves: wait for the supervisor
        to announce all of them."""
        args = self.extra_args
        workers = int(args[args.index("--workers") + 1]) if "--workers" in args else 1
        if workers <= 1:
            return True
        return re.search(rf"listening on \S+ \({workers} workers\)", self._this_start_log()) is not None

    def _logged_metrics_port(self) -> int:
        this_start = self._this_start_log()
        found = re.findall(r"metrics on http://127\.0\.0\.1:(\d+)/metrics", this_start)
        assert found, f"{self.module} logged no metrics endpoint:\n{self.log_tail()}"
        return int(found[-1])

    def scrape(self) -> dict[tuple[str, frozenset[tuple[str, str]]], float]:
        """Every sample of the /metrics endpoint: {(name, labels): value}."""
        assert self.metrics_port, f"{self.module} was started without a metrics endpoint"
        url = f"http://127.0.0.1:{self.metrics_port}/metrics"
        with urllib.request.urlopen(url, timeout=10) as response:
            text = response.read().decode()
        return {
            (sample.name, frozenset(sample.labels.items())): sample.value
            for family in text_string_to_metric_families(text)
            for sample in family.samples
        }

    def send(self, sig: signal.Signals) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(sig)

    def kill(self) -> None:
        """SIGKILL: no handler runs, no cleanup happens, exactly like a power cut for the process."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(timeout=30)

    def wait_exit(self, timeout: float) -> int:
        assert self.proc is not None
        return self.proc.wait(timeout=timeout)

    def stop(self) -> None:
        if self.proc is None or self.proc.poll() is not None:
            return
        self.proc.terminate()
        try:
            self.proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(timeout=10)

    def running(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def ready_pids(self, role: str = "worker") -> list[int]:
        """Pids of the processes the supervisor reported ready, in order, for this start."""
        this_start = self._this_start_log()
        return [int(pid) for pid in re.findall(rf": {role} \d+ ready \(pid (\d+)\)", this_start)]

    def log_tail(self, lines: int = 60) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return "(no log)"


@contextmanager
def running(*services: ServiceProcess) -> Iterator[tuple[ServiceProcess, ...]]:
    """Start in order (scaler before model), stop all at the end whatever happens."""
    try:
        for service in services:
            service.start()
        yield services
    finally:
        for service in reversed(services):
            service.stop()


def scaler_process(store: Path | str, log_dir: Path, *extra: str, **kwargs: Any) -> ServiceProcess:
    return ServiceProcess("scaler_service", store, log_dir, list(extra), **kwargs)


def model_process(
    store: Path | str, log_dir: Path, scaler: ServiceProcess, *extra: str, **kwargs: Any
) -> ServiceProcess:
    return ServiceProcess(
        "model_service", store, log_dir, ["--scaler-address", scaler.address, *extra], **kwargs
    )
