"""One server bootstrap for both services: a grpc.aio server with health, reflection, the call pipeline,
limits and graceful shutdown, on an event loop of its own.

The server runs on a dedicated event-loop thread, so whoever builds it (``python -m``, a test, a
worker process) drives it with plain calls: ``start()``, ``stop(grace)``. Handlers are coroutines; the
blocking work they hand off (sklearn, disk, Keras) runs on the loop's default executor, a thread pool of
``executor_threads``, through ``asyncio.to_thread``. An idle stream costs no thread.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import logging
import signal
import threading
import time
from collections.abc import Awaitable, Callable, Iterable
from typing import Any, TypeVar

import grpc
from grpc_health.v1 import health as grpc_health
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection

from service_common.channels import message_size_options
from service_common.metrics import ServiceMetrics
from service_common.observers import RpcObserver, log_rpc
from service_common.pipeline import CallPipeline
from service_common.security import AuthInterceptor, load_tokens, server_credentials
from service_common.settings import EventLoopKind, ServerSettings
from service_common.shutdown import ShutdownGate

log = logging.getLogger("lstm_stack.server")

# Past grace, grpc.aio's stop cancels what still runs; this much more is allowed for the cancellations
# to unwind before stop gives up waiting (it never hangs).
STOP_MARGIN_SECONDS = 5.0
T = TypeVar("T")


def new_event_loop(kind: EventLoopKind) -> asyncio.AbstractEventLoop:
    """A fresh loop of the kind ``--event-loop`` names."""
    if kind == "uvloop":
        import uvloop  # imported here: only serving processes run a loop

        return uvloop.new_event_loop()
    return asyncio.new_event_loop()


class EventLoopThread:
    """An asyncio loop running forever in a daemon thread; ``run`` executes a coroutine on it."""

    def __init__(self, name: str, executor_threads: int, kind: EventLoopKind = "uvloop") -> None:
        self.loop = new_event_loop(kind)
        self.loop.set_default_executor(
            concurrent.futures.ThreadPoolExecutor(max_workers=executor_threads, thread_name_prefix="blocking")
        )
        self._thread = threading.Thread(target=self.loop.run_forever, name=name, daemon=True)
        self._thread.start()

    def run(self, coroutine: Awaitable[T], timeout: float | None = None) -> T:
        return asyncio.run_coroutine_threadsafe(coroutine, self.loop).result(timeout)  # type: ignore[arg-type]

    def close(self) -> None:
        if not self.loop.is_running():
            return

        async def shutdown_executor() -> None:
            await self.loop.shutdown_default_executor()

        try:
            self.run(shutdown_executor(), timeout=STOP_MARGIN_SECONDS)
        except (TimeoutError, concurrent.futures.TimeoutError):
            log.warning("blocking work still running at shutdown; leaving it to the process exit")
        self.loop.call_soon_threadsafe(self.loop.stop)
        self._thread.join(timeout=STOP_MARGIN_SECONDS)


class ManagedServer:
    """A started-or-not grpc.aio server, its loop, its health state and what to close on shutdown."""

    def __init__(
        self,
        loop: EventLoopThread,
        server: grpc.aio.Server,
        health_servicer: Any,
        services: list[str],
        metrics: ServiceMetrics | None = None,
        gate: ShutdownGate | None = None,
    ):
        self.loop = loop
        self.grpc_server = server
        self.health = health_servicer
        self.services = services
        # Services feed their gauges here (batch sizes, training jobs, artifacts stored).
        self.metrics = metrics or ServiceMetrics()
        # Port of the /metrics HTTP endpoint, None when it is off.
        self.metrics_port: int | None = None
        self._gate = gate
        self._on_start: list[Callable[[], None]] = []
        self._on_stop: list[Callable[[], None]] = []
        self._stop_lock = threading.Lock()
        self._stopped = threading.Event()

    def on_start(self, callback: Callable[[], None]) -> None:
        """Run ``callback`` (in the caller's thread) right before the port starts accepting calls."""
        self._on_start.append(callback)

    def on_stop(self, callback: Callable[[], None]) -> None:
        self._on_stop.append(callback)

    def set_health(self, service: str, status: int) -> None:
        """Set one service's health status (a health_pb2.HealthCheckResponse.ServingStatus)."""
        self.loop.run(self.health.set(service, status))

    def start(self) -> None:
        for callback in self._on_start:
            callback()
        self.loop.run(self._start())

    async def _start(self) -> None:
        await self.grpc_server.start()
        for name in ["", *self.services]:
            await self.health.set(name, health_pb2.HealthCheckResponse.SERVING)

    def stop(self, grace: float | None = None, drain: float = 0.0) -> threading.Event:
        """Health NOT_SERVING first, then refuse new calls and let in-flight ones finish within grace.

        ``drain`` seconds pass between the two, still serving, so balancers polling health stop sending.
        New calls then get UNAVAILABLE while in-flight ones finish; whatever still runs after ``grace``
        seconds is cancelled. Always returns within drain + grace + STOP_MARGIN_SECONDS (twice that at
        worst, when grpc itself does not finish cancelling): a stuck handler never holds the process.
        """
        with self._stop_lock:
            if self._stopped.is_set():
                return self._stopped
            self._stopped.set()
        budget = (drain or 0.0) + (grace or 0.0) + STOP_MARGIN_SECONDS
        try:
            self.loop.run(self._stop(grace or 0.0, drain), timeout=budget + STOP_MARGIN_SECONDS)
        except (TimeoutError, concurrent.futures.TimeoutError):
            log.error("the server did not stop within %.1fs; closing what is left", budget)
        for callback in reversed(self._on_stop):
            try:
                callback()
            except Exception:  # noqa: BLE001 - shutdown goes on
                log.exception("shutdown hook failed")
        self.loop.close()
        # Last, so operators can still scrape while in-flight calls drain.
        self.metrics.stop_http()
        return self._stopped

    async def _stop(self, grace: float, drain: float) -> None:
        await self.health.enter_graceful_shutdown()
        if drain > 0:
            await asyncio.sleep(drain)
        if self._gate is not None and grace:
            started = time.monotonic()
            self._gate.close()
            if not await self._gate.wait_quiet(grace):
                log.warning("calls still running or arriving after the %.1fs grace; cancelling them", grace)
            grace = max(0.0, grace - (time.monotonic() - started))
        try:
            await asyncio.wait_for(self.grpc_server.stop(grace), grace + STOP_MARGIN_SECONDS)
        except TimeoutError:
            log.error("grpc did not finish stopping %.1fs after the grace; going on", STOP_MARGIN_SECONDS)

    def wait_for_termination(self, timeout: float | None = None) -> bool:
        return self._stopped.wait(timeout)


def build_server(
    settings: ServerSettings,
    register: Callable[[grpc.aio.Server], Iterable[str]],
    interceptors: Iterable[grpc.aio.ServerInterceptor] = (),
    observers: Iterable[RpcObserver] = (),
    metrics: ServiceMetrics | None = None,
    loop: EventLoopThread | None = None,
) -> tuple[ManagedServer, int]:
    """Create a server with the shared plumbing; ``register`` adds servicers and returns their full names.

    From the settings: bearer-token auth when a token is configured, TLS when a certificate and key
    are set (mutual TLS with a client CA), RPC metrics always, and their HTTP endpoint unless
    ``metrics_port`` is -1. Pass ``metrics`` when the servicers feed it too (made before the server),
    and ``loop`` when they need the server's loop before it exists.
    """
    credentials = _tls_credentials(settings)
    tokens = load_tokens(settings.auth_token, settings.auth_token_file)
    metrics = metrics or ServiceMetrics()
    loop = loop or EventLoopThread(f"{settings.port}-loop", settings.executor_threads, settings.event_loop)
    try:
        return loop.run(
            _build(
                settings, register, list(interceptors), list(observers), metrics, loop, tokens, credentials
            )
        )
    except BaseException:
        loop.close()
        raise


async def _build(
    settings: ServerSettings,
    register: Callable[[grpc.aio.Server], Iterable[str]],
    interceptors: list[grpc.aio.ServerInterceptor],
    observers: list[RpcObserver],
    metrics: ServiceMetrics,
    loop: EventLoopThread,
    tokens: list[str],
    credentials: grpc.ServerCredentials | None,
) -> tuple[ManagedServer, int]:
    # Every handler, health and reflection included, is wrapped by the pipeline as it is registered;
    # auth refusals too, so refused calls (UNAUTHENTICATED, UNAVAILABLE) are logged and counted.
    gate = ShutdownGate()
    pipeline = CallPipeline([log_rpc, metrics.observe_rpc, *observers], gate)
    all_interceptors: list[grpc.aio.ServerInterceptor] = []
    if tokens:
        all_interceptors.append(AuthInterceptor(tokens, refused=pipeline.refused))
    all_interceptors.extend(interceptors)
    raw_server = grpc.aio.server(
        interceptors=all_interceptors or None,
        options=server_options(settings),
        maximum_concurrent_rpcs=settings.max_concurrent_rpcs,
    )
    server = pipeline.server(raw_server)
    services = list(register(server))
    health_servicer = grpc_health.aio.HealthServicer()
    health_pb2_grpc.add_HealthServicer_to_server(health_servicer, server)
    reflection.enable_server_reflection(
        [*services, health_pb2.DESCRIPTOR.services_by_name["Health"].full_name, reflection.SERVICE_NAME],
        server,
    )
    if credentials is None:
        port = server.add_insecure_port(settings.address)
    else:
        port = server.add_secure_port(settings.address, credentials)
    if port == 0:
        raise OSError(f"could not bind {settings.address}")
    managed = ManagedServer(loop, raw_server, health_servicer, services, metrics, gate)
    if settings.metrics_port >= 0:
        managed.metrics_port = metrics.serve_http(settings.metrics_host, settings.metrics_port)
    log.info(
        "%s: tls=%s%s auth=%s metrics=%s",
        settings.address,
        "on" if credentials else "off",
        " (mutual)" if settings.tls_client_ca else "",
        f"{len(tokens)} token(s)" if tokens else "off",
        managed.metrics_port if managed.metrics_port is not None else "off",
    )
    return managed, port


def server_options(settings: ServerSettings) -> list[tuple[str, Any]]:
    return [
        *message_size_options(settings.max_message_bytes),
        # Worker processes share one port (SO_REUSEPORT, the kernel spreads connections); a single
        # process keeps the port to itself, so a second instance on it fails loudly.
        ("grpc.so_reuseport", 1 if settings.reuse_port else 0),
    ]


def _tls_credentials(settings: ServerSettings) -> grpc.ServerCredentials | None:
    if bool(settings.tls_cert) != bool(settings.tls_key):
        raise ValueError("TLS needs both tls_cert and tls_key (only one is set)")
    if not settings.tls_cert:
        if settings.tls_client_ca:
            raise ValueError("tls_client_ca (mutual TLS) needs tls_cert and tls_key as well")
        return None
    return server_credentials(settings.tls_cert, settings.tls_key, settings.tls_client_ca or None)


def serve(
    managed: ManagedServer,
    port: int,
    settings: ServerSettings,
    name: str,
    on_ready: Callable[[], None] = lambda: None,
) -> None:
    """Run until SIGTERM/SIGINT, then shut down gracefully; ``on_ready`` once the port accepts calls."""
    stop_requested = threading.Event()

    def request_stop(signum: int, _frame: Any) -> None:
        log.info(
            "%s: received %s, shutting down (grace %.1fs)",
            name,
            signal.Signals(signum).name,
            settings.grace_seconds,
        )
        stop_requested.set()

    signal.signal(signal.SIGTERM, request_stop)
    signal.signal(signal.SIGINT, request_stop)
    managed.start()
    log.info("%s listening on %s:%d", name, settings.host, port)
    on_ready()
    stop_requested.wait()
    managed.stop(settings.grace_seconds, settings.drain_seconds)
    log.info("%s stopped", name)


def configure_logging(level: str) -> None:
    logging.basicConfig(level=level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s")
