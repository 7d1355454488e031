"""Prometheus metrics for one server: RPCs by method and status code, plus gauges the services feed.

Each server owns its own ``CollectorRegistry`` (never the process-global one), so several servers in
one process, as in the tests, keep separate figures. ``observe_rpc`` is one of the call pipeline's observers;
``serve_http`` exposes the registry at ``http://host:port/metrics``.
"""

from __future__ import annotations

import contextlib
import logging
import os
import threading
from collections.abc import Callable, Iterator
from typing import Any
from wsgiref.simple_server import WSGIServer

from prometheus_client import (
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    PlatformCollector,
    ProcessCollector,
    start_http_server,
)

log = logging.getLogger(__name__)

LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 300)
BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024, 4096, 16384, 65536)


def split_method(full_method: str) -> tuple[str, str]:
    """'/pkg.Service/Method' -> ('pkg.Service', 'Method')."""
    service, _, method = full_method.lstrip("/").rpartition("/")
    return service or "unknown", method or full_method


class ServiceMetrics:
    """Every metric of one server, in a registry of its own."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        ProcessCollector(registry=self.registry)
        PlatformCollector(registry=self.registry)
        self.rpcs = Counter(
            "grpc_server_handled",
            "RPCs finished, by service, method and status code.",
            ["grpc_service", "grpc_method", "grpc_code"],
            registry=self.registry,
        )
        self.latency = Histogram(
            "grpc_server_handling_seconds",
            "Time from the handler's start to its end, by service, method and status code.",
            ["grpc_service", "grpc_method", "grpc_code"],
            buckets=LATENCY_BUCKETS,
            registry=self.registry,
        )
        self.batch_size = Histogram(
            "lstm_batch_rows",
            "Rows per batch handed to a model or scaler, by operation (predict, transform, fit, train, ...).",
            ["operation"],
            buckets=BATCH_BUCKETS,
            registry=self.registry,
        )
        # Under a supervisor (prometheus_client's multiprocess mode) gauges are combined across the
        # live worker processes: running jobs add up, every worker sees the same store.
        self.multiprocess = bool(os.environ.get("PROMETHEUS_MULTIPROC_DIR"))
        self.training_jobs = Gauge(
            "lstm_training_jobs_running",
            "Training jobs running now.",
            registry=self.registry,
            multiprocess_mode="livesum",
        )
        self.artifacts = Gauge(
            "lstm_artifacts_stored",
            "Artifact versions in the store, by kind (scaler, model).",
            ["kind"],
            registry=self.registry,
            multiprocess_mode="livemax",
        )
        self._rpc_children: dict[tuple[str, str], tuple[Any, Any]] = {}
        self._tracking = threading.Event()
        self._http: WSGIServer | None = None
        self._http_thread: threading.Thread | None = None

    # ---- fed by the call pipeline ----

    def observe_rpc(self, method: str, code: str, seconds: float) -> None:
        # labels() takes a lock and builds a key on every call: its children are looked up once per
        # (method, code), which the registered methods and the status codes bound.
        children = self._rpc_children.get((method, code))
        if children is None:
            service, name = split_method(method)
            children = (self.rpcs.labels(service, name, code), self.latency.labels(service, name, code))
            self._rpc_children[(method, code)] = children
        children[0].inc()
        children[1].observe(seconds)

    # ---- fed by the services ----

    def observe_batch(self, operation: str, rows: int) -> None:
        self.batch_size.labels(operation).observe(rows)

    @contextlib.contextmanager
    def training_job(self) -> Iterator[None]:
        """Wrap a training run: the running-jobs gauge goes up for its duration, down however it ends."""
        self.training_jobs.inc()
        try:
            yield
        finally:
            self.training_jobs.dec()

    def track_artifacts(self, kind: str, count: Callable[[], float], every_seconds: float = 1.0) -> None:
        """Read the artifact count from ``count`` at every scrape instead of setting it.

        In multiprocess mode the supervisor reads files, not this process's callbacks: the count is
        written every ``every_seconds`` instead, by a daemon thread.
        """
        gauge = self.artifacts.labels(kind)
        if not self.multiprocess:
            gauge.set_function(count)
            return

        def refresh() -> None:
            while not self._tracking.wait(every_seconds):
                with contextlib.suppress(Exception):
                    gauge.set(count())

        gauge.set(count())
        threading.Thread(target=refresh, name=f"track-{kind}", daemon=True).start()

    # ---- HTTP endpoint ----

    def serve_http(self, host: str, port: int) -> int:
        """Serve /metrics on host:port (0 = a free port) in a daemon thread; returns the bound port."""
        if self._http is not None:
            raise RuntimeError("the metrics endpoint is already running")
        self._http, self._http_thread = start_http_server(port, addr=host, registry=self.registry)
        bound = int(self._http.server_port)
        log.info("metrics on http://%s:%d/metrics", host, bound)
        return bound

    def stop_http(self) -> None:
        self._tracking.set()
        if self._http is None:
            return
        self._http.shutdown()
        self._http.server_close()
        if self._http_thread is not None:
            self._http_thread.join(timeout=5)
        self._http = None
        self._http_thread = None
