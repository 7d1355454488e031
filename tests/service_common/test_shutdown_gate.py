"""Graceful stop on a real in-process server: NOT_SERVING while draining, then new calls get UNAVAILABLE
(not CANCELLED) while the calls already running finish, then the port closes."""

from __future__ import annotations

import asyncio
import threading
import time
from pathlib import Path

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from service_common.server import build_server
from service_common.settings import ServerSettings
from service_common.shutdown import ShutdownGate
from tests.service_common import echo


def _health(channel: grpc.Channel) -> str:
    reply = health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(), timeout=5)
    return health_pb2.HealthCheckResponse.ServingStatus.Name(reply.status)


def _wait_for(condition, timeout: float = 10.0) -> None:  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "condition never held"
        time.sleep(0.01)


def test_stop_drains_then_refuses_new_calls_while_in_flight_ones_finish(tmp_path: Path) -> None:
    service = echo.EchoService()
    managed, port = build_server(ServerSettings(store=tmp_path), service.register)
    managed.start()
    channel = grpc.insecure_channel(f"127.0.0.1:{port}")
    slow_result: list[object] = []
    slow = threading.Thread(
        target=lambda: slow_result.append(channel.unary_unary(echo.SLOW)(b"slow", timeout=30)), daemon=True
    )
    slow.start()
    assert service.slow_started.wait(10)

    stopper = threading.Thread(target=managed.stop, kwargs={"grace": 20.0, "drain": 0.5}, daemon=True)
    stopper.start()
    try:
        # Draining: health says NOT_SERVING but calls are still served.
        _wait_for(lambda: _health(channel) == "NOT_SERVING")
        assert echo.say(channel, b"during drain") == b"during drain"
        # Then refusing: a clean, retryable UNAVAILABLE; health still answers.
        with pytest.raises(grpc.RpcError) as info:
            _wait_for(lambda: echo.say(channel, b"late") is None)
        assert info.value.code() == grpc.StatusCode.UNAVAILABLE
        assert "shutting down" in info.value.details()
        assert _health(channel) == "NOT_SERVING"
        assert stopper.is_alive(), "stop returned while a call was still running"
    finally:
        service.release.set()
    slow.join(10)
    stopper.join(10)
    assert slow_result == [b"slow"], "the in-flight call did not complete"
    assert not stopper.is_alive()
    with pytest.raises(grpc.RpcError) as info:
        _health(channel)
    assert info.value.code() == grpc.StatusCode.UNAVAILABLE
    channel.close()


def test_grace_bounds_the_wait_for_running_calls(tmp_path: Path) -> None:
    service = echo.EchoService()
    managed, port = build_server(ServerSettings(store=tmp_path), service.register)
    managed.start()
    with grpc.insecure_channel(f"127.0.0.1:{port}") as channel:
        outcome: list[grpc.StatusCode] = []

        def call_slow() -> None:
            try:
                channel.unary_unary(echo.SLOW)(b"x", timeout=30)
                outcome.append(grpc.StatusCode.OK)
            except grpc.RpcError as error:
                outcome.append(error.code())

        caller = threading.Thread(target=call_slow, daemon=True)
        caller.start()
        assert service.slow_started.wait(10)
        started = time.monotonic()
        managed.stop(grace=0.5)
        assert time.monotonic() - started < 10
        caller.join(10)
        service.release.set()
    # Past the grace the call is cut off rather than waited for.
    assert len(outcome) == 1 and outcome[0] != grpc.StatusCode.OK


def test_gate_waits_for_quiet() -> None:
    gate = ShutdownGate()
    gate.close()
    started = time.monotonic()
    assert gate.wait_quiet(5.0)
    # Nothing ran and nothing arrived since construction more than QUIET_SECONDS ago? Then at most that.
    assert time.monotonic() - started <= ShutdownGate.QUIET_SECONDS + 1.0
    assert not asyncio.run(ShutdownGate().wait_quiet(0.0))
