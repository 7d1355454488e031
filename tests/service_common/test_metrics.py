"""Prometheus metrics: per-server registries, RPC counts by method and code, the HTTP endpoint."""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from pathlib import Path

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from prometheus_client.parser import text_string_to_metric_families

from service_common.metrics import ServiceMetrics, split_method
from service_common.security import bearer_metadata
from service_common.server import build_server
from service_common.settings import ServerSettings
from tests.service_common import echo

TOKEN = "metrics-test-token-0123456789"


def _scrape(port: int) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10) as response:
        assert response.status == 200
        text = response.read().decode()
    samples = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            samples[(sample.name, tuple(sorted(sample.labels.items())))] = sample.value
    return samples


def _rpc_count(samples: dict, method: str, code: str, service: str = echo.SERVICE) -> float:
    labels = (("grpc_code", code), ("grpc_method", method), ("grpc_service", service))
    return samples.get(("grpc_server_handled_total", labels), 0.0)


def _latency_count(samples: dict, method: str, code: str) -> float:
    labels = (("grpc_code", code), ("grpc_method", method), ("grpc_service", echo.SERVICE))
    return samples.get(("grpc_server_handling_seconds_count", labels), 0.0)


def test_split_method() -> None:
    assert split_method("/lstm_stack.v1.ScalerService/Fit") == ("lstm_stack.v1.ScalerService", "Fit")
    assert split_method("odd") == ("unknown", "odd")


def test_endpoint_counts_rpcs_by_method_and_code(tmp_path: Path) -> None:
    settings = dataclasses.replace(
        ServerSettings(store=tmp_path), metrics_port=0, auth_token=TOKEN, metrics_host="127.0.0.1"
    )
    managed, port = build_server(settings, echo.EchoService().register)
    managed.start()
    try:
        assert managed.metrics_port is not None and managed.metrics_port > 0
        auth = bearer_metadata(TOKEN)
        with grpc.insecure_channel(f"127.0.0.1:{port}") as channel:
            for _ in range(3):
                echo.say(channel, metadata=auth)
            echo.repeat(channel, metadata=auth)
            for _ in range(2):
                with pytest.raises(grpc.RpcError):
                    echo.fail(channel, metadata=auth)
            with pytest.raises(grpc.RpcError):
                echo.say(channel)  # no token
            health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(), timeout=10)
        samples = _scrape(managed.metrics_port)
    finally:
        managed.stop(0)
    assert _rpc_count(samples, "Say", "OK") == 3
    assert _rpc_count(samples, "Say", "UNAUTHENTICATED") == 1
    assert _rpc_count(samples, "Repeat", "OK") == 1
    assert _rpc_count(samples, "Fail", "INVALID_ARGUMENT") == 2
    assert _rpc_count(samples, "Fail", "OK") == 0
    assert _rpc_count(samples, "Check", "OK", service="grpc.health.v1.Health") == 1
    assert _latency_count(samples, "Say", "OK") == 3
    assert _latency_count(samples, "Fail", "INVALID_ARGUMENT") == 2
    # Process metrics come along in the per-server registry.
    assert any(name == "process_cpu_seconds_total" for name, _ in samples)


def test_servers_in_one_process_keep_separate_figures(tmp_path: Path) -> None:
    settings = dataclasses.replace(ServerSettings(store=tmp_path), metrics_port=0)
    first, first_port = build_server(settings, echo.EchoService().register)
    second, second_port = build_server(settings, echo.EchoService().register)
    first.start()
    second.start()
    try:
        assert first.metrics.registry is not second.metrics.registry
        assert first.metrics_port != second.metrics_port
        with grpc.insecure_channel(f"127.0.0.1:{first_port}") as channel:
            echo.say(channel)
            echo.say(channel)
        with grpc.insecure_channel(f"127.0.0.1:{second_port}") as channel:
            echo.say(channel)
        assert _rpc_count(_scrape(first.metrics_port), "Say", "OK") == 2
        assert _rpc_count(_scrape(second.metrics_port), "Say", "OK") == 1
    finally:
        first.stop(0)
        second.stop(0)


