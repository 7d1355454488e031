"""Worker processes on one port: a supervisor that starts them, restarts the ones that die, and drains
them all on SIGTERM.

As grpc's ``examples/python/multiprocessing``: the supervisor creates no gRPC object (gRPC and
TensorFlow are not fork-safe, so children are *spawned*, fresh interpreters), reserves the port with
SO_REUSEPORT, and every worker binds the same port with SO_REUSEPORT; the kernel spreads connections
over them. Prometheus metrics run in prometheus_client's multiprocess mode: every worker writes its
samples to files in a directory the supervisor owns, and the supervisor's /metrics endpoint adds them up.

Imports no grpc and no prometheus_client at module level: the multiprocess directory must be set in the
environment before prometheus_client is first imported.
"""

from __future__ import annotations

import contextlib
import ctypes
import dataclasses
import importlib
import logging
import math
import multiprocessing
import multiprocessing.connection
import os
import shutil
import signal
import socket
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

log = logging.getLogger("lstm_stack.supervisor")

MULTIPROC_ENV = "PROMETHEUS_MULTIPROC_DIR"
# A role whose processes die this many times in a row before becoming ready is broken, not unlucky.
MAX_START_FAILURES = 5
RESTART_BACKOFF_SECONDS = 0.5
STOP_MARGIN_SECONDS = 10.0
PR_SET_PDEATHSIG = 1
spawn_context = multiprocessing.get_context("spawn")


def usable_cores() -> int:
    """Cores this process may run on: the CPU affinity mask, capped by a cgroup CPU quota if any."""
    cores = len(os.sched_getaffinity(0))
    quota = _cgroup_quota()
    if quota is not None:
        cores = min(cores, max(1, math.ceil(quota)))
    return max(1, cores)


def _cgroup_quota() -> float | None:
    """CPUs allowed by the cgroup (v2 cpu.max, else v1 cfs quota/period); None when unlimited."""
    with contextlib.suppress(OSError, ValueError):
        quota, period = Path("/sys/fs/cgroup/cpu.max").read_text().split()
        return None if quota == "max" else int(quota) / int(period)
    with contextlib.suppress(OSError, ValueError):
        quota_us = int(Path("/sys/fs/cgroup/cpu/cpu.cfs_quota_us").read_text())
        period_us = int(Path("/sys/fs/cgroup/cpu/cpu.cfs_period_us").read_text())
        return None if quota_us <= 0 else quota_us / period_us
    return None


def worker_count(requested: int) -> int:
    """``requested`` processes, or the usable cores when it is 0."""
    if requested < 0:
        raise ValueError(f"workers must be >= 0 (0 = the usable cores), got {requested}")
    return requested or usable_cores()


@contextlib.contextmanager
def reserved_port(host: str, port: int) -> Iterator[int]:
    """Hold ``host:port`` (0 = a free port) with SO_REUSEPORT, not listening, so workers can share it
    and nobody else takes it while the supervisor lives."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
    try:
        sock.bind((host, port))
        yield sock.getsockname()[1]
    finally:
        sock.close()


@dataclass
class Role:
    """``count`` processes that each run ``factory(settings)`` -> (ManagedServer, port) and serve it.

    ``factory`` is a "module:function" path (children are spawned: they import it afresh).
    """

    name: str
    factory: str
    settings: Any
    count: int = 1


@dataclass
class _Slot:
    role: Role
    index: int
    process: Any = None
    ready: bool = False
    failures: int = 0
    conn: Any = None

    @property
    def label(self) -> str:
        return f"{self.role.name} {self.index}"


class Supervisor:
    """Runs every role's processes until SIGTERM/SIGINT; restarts a process that dies."""

    def __init__(self, service: str, roles: list[Role], grace_seconds: float, drain_seconds: float) -> None:
        self.service = service
        self.roles = roles
        self.grace_seconds = grace_seconds
        self.drain_seconds = drain_seconds
        self._slots = [_Slot(role, i) for role in roles for i in range(role.count)]
        self._stopping = threading.Event()
        self._announced = False

    # ---- lifecycle -------------------------------------------------------------------------------

    def run(self, on_all_ready: Callable[[], None] = lambda: None) -> int:
        signal.signal(signal.SIGTERM, self._request_stop)
        signal.signal(signal.SIGINT, self._request_stop)
        for slot in self._slots:
            self._start(slot)
        while not self._stopping.is_set():
            self._watch(on_all_ready)
            if any(s.failures >= MAX_START_FAILURES for s in self._slots):
                log.error("%s: a process keeps dying before it is ready; giving up", self.service)
                self._stop_all()
                return 1
        self._stop_all()
        log.info("%s stopped", self.service)
        return 0

    def _request_stop(self, signum: int, _frame: Any) -> None:
        log.info("%s: received %s, draining every process", self.service, signal.Signals(signum).name)
        self._stopping.set()

    def _start(self, slot: _Slot) -> None:
        parent, child = spawn_context.Pipe(duplex=False)
        process = spawn_context.Process(
            target=child_main,
            args=(slot.role.factory, slot.role.settings, child, f"{self.service} {slot.label}"),
            name=f"{self.service}-{slot.role.name}-{slot.index}",
            daemon=False,
        )
        process.start()
        child.close()
        slot.process, slot.conn, slot.ready = process, parent, False

    def _watch(self, on_all_ready: Callable[[], None]) -> None:
        waitables: list[Any] = [s.process.sentinel for s in self._slots]
        waitables += [s.conn for s in self._slots if not s.ready]
        multiprocessing.connection.wait(waitables, timeout=0.5)
        for slot in self._slots:
            if not slot.ready and slot.conn.poll():
                with contextlib.suppress(EOFError, OSError):
                    slot.conn.recv()
                    slot.ready, slot.failures = True, 0
                    log.info("%s: %s ready (pid %d)", self.service, slot.label, slot.process.pid)
            if not slot.process.is_alive() and not self._stopping.is_set():
                self._restart(slot)
        if not self._announced and all(s.ready for s in self._slots):
            self._announced = True
            on_all_ready()

    def _restart(self, slot: _Slot) -> None:
        code = slot.process.exitcode
        _mark_dead(slot.process.pid)
        if not slot.ready:
            slot.failures += 1
        log.warning(
            "%s: %s (pid %d) exited with %s; starting a new one",
            self.service,
            slot.label,
            slot.process.pid,
            code,
        )
        slot.conn.close()
        time.sleep(RESTART_BACKOFF_SECONDS * min(slot.failures, 4))
        self._start(slot)

    def _stop_all(self) -> None:
        alive = [s for s in self._slots if s.process is not None and s.process.is_alive()]
        for slot in alive:
            with contextlib.suppress(ProcessLookupError):
                os.kill(slot.process.pid, signal.SIGTERM)
        deadline = time.monotonic() + self.drain_seconds + self.grace_seconds + STOP_MARGIN_SECONDS
        for slot in alive:
            slot.process.join(max(0.0, deadline - time.monotonic()))
            if slot.process.is_alive():
                log.error("%s: %s did not stop in time; killing it", self.service, slot.label)
                slot.process.kill()
                slot.process.join(5)
        for slot in self._slots:
            if slot.conn is not None:
                slot.conn.close()


