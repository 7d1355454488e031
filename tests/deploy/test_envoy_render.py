"""deploy/envoy/render.py: the shipped Envoy config with other addresses, and nothing else changed."""

from __future__ import annotations

import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml

from deploy.envoy import render
from tests.deploy.manifests import ENVOY_CONFIG, venv_tool

LISTEN, ADMIN = ("127.0.0.1", 40100), ("127.0.0.1", 40101)
ENDPOINTS = {
    "model": [("127.0.0.1", 40151), ("127.0.0.1", 40152), ("127.0.0.1", 40153)],
    "scaler": [("127.0.0.1", 40141)],
}


def _without_addresses(config: dict[str, Any]) -> dict[str, Any]:
    stripped = yaml.safe_load(yaml.safe_dump(config))
    stripped["admin"].pop("address")
    for listener in stripped["static_resources"]["listeners"]:
        listener.pop("address")
    for cluster in stripped["static_resources"]["clusters"]:
        cluster["load_assignment"].pop("endpoints")
    return stripped


def _ports(config: dict[str, Any], cluster: str) -> list[int]:
    [found] = [c for c in config["static_resources"]["clusters"] if c["name"] == cluster]
    return [
        endpoint["endpoint"]["address"]["socket_address"]["port_value"]
        for group in found["load_assignment"]["endpoints"]
        for endpoint in group["lb_endpoints"]
    ]


def test_the_rendered_config_differs_from_the_shipped_one_only_in_its_addresses() -> None:
    config = render.render(LISTEN, ADMIN, ENDPOINTS)
    assert _without_addresses(config) == _without_addresses(yaml.safe_load(ENVOY_CONFIG.read_text()))
    assert _ports(config, "model") == [40151, 40152, 40153]
    assert _ports(config, "scaler") == [40141]
    [listener] = config["static_resources"]["listeners"]
    assert listener["address"]["socket_address"] == {"address": "127.0.0.1", "port_value": 40100}
    assert config["admin"]["address"]["socket_address"] == {"address": "127.0.0.1", "port_value": 40101}


def test_envoy_validates_a_config_rendered_by_the_command_line(tmp_path: Path) -> None:
    output = tmp_path / "envoy.yaml"
    arguments = ["--listen", "127.0.0.1:40100", "--admin", "127.0.0.1:40101", "--output", str(output)]
    arguments += ["--model", "127.0.0.1:40151", "--model", "127.0.0.1:40152", "--scaler", "127.0.0.1:40141"]
    assert render.main(arguments) == 0
    result = subprocess.run(
        [str(venv_tool("envoy")), "--mode", "validate", "-c", str(output), "--log-level", "warn"],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert _ports(yaml.safe_load(output.read_text()), "model") == [40151, 40152]


@pytest.mark.parametrize("text", ["50100", "127.0.0.1:", ":50100", "127.0.0.1:0", "127.0.0.1:70000", "h:p"])
def test_an_address_without_a_host_and_a_valid_port_is_refused(text: str) -> None:
    with pytest.raises(ValueError, match="expected HOST:PORT"):
        render.parse_address(text)


def test_a_cluster_without_endpoints_is_refused() -> None:
    with pytest.raises(ValueError, match="the scaler cluster needs at least one endpoint"):
        render.render(LISTEN, ADMIN, {"model": ENDPOINTS["model"], "scaler": []})
    with pytest.raises(ValueError, match="endpoints for exactly"):
        render.render(LISTEN, ADMIN, {"model": ENDPOINTS["model"]})
