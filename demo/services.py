"""Run both services as local subprocesses for the demo: free loopback ports, file stores, clean stop."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path
from types import TracebackType

from lstm_stack_client import LstmStackError, connect

REPO_ROOT = Path(__file__).resolve().parent.parent


def free_port() -> int:
    """A port the OS just handed out on 127.0.0.1; the service binds it right after."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


class ServiceProcess:
    def __init__(self, name: str, args: list[str], log_path: Path):
        self.name = name
        self.log_path = log_path
        log_path.parent.mkdir(parents=True, exist_ok=True)
        self._log = log_path.open("ab")
        env = dict(os.environ)
        env.setdefault("PYTHONUNBUFFERED", "1")
        env.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
        self.process = subprocess.Popen(
            [sys.executable, "-m", *args],
            cwd=REPO_ROOT,
            env=env,
            stdout=self._log,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            # Own process group: a Ctrl-C in the terminal reaches the demo, which then stops us in order.
            start_new_session=True,
        )

    def check_alive(self) -> None:
        code = self.process.poll()
        if code is not None:
            raise RuntimeError(f"{self.name} exited with code {code} during start-up:\n{self.log_tail()}")

    def log_tail(self, lines: int = 25) -> str:
        try:
            text = self.log_path.read_text(encoding="utf-8", errors="replace")
        except OSError:
            return "(no log)"
        return "\n".join("    " + line for line in text.splitlines()[-lines:])

    def stop(self, timeout: float = 20.0) -> int:
        """SIGTERM (the services shut down gracefully on it), then SIGKILL if it hangs."""
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(timeout)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        self._log.close()
        return self.process.returncode


class LocalStack:
    """Scaler and model services on free 127.0.0.1 ports with stores under ``root``."""

    def __init__(self, root: Path):
        self.root = root
        self.scaler_address = ""
        self.model_address = ""
        self.processes: list[ServiceProcess] = []

    def start(self, timeout: float = 180.0) -> None:
        scaler_port, model_port = free_port(), free_port()
        self.scaler_address = f"127.0.0.1:{scaler_port}"
        self.model_address = f"127.0.0.1:{model_port}"
        logs = self.root / "logs"
        scaler = ServiceProcess(
            "scaler service",
            [
                "scaler_service",
                "--host",
                "127.0.0.1",
                "--port",
                str(scaler_port),
                "--store",
                str(self.root / "scaler-store"),
            ],
            logs / "scaler.log",
        )
        self.processes.append(scaler)
        model = ServiceProcess(
            "model service",
            [
                "model_service",
                "--host",
                "127.0.0.1",
                "--port",
                str(model_port),
                "--store",
                str(self.root / "model-store"),
                "--scaler-address",
                self.scaler_address,
            ],
            logs / "model.log",
        )
        self.processes.append(model)
        self._wait_serving(timeout)

    def _wait_serving(self, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        with connect(scaler_address=self.scaler_address, model_address=self.model_address) as client:
            for process, service in ((self.processes[0], client.scaler), (self.processes[1], client.model)):
                while True:
                    process.check_alive()
                    try:
                        if service.health(timeout=1.0) == "SERVING":
                            break
                    except LstmStackError:
                        pass
                    if time.monotonic() > deadline:
                        raise RuntimeError(
                            f"{process.name} not SERVING after {timeout:.0f}s:\n{process.log_tail()}"
                        )
                    time.sleep(0.25)

    def stop(self) -> list[int]:
        # The model service first: it is the scaler service's client.
        return [process.stop() for process in reversed(self.processes)]

    def __enter__(self) -> LocalStack:
        try:
            self.start()
        except BaseException:
            self.stop()
            raise
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stop()
