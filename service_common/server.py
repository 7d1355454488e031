"""One server bootstrap for both services: health, reflection, interceptors, limits, graceful shutdown."""

from __future__ import annotations

import logging
import signal
import threading
from collections.abc import Callable, Iterable
from concurrent import futures
from typing import Any

import grpc
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection

from service_common.interceptors import ObservingInterceptor, RpcObserver, log_rpc
from service_common.settings import ServerSettings

log = logging.getLogger("lstm_stack.server")


class ManagedServer:
    """A started-or-not grpc.Server plus its health state and the resources to close on shutdown."""

    def __init__(self, server: grpc.Server, health_servicer: health.HealthServicer, services: list[str]):
        self.grpc_server = server
        self.health = health_servicer
        self.services = services
        self._on_stop: list[Callable[[], None]] = []
        self._stopped = threading.Event()

    def on_stop(self, callback: Callable[[], None]) -> None:
        self._on_stop.append(callback)

    def start(self) -> None:
        self.grpc_server.start()
        for name in ["", *self.services]:
            self.health.set(name, health_pb2.HealthCheckResponse.SERVING)

    def stop(self, grace: float | None = None) -> threading.Event:
        """Health NOT_SERVING first, then refuse new calls and let in-flight ones finish within grace."""
        if self._stopped.is_set():
            return self._stopped
        self._stopped.set()
        self.health.enter_graceful_shutdown()
        done = self.grpc_server.stop(grace)
        done.wait()
        for callback in reversed(self._on_stop):
            try:
                callback()
            except Exception:  # noqa: BLE001 - shutdown goes on
                log.exception("shutdown hook failed")
        return done

    def wait_for_termination(self, timeout: float | None = None) -> bool:
        return self.grpc_server.wait_for_termination(timeout)


def build_server(
    settings: ServerSettings,
    register: Callable[[grpc.Server], Iterable[str]],
    interceptors: Iterable[grpc.ServerInterceptor] = (),
    observers: Iterable[RpcObserver] = (),
) -> tuple[ManagedServer, int]:
    """Create a server with the shared plumbing; ``register`` adds servicers and returns their full names."""
    options: list[tuple[str, Any]] = [
        ("grpc.max_receive_message_length", settings.max_message_bytes),
        ("grpc.max_send_message_length", settings.max_message_bytes),
        ("grpc.so_reuseport", 0),
    ]
    server = grpc.server(
        futures.ThreadPoolExecutor(max_workers=settings.workers, thread_name_prefix="rpc"),
        interceptors=[ObservingInterceptor([log_rpc, *observers]), *interceptors],
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
    port = server.add_insecure_port(settings.address)
    if port == 0:
        raise OSError(f"could not bind {settings.address}")
    return ManagedServer(server, health_servicer, services), port


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
    managed.stop(settings.grace_seconds)
    log.info("%s stopped", name)


def configure_logging(level: str) -> None:
    logging.basicConfig(level=level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s")
