"""The shared bootstrap: health (SERVING, then NOT_SERVING on graceful stop), reflection, message-size
limits, the logging/observing interceptor and shutdown hooks, on a real server at 127.0.0.1 port 0."""

from __future__ import annotations

import asyncio
import logging
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha.proto_reflection_descriptor_database import ProtoReflectionDescriptorDatabase

from service_common.errors import NotFound
from service_common.grpc_errors import map_errors
from service_common.server import ManagedServer, build_server
from service_common.settings import EventLoopKind, ServerSettings

SERVICE = "lstm_stack.test.Probe"
ECHO = f"/{SERVICE}/Echo"
MISSING = f"/{SERVICE}/Missing"
SERVING = health_pb2.HealthCheckResponse.SERVING
NOT_SERVING = health_pb2.HealthCheckResponse.NOT_SERVING


class Probe:
    @map_errors
    async def echo(self, request: bytes, context: grpc.aio.ServicerContext) -> bytes:
        return request

    @map_errors
    async def missing(self, request: bytes, context: grpc.aio.ServicerContext) -> bytes:
        raise NotFound(f"probe {request.decode()!r} not found")

    def register(self, server: grpc.aio.Server) -> list[str]:
        handlers = {
            "Echo": grpc.unary_unary_rpc_method_handler(self.echo),
            "Missing": grpc.unary_unary_rpc_method_handler(self.missing),
        }
        server.add_generic_rpc_handlers((grpc.method_handlers_generic_handler(SERVICE, handlers),))
        return [SERVICE]


@dataclass
class Running:
    server: ManagedServer
    channel: grpc.Channel
    observed: list[tuple[str, str, float]] = field(default_factory=list)


@pytest.fixture
def running(tmp_path: Path) -> Iterator[Running]:
    observed: list[tuple[str, str, float]] = []
    settings = ServerSettings(host="127.0.0.1", port=0, store=tmp_path, max_message_mb=1, executor_threads=4)
    server, port = build_server(settings, Probe().register, observers=[lambda *args: observed.append(args)])
    server.start()
    channel = grpc.insecure_channel(f"127.0.0.1:{port}")
    try:
        yield Running(server, channel, observed)
    finally:
        channel.close()
        server.stop(0)


def _health(channel: grpc.Channel, service: str = "") -> int:
    return (
        health_pb2_grpc.HealthStub(channel)
        .Check(health_pb2.HealthCheckRequest(service=service), timeout=5)
        .status
    )


def test_health_serving_for_the_server_and_each_service(running: Running) -> None:
    assert _health(running.channel) == SERVING
    assert _health(running.channel, SERVICE) == SERVING
    with pytest.raises(grpc.RpcError) as excinfo:
        _health(running.channel, "no.such.Service")
    assert excinfo.value.code() == grpc.StatusCode.NOT_FOUND


@pytest.mark.parametrize("kind", ["uvloop", "asyncio"])
def test_the_server_runs_on_the_event_loop_the_settings_name(tmp_path: Path, kind: EventLoopKind) -> None:
    seen: list[str] = []

    class LoopProbe(Probe):
        @map_errors
        async def echo(self, request: bytes, context: grpc.aio.ServicerContext) -> bytes:
            seen.append(type(asyncio.get_running_loop()).__module__)
            return request

    settings = ServerSettings(host="127.0.0.1", port=0, store=tmp_path, event_loop=kind, executor_threads=2)
    server, port = build_server(settings, LoopProbe().register)
    server.start()
    try:
        with grpc.insecure_channel(f"127.0.0.1:{port}") as channel:
            assert channel.unary_unary(ECHO)(b"hi", timeout=10) == b"hi"
            assert _health(channel) == SERVING
    finally:
        server.stop(0)
    assert seen == (["uvloop"] if kind == "uvloop" else ["asyncio.unix_events"])


def test_graceful_stop_turns_health_not_serving_first(running: Running) -> None:
    hooks: list[str] = []
    running.server.on_stop(lambda: hooks.append("first registered"))
    running.server.on_stop(lambda: hooks.append("last registered"))
    watch = health_pb2_grpc.HealthStub(running.channel).Watch(health_pb2.HealthCheckRequest(), timeout=20)
    assert next(watch).status == SERVING
    stopper = threading.Thread(target=running.server.stop, args=(5.0,))
    stopper.start()
    # An open Watch is in flight, so it sees the change during the grace period.
    assert next(watch).status == NOT_SERVING
    watch.cancel()
    stopper.join(timeout=20)
    assert not stopper.is_alive()
    assert hooks == ["last registered", "first registered"]  # closed in reverse order of opening
    with pytest.raises(grpc.RpcError) as excinfo:
        _health(running.channel)
    assert excinfo.value.code() == grpc.StatusCode.UNAVAILABLE
    running.server.stop(0)  # a second stop is harmless


def test_reflection_lists_every_service(running: Running) -> None:
    services = set(ProtoReflectionDescriptorDatabase(running.channel).get_services())
    assert services == {SERVICE, "grpc.health.v1.Health", "grpc.reflection.v1alpha.ServerReflection"}


def test_oversize_message_is_resource_exhausted_and_server_keeps_serving(running: Running) -> None:
    echo = running.channel.unary_unary(ECHO)
    with pytest.raises(grpc.RpcError) as excinfo:
        echo(b"x" * (1024 * 1024 + 1), timeout=10)
    assert excinfo.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
    assert echo(b"x" * (1024 * 1024 - 64), timeout=10) == b"x" * (1024 * 1024 - 64)
    assert _health(running.channel) == SERVING


def test_interceptor_logs_and_observes_each_rpc(running: Running, caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.DEBUG, logger="lstm_stack.rpc"):
        assert running.channel.unary_unary(ECHO)(b"hi", timeout=10) == b"hi"
        with pytest.raises(grpc.RpcError) as excinfo:
            running.channel.unary_unary(MISSING)(b"thing", timeout=10)
        _health(running.channel)
    assert excinfo.value.code() == grpc.StatusCode.NOT_FOUND
    assert excinfo.value.details() == "probe 'thing' not found"
    logged = {
        (r.levelno, r.getMessage().rsplit(" ", 1)[0]) for r in caplog.records if r.name == "lstm_stack.rpc"
    }
    assert (logging.DEBUG, f"{ECHO} OK") in logged
    assert (logging.WARNING, f"{MISSING} NOT_FOUND") in logged
    assert (logging.DEBUG, "/grpc.health.v1.Health/Check OK") in logged
    codes = [(method, code) for method, code, _ in running.observed]
    assert codes[:3] == [(ECHO, "OK"), (MISSING, "NOT_FOUND"), ("/grpc.health.v1.Health/Check", "OK")]
    assert all(seconds >= 0 for *_, seconds in running.observed)
