"""One server bootstrap for both services: health, reflection, interceptors, limits, graceful shutdown."""

from __future__ import annotations

import gc
import logging
import signal
import threading
import time
from collections.abc import Callable, Iterable
from concurrent import futures
from typing import Any

import grpc
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection

from service_common.interceptors import ObservingInterceptor, RpcObserver, log_rpc
from service_common.metrics import ServiceMetrics
from service_common.security import AuthInterceptor, load_tokens, server_credentials
from service_common.settings import ServerSettings

log = logging.getLogger("lstm_stack.server")

HEALTH_PREFIX = "/grpc.health.v1.Health/"


class ShutdownGate(grpc.ServerInterceptor):
    """Counts running calls; once closed, answers new ones UNAVAILABLE (health still answers).

    gRPC's own stop() cancels every call that has reached the server but is not yet handed to a
    handler, and any that arrives before the client reads the GOAWAY: those clients see CANCELLED,
    which they do not retry. So the port is closed only once in-flight calls are done and no call has
    arrived for QUIET_SECONDS; until then new calls get a clean, retryable UNAVAILABLE.
    """

    QUIET_SECONDS = 0.1

    def __init__(self) -> None:
        self._closed = threading.Event()
        self._idle = threading.Condition()
        self._active = 0
        self._last_arrival = time.monotonic()

    def close(self) -> None:
        self._closed.set()

    def wait_quiet(self, timeout: float) -> bool:
        """Until nothing runs and nothing arrived for QUIET_SECONDS; False when ``timeout`` ran out first."""
        deadline = time.monotonic() + timeout
        with self._idle:
            while True:
                now = time.monotonic()
                if now >= deadline:
                    return False
                if self._active == 0:
                    quiet_for = now - self._last_arrival
                    if quiet_for >= self.QUIET_SECONDS:
                        return True
                    wait = self.QUIET_SECONDS - quiet_for
                else:
                    wait = deadline - now
                self._idle.wait(min(wait, deadline - now))

    def _enter(self) -> None:
        with self._idle:
            self._active += 1

    def _leave(self) -> None:
        with self._idle:
            self._active -= 1
            if self._active == 0:
                self._idle.notify_all()

    def intercept_service(self, continuation: Callable[..., Any], handler_call_details: Any) -> Any:
        self._last_arrival = time.monotonic()
        handler = continuation(handler_call_details)
        if handler is None or handler_call_details.method.startswith(HEALTH_PREFIX):
            return handler
        if self._closed.is_set():
            return _refusing_handler(handler)
        return _counting_handler(handler, self._enter, self._leave)


def _refusing_handler(handler: grpc.RpcMethodHandler) -> grpc.RpcMethodHandler:
    def refuse(_request: Any, context: grpc.ServicerContext) -> Any:
        context.abort(grpc.StatusCode.UNAVAILABLE, "the server is shutting down; retry on another instance")

    if handler.unary_unary:
        return grpc.unary_unary_rpc_method_handler(refuse)
    if handler.unary_stream:
        return grpc.unary_stream_rpc_method_handler(refuse)
    if handler.stream_unary:
        return grpc.stream_unary_rpc_method_handler(refuse)
    return grpc.stream_stream_rpc_method_handler(refuse)


def _counting_handler(
    handler: grpc.RpcMethodHandler, enter: Callable[[], None], leave: Callable[[], None]
) -> grpc.RpcMethodHandler:
    def unary(behaviour: Callable[..., Any]) -> Callable[..., Any]:
        def run(request: Any, context: grpc.ServicerContext) -> Any:
            enter()
            try:
                return behaviour(request, context)
            finally:
                leave()

        return run

    def streaming(behaviour: Callable[..., Any]) -> Callable[..., Any]:
        def run(request: Any, context: grpc.ServicerContext) -> Any:
            enter()
            try:
                yield from behaviour(request, context)
            finally:
                leave()

        return run

    serialization = (handler.request_deserializer, handler.response_serializer)
    if handler.unary_unary:
        return grpc.unary_unary_rpc_method_handler(unary(handler.unary_unary), *serialization)
    if handler.unary_stream:
        return grpc.unary_stream_rpc_method_handler(streaming(handler.unary_stream), *serialization)
    if handler.stream_unary:
        return grpc.stream_unary_rpc_method_handler(unary(handler.stream_unary), *serialization)
    return grpc.stream_stream_rpc_method_handler(streaming(handler.stream_stream), *serialization)