def test_endpoint_off_by_default_and_closed_on_stop(tmp_path: Path) -> None:
    managed, _port = build_server(ServerSettings(store=tmp_path), echo.EchoService().register)
    assert managed.metrics_port is None
    managed.metrics.observe_rpc("/x.Y/Z", "OK", 0.01)  # the registry is there all the same
    managed.start()
    managed.stop(0)

    settings = dataclasses.replace(ServerSettings(store=tmp_path), metrics_port=0)
    managed, _port = build_server(settings, echo.EchoService().register)
    managed.start()
    metrics_port = managed.metrics_port
    assert metrics_port is not None
    _scrape(metrics_port)
    managed.stop(0)
    with pytest.raises(urllib.error.URLError):
        urllib.request.urlopen(f"http://127.0.0.1:{metrics_port}/metrics", timeout=5)


def test_service_gauges_and_histograms() -> None:
    metrics = ServiceMetrics()
    metrics.observe_batch("predict", 16)
    metrics.observe_batch("predict", 3)
    metrics.track_artifacts("scaler", lambda: 4)
    stored_models = [1, 2]
    metrics.track_artifacts("model", lambda: len(stored_models))
    with metrics.training_job():
        assert metrics.registry.get_sample_value("lstm_training_jobs_running") == 1
        with pytest.raises(RuntimeError), metrics.training_job():
            assert metrics.registry.get_sample_value("lstm_training_jobs_running") == 2
            raise RuntimeError("training failed")
        assert metrics.registry.get_sample_value("lstm_training_jobs_running") == 1
    stored_models.append(3)
    value = metrics.registry.get_sample_value
    assert value("lstm_training_jobs_running") == 0
    assert value("lstm_batch_rows_count", {"operation": "predict"}) == 2
    assert value("lstm_batch_rows_sum", {"operation": "predict"}) == 19
    assert value("lstm_batch_rows_bucket", {"operation": "predict", "le": "4.0"}) == 1
    assert value("lstm_artifacts_stored", {"kind": "scaler"}) == 4
    assert value("lstm_artifacts_stored", {"kind": "model"}) == 3


def test_serve_http_twice_is_refused(tmp_path: Path) -> None:
    metrics = ServiceMetrics()
    metrics.serve_http("127.0.0.1", 0)
    try:
        with pytest.raises(RuntimeError):
            metrics.serve_http("127.0.0.1", 0)
    finally:
        metrics.stop_http()
    metrics.stop_http()  # idempotent


class Outlived:
    """A handler that waits until its caller is gone (cancelled, or past its deadline) and then returns
    normally, as a handler busy with slow work off the loop would (shielded from the cancellation)."""

    SERVICE = "lstm_stack.test.Outlived"

    def __init__(self) -> None:
        self.started = threading.Event()

    async def wait(self, request: bytes, context: grpc.aio.ServicerContext) -> bytes:
        self.started.set()
        # Slow work that ignores the cancellation grpc.aio sends when the client goes away.
        with contextlib.suppress(asyncio.CancelledError):
            await asyncio.sleep(10)
        return request

    def register(self, server: grpc.aio.Server) -> list[str]:
        handlers = {"Wait": grpc.unary_unary_rpc_method_handler(self.wait)}
        server.add_generic_rpc_handlers((grpc.method_handlers_generic_handler(self.SERVICE, handlers),))
        return [self.SERVICE]


def test_calls_the_client_abandoned_are_not_counted_ok(tmp_path: Path) -> None:
    """A handler that returns normally after its client cancelled, or after the deadline passed, did
    not serve that client: counted CANCELLED / DEADLINE_EXCEEDED, never OK."""
    service = Outlived()
    managed, port = build_server(ServerSettings(store=tmp_path), service.register)
    managed.start()

    def count(code: str) -> float:
        labels = {"grpc_service": Outlived.SERVICE, "grpc_method": "Wait", "grpc_code": code}
        return managed.metrics.registry.get_sample_value("grpc_server_handled_total", labels) or 0.0

    try:
        with grpc.insecure_channel(f"127.0.0.1:{port}") as channel:
            wait = channel.unary_unary(f"/{Outlived.SERVICE}/Wait")
            call = wait.future(b"x", timeout=30)
            assert service.started.wait(10)
            call.cancel()
            _wait_until(lambda: count("CANCELLED") == 1)
            with pytest.raises(grpc.RpcError) as info:
                wait(b"x", timeout=0.3)
            assert info.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED
            _wait_until(lambda: count("DEADLINE_EXCEEDED") == 1)
    finally:
        managed.stop(0)
    assert count("OK") == 0


def _wait_until(condition: Callable[[], bool], timeout: float = 15.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "the observation never arrived"
        time.sleep(0.02)
