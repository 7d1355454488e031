"""deploy/envoy/envoy.yaml: Envoy itself validates it, and its routes retry only idempotent calls.

Routes are resolved as Envoy does (first match wins) for every method of every service in protos/, so a
method added to a .proto is checked too: it falls to a catch-all route, which never retries.
"""

from __future__ import annotations

import re
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml
from google.protobuf.descriptor import MethodDescriptor, ServiceDescriptor

from protos.inference import grpc_service_pb2
from protos.lstm_stack.v1 import dataset_pb2, model_pb2, scaler_pb2
from tests.deploy.manifests import ENVOY_CONFIG, venv_tool

MODEL = model_pb2.DESCRIPTOR.services_by_name["ModelService"]
INFERENCE = grpc_service_pb2.DESCRIPTOR.services_by_name["GRPCInferenceService"]
SCALER = scaler_pb2.DESCRIPTOR.services_by_name["ScalerService"]
DATASET = dataset_pb2.DESCRIPTOR.services_by_name["DatasetService"]
# Which Envoy cluster serves each service, and the grpc.health.v1 name its health check asks for.
CLUSTER_OF = {
    MODEL.full_name: "model",
    INFERENCE.full_name: "model",
    DATASET.full_name: "model",
    SCALER.full_name: "scaler",
}
HEALTH_NAME_OF = {"model": MODEL.full_name, "scaler": SCALER.full_name}
# Reads and pure computations: running one twice changes nothing. Everything else writes to the store
# or changes what is served (Train, Fit*, Delete*, RepositoryModelLoad/Unload) and must run at most once.
IDEMPOTENT = {
    MODEL.full_name: {"Predict", "Evaluate", "GetModel", "ListModels", "ValidateSpec"},
    INFERENCE.full_name: {
        "ModelInfer",
        "ModelMetadata",
        "ModelReady",
        "ServerLive",
        "ServerReady",
        "ServerMetadata",
        "RepositoryIndex",
    },
    SCALER.full_name: {"Transform", "InverseTransform", "GetScaler", "ListScalers"},
    DATASET.full_name: {"GetDataset", "ListDatasets"},
}
# What a replica that is lost or draining looks like to Envoy; the caller would see UNAVAILABLE.
REPLICA_LOST = {"unavailable", "reset", "connect-failure", "refused-stream"}
PORTS = {"listener": 50100, "model": {50151, 50152}, "scaler": {50141, 50142}}


def _config() -> dict[str, Any]:
    return yaml.safe_load(ENVOY_CONFIG.read_text())


def _connection_manager(config: dict[str, Any]) -> dict[str, Any]:
    [listener] = config["static_resources"]["listeners"]
    [chain] = listener["filter_chains"]
    [manager] = chain["filters"]
    return manager["typed_config"]


def _virtual_host(config: dict[str, Any]) -> dict[str, Any]:
    [virtual_host] = _connection_manager(config)["route_config"]["virtual_hosts"]
    return virtual_host


def _route_for(config: dict[str, Any], path: str) -> dict[str, Any]:
    """The route Envoy picks for a gRPC call to ``path``: the first whose path or prefix matches."""
    for route in _virtual_host(config)["routes"]:
        match = route["match"]
        assert match.get("grpc") == {}, f"route {match} should match gRPC requests only"
        if match.get("path") == path or ("prefix" in match and path.startswith(match["prefix"])):
            return route
    raise AssertionError(f"no route for {path}: Envoy would answer UNIMPLEMENTED (404)")


def _methods() -> list[tuple[ServiceDescriptor, MethodDescriptor]]:
    return [
        (service, method) for service in (MODEL, INFERENCE, SCALER, DATASET) for method in service.methods
    ]


def _seconds(duration: str) -> float:
    match = re.fullmatch(r"(\d+(?:\.\d+)?)s", duration)
    assert match, duration
    return float(match.group(1))


def _run_validate(path: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(venv_tool("envoy")), "--mode", "validate", "-c", str(path), "--log-level", "warn"],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


def test_envoy_validates_the_shipped_config() -> None:
    result = _run_validate(ENVOY_CONFIG)
    assert result.returncode == 0, result.stdout + result.stderr
    assert f"configuration '{ENVOY_CONFIG}' OK" in result.stdout + result.stderr


def test_envoy_refuses_the_config_with_a_misspelt_field(tmp_path: Path) -> None:
    # Validation mode parses every field against Envoy's protos: a slip does not pass.
    text = ENVOY_CONFIG.read_text()
    assert text.count("retry_on:") >= 1
    broken = tmp_path / "envoy.yaml"
    broken.write_text(text.replace("retry_on:", "retry_onn:", 1))
    result = _run_validate(broken)
    assert result.returncode != 0
    assert "retry_onn" in result.stdout + result.stderr