class ManagedServer:
    """A started-or-not grpc.Server plus its health state and the resources to close on shutdown."""

    def __init__(
        self,
        server: grpc.Server,
        health_servicer: health.HealthServicer,
        services: list[str],
        metrics: ServiceMetrics | None = None,
        gate: ShutdownGate | None = None,
    ):
        self.grpc_server = server
        self.health = health_servicer
        self.services = services
        # Services feed their gauges here (batch sizes, training jobs, artifacts stored).
        self.metrics = metrics or ServiceMetrics()
        # Port of the /metrics HTTP endpoint, None when it is off.
        self.metrics_port: int | None = None
        self._gate = gate
        self._on_stop: list[Callable[[], None]] = []
        self._stopped = threading.Event()

    def on_stop(self, callback: Callable[[], None]) -> None:
        self._on_stop.append(callback)

    def start(self) -> None:
        # Everything built so far (TensorFlow, Keras, loaded models: ~370 000 objects) lives as long as
        # the process. Frozen, the cyclic GC stops rescanning it: a full collection would otherwise
        # stall every thread for ~200 ms now and then, straight into the tail latency.
        gc.collect()
        gc.freeze()
        self.grpc_server.start()
        for name in ["", *self.services]:
            self.health.set(name, health_pb2.HealthCheckResponse.SERVING)

    def stop(self, grace: float | None = None, drain: float = 0.0) -> threading.Event:
        """Health NOT_SERVING first, then refuse new calls and let in-flight ones finish within grace.

        ``drain`` seconds pass between the two, still serving, so balancers polling health stop sending.
        New calls then get UNAVAILABLE while in-flight ones finish; whatever still runs after ``grace``
        seconds is cancelled.
        """
        if self._stopped.is_set():
            return self._stopped
        self._stopped.set()
        self.health.enter_graceful_shutdown()
        if drain > 0:
            time.sleep(drain)
        if self._gate is not None and grace:
            started = time.monotonic()
            self._gate.close()
            if not self._gate.wait_quiet(grace):
                log.warning("calls still running or arriving after the %.1fs grace; cancelling them", grace)
            grace = max(0.0, grace - (time.monotonic() - started))
        done = self.grpc_server.stop(grace)
        done.wait()
        for callback in reversed(self._on_stop):
            try:
                callback()
            except Exception:  # noqa: BLE001 - shutdown goes on
                log.exception("shutdown hook failed")
        # Last, so operators can still scrape while in-flight calls drain.
        self.metrics.stop_http()
        return done

    def wait_for_termination(self, timeout: float | None = None) -> bool:
        return self.grpc_server.wait_for_termination(timeout)


def build_server(
    settings: ServerSettings,
    register: Callable[[grpc.Server], Iterable[str]],
    interceptors: Iterable[grpc.ServerInterceptor] = (),
    observers: Iterable[RpcObserver] = (),
    metrics: ServiceMetrics | None = None,
) -> tuple[ManagedServer, int]:
    """Create a server with the shared plumbing; ``register`` adds servicers and returns their full names.

    From the settings: bearer-token auth when a token is configured, TLS when a certificate and key
    are set (mutual TLS with a client CA), RPC metrics always, and their HTTP endpoint unless
    ``metrics_port`` is -1. Pass ``metrics`` when the servicers feed it too (made before the server).
    """
    credentials = _tls_credentials(settings)
    tokens = load_tokens(settings.auth_token, settings.auth_token_file)
    metrics = metrics or ServiceMetrics()
    # Observing first, so refused calls (UNAUTHENTICATED) are logged and counted too.
    gate = ShutdownGate()
    all_interceptors: list[grpc.ServerInterceptor] = [
        ObservingInterceptor([log_rpc, metrics.observe_rpc, *observers]),
        gate,
    ]
    if tokens:
        all_interceptors.append(AuthInterceptor(tokens))
    all_interceptors.extend(interceptors)
    options: list[tuple[str, Any]] = [
        ("grpc.max_receive_message_length", settings.max_message_bytes),
        ("grpc.max_send_message_length", settings.max_message_bytes),
        ("grpc.so_reuseport", 0),
    ]
    server = grpc.server(
        futures.ThreadPoolExecutor(max_workers=settings.workers, thread_name_prefix="rpc"),
        interceptors=all_interceptors,
        options=options,
        maximum_concurrent_rpcs=settings.max_concurrent_rpcs,
    )
    services = list(register(server))
    health_servicer = health.HealthServicer(experimental_non_blocking=True)
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
    managed = ManagedServer(server, health_servicer, services, metrics, gate)
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


def _tls_credentials(settings: ServerSettings) -> grpc.ServerCredentials | None:
    if bool(settings.tls_cert) != bool(settings.tls_key):
        raise ValueError("TLS needs both tls_cert and tls_key (only one is set)")
    if not settings.tls_cert:
        if settings.tls_client_ca:
            raise ValueError("tls_client_ca (mutual TLS) needs tls_cert and tls_key as well")
        return None
    return server_credentials(settings.tls_cert, settings.tls_key, settings.tls_client_ca or None)


def serve(managed: ManagedServer, port: int, settings: ServerSettings, name: str) -> None:
    """Run until SIGTERM/SIGINT, then shut down gracefully."""
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
    stop_requested.wait()
    managed.stop(settings.grace_seconds, settings.drain_seconds)
    log.info("%s stopped", name)


def configure_logging(level: str) -> None:
    logging.basicConfig(level=level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s")