def _mark_dead(pid: int) -> None:
    if os.environ.get(MULTIPROC_ENV):
        from prometheus_client import multiprocess

        multiprocess.mark_process_dead(pid)


def _die_with_parent() -> None:
    """Linux: SIGTERM this process as soon as its parent dies (a SIGKILLed supervisor included)."""
    with contextlib.suppress(OSError, AttributeError):
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(PR_SET_PDEATHSIG, signal.SIGTERM)


def child_main(factory_path: str, settings: Any, ready: Any, label: str) -> None:
    """A spawned child: build its server, serve until SIGTERM, exit with the supervisor if it dies."""
    from service_common.server import configure_logging, serve

    configure_logging(settings.log_level)
    parent = os.getppid()
    _die_with_parent()

    def orphaned() -> None:
        while True:
            time.sleep(1.0)
            if os.getppid() != parent:
                log.warning("%s: the supervisor is gone; stopping", label)
                os.kill(os.getpid(), signal.SIGTERM)
                return

    threading.Thread(target=orphaned, name="orphan-watch", daemon=True).start()
    module, _, function = factory_path.partition(":")
    factory = getattr(importlib.import_module(module), function)
    managed, port = factory(settings)

    def announce() -> None:
        # An owner that watches readiness some other way (the trainer's channel) closed its end.
        with contextlib.suppress(OSError):
            ready.send(("ready", os.getpid(), port))
        ready.close()

    serve(managed, port, settings, label, on_ready=announce)


@contextlib.contextmanager
def multiprocess_metrics() -> Iterator[Path]:
    """A fresh prometheus_client multiprocess directory in the environment (inherited by children)."""
    directory = Path(tempfile.mkdtemp(prefix="lstm-metrics-"))
    os.environ[MULTIPROC_ENV] = str(directory)
    try:
        yield directory
    finally:
        os.environ.pop(MULTIPROC_ENV, None)
        shutil.rmtree(directory, ignore_errors=True)


def serve_multiprocess_metrics(host: str, port: int) -> tuple[Any, int]:
    """/metrics adding up every worker's samples; returns (http server, bound port)."""
    from prometheus_client import CollectorRegistry, multiprocess, start_http_server

    registry = CollectorRegistry()
    multiprocess.MultiProcessCollector(registry)
    server, _thread = start_http_server(port, addr=host, registry=registry)
    return server, int(server.server_port)


def run_workers(
    service: str,
    settings: Any,
    worker_factory: str,
    extra_roles: list[Role] | None = None,
) -> int:
    """``settings.workers`` processes of ``worker_factory`` on one port (plus ``extra_roles``), supervised."""
    count = worker_count(settings.workers)
    with multiprocess_metrics(), reserved_port(settings.host, settings.port) as port:
        worker_settings = dataclasses.replace(
            settings, port=port, reuse_port=True, workers=1, metrics_port=-1
        )
        roles = [*(extra_roles or []), Role("worker", worker_factory, worker_settings, count)]
        metrics_server = None
        if settings.metrics_port >= 0:
            metrics_server, metrics_port = serve_multiprocess_metrics(
                settings.metrics_host, settings.metrics_port
            )
            log.info("metrics on http://%s:%d/metrics (all workers)", settings.metrics_host, metrics_port)
        supervisor = Supervisor(service, roles, settings.grace_seconds, settings.drain_seconds)

        def announce() -> None:
            log.info("%s listening on %s:%d (%d workers)", service, settings.host, port, count)

        try:
            return supervisor.run(announce)
        finally:
            if metrics_server is not None:
                metrics_server.shutdown()
                metrics_server.server_close()