@pytest.mark.parametrize(("service", "method"), _methods(), ids=lambda item: getattr(item, "name", str(item)))
def test_only_idempotent_unary_methods_are_retried_and_only_when_a_replica_is_lost(
    service: ServiceDescriptor, method: MethodDescriptor
) -> None:
    route = _route_for(_config(), f"/{service.full_name}/{method.name}")
    action = route["route"]
    assert action["cluster"] == CLUSTER_OF[service.full_name]
    streaming = method.client_streaming or method.server_streaming
    idempotent = method.name in IDEMPOTENT[service.full_name]
    if idempotent and not streaming:
        assert "path" in route["match"], "a retried route names its one method"
        policy = action["retry_policy"]
        conditions = set(policy["retry_on"].split(","))
        assert "unavailable" in conditions and conditions <= REPLICA_LOST, conditions
        assert 1 <= policy["num_retries"] <= 5
        # The retry goes to a replica this call has not tried.
        predicates = [predicate["name"] for predicate in policy["retry_host_predicate"]]
        assert predicates == ["envoy.retry_host_predicates.previous_hosts"]
        assert route["request_body_buffer_limit"] >= 1 << 20
    else:
        assert "retry_policy" not in action, f"{method.name} must run at most once"
    # No fixed route timeout (Envoy's default is 15 s); the caller's grpc-timeout bounds the call.
    assert action["timeout"] == "0s"
    assert action["max_stream_duration"] == {"grpc_timeout_header_max": "0s"}


def test_every_idempotent_method_named_exists_in_the_protos() -> None:
    # A renamed method would otherwise silently lose its retries.
    names = {
        service.full_name: {method.name for method in service.methods}
        for service in (MODEL, INFERENCE, SCALER, DATASET)
    }
    for service, methods in IDEMPOTENT.items():
        assert methods <= names[service], methods - names[service]
    paths = {
        route["match"]["path"] for route in _virtual_host(_config())["routes"] if "path" in route["match"]
    }
    known = {f"/{service}/{method}" for service, methods in names.items() for method in methods}
    assert paths <= known, paths - known


@pytest.mark.parametrize(
    "path",
    [
        f"/{MODEL.full_name}/Train",
        f"/{INFERENCE.full_name}/ModelStreamInfer",
        f"/{SCALER.full_name}/FitStream",
    ],
)
def test_streams_stay_on_their_replica_with_a_long_idle_timeout_and_no_retry(path: str) -> None:
    # A stream is one HTTP/2 stream, proxied to the one replica chosen when it opened; with no retry
    # policy it never moves: if that replica dies the stream ends UNAVAILABLE.
    route = _route_for(_config(), path)
    assert route["match"] == {"path": path, "grpc": {}}
    action = route["route"]
    assert "retry_policy" not in action
    # Nor hedged: a hedge would open the same stream on a second replica.
    assert "hedge_policy" not in action and "hedge_policy" not in _virtual_host(_config())
    assert _seconds(action["idle_timeout"]) >= 3600
    assert action["timeout"] == "0s"


def test_a_method_the_config_does_not_name_is_routed_to_its_service_and_never_retried() -> None:
    for service in (MODEL, INFERENCE, SCALER, DATASET):
        route = _route_for(_config(), f"/{service.full_name}/AMethodAddedLater")
        assert "prefix" in route["match"]
        assert route["route"]["cluster"] == CLUSTER_OF[service.full_name]
        assert "retry_policy" not in route["route"]


def test_no_retry_policy_is_set_where_it_would_apply_to_every_route() -> None:
    virtual_host = _virtual_host(_config())
    assert "retry_policy" not in virtual_host
    assert "retry_policy" not in _connection_manager(_config())["route_config"]


def test_the_upstreams_speak_http2_with_grpc_health_checks_of_their_service() -> None:
    clusters = {cluster["name"]: cluster for cluster in _config()["static_resources"]["clusters"]}
    assert set(clusters) == {"model", "scaler"}
    for name, cluster in clusters.items():
        options = cluster["typed_extension_protocol_options"][
            "envoy.extensions.upstreams.http.v3.HttpProtocolOptions"
        ]
        assert "http2_protocol_options" in options["explicit_http_config"]
        # No HTTP/2 PING keepalive: grpc servers GOAWAY "too_many_pings" a connection pinged more often
        # than every 5 minutes without data (an idle Train stream's connection); TCP keepalive instead.
        assert "connection_keepalive" not in options["explicit_http_config"]["http2_protocol_options"]
        assert cluster["upstream_connection_options"]["tcp_keepalive"]["keepalive_time"] <= 60
        [check] = cluster["health_checks"]
        assert check["grpc_health_check"]["service_name"] == HEALTH_NAME_OF[name]
        assert _seconds(check["interval"]) <= 2 and check["unhealthy_threshold"] <= 3
        ports = {
            endpoint["endpoint"]["address"]["socket_address"]["port_value"]
            for group in cluster["load_assignment"]["endpoints"]
            for endpoint in group["lb_endpoints"]
        }
        addresses = {
            endpoint["endpoint"]["address"]["socket_address"]["address"]
            for group in cluster["load_assignment"]["endpoints"]
            for endpoint in group["lb_endpoints"]
        }
        assert ports == PORTS[name] and addresses == {"127.0.0.1"}


def test_envoy_listens_for_both_services_on_one_loopback_port_apart_from_the_replicas() -> None:
    config = _config()
    [listener] = config["static_resources"]["listeners"]
    address = listener["address"]["socket_address"]
    assert (address["address"], address["port_value"]) == ("127.0.0.1", PORTS["listener"])
    assert _connection_manager(config)["codec_type"] == "HTTP2"
    admin = config["admin"]["address"]["socket_address"]
    assert admin["address"] == "127.0.0.1"
    taken = [PORTS["listener"], admin["port_value"], *PORTS["model"], *PORTS["scaler"]]
    assert len(taken) == len(set(taken))
