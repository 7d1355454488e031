"""The shipped Envoy config (deploy/envoy/envoy.yaml) with other ports and replicas, nothing else changed.

envoy.yaml is laid out for fixed loopback ports (Envoy 50100, admin 50101, model 50151/50152, scaler
50141/50142). Tests, the bench and the compose smoke test need free ports and one, two or three
replicas; they render the shipped file through this instead of keeping a copy, so what they run is
what ships: every route, retry policy, health check and timeout comes from envoy.yaml.

    python deploy/envoy/render.py --listen 127.0.0.1:50200 --admin 127.0.0.1:50201 \\
        --model 127.0.0.1:50251 --model 127.0.0.1:50252 --scaler 127.0.0.1:50241 > envoy.yaml

Only PyYAML is needed (the compose smoke test runs it with the host's Python).
"""

from __future__ import annotations

import argparse
import copy
import sys
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import yaml

SHIPPED = Path(__file__).resolve().with_name("envoy.yaml")
CLUSTERS = ("model", "scaler")


def parse_address(text: str) -> tuple[str, int]:
    """``HOST:PORT`` -> (host, port); the host must be given (no wildcard default)."""
    host, sep, port = text.rpartition(":")
    if not sep or not host or not port.isdigit() or not 0 < int(port) < 65536:
        raise ValueError(f"expected HOST:PORT with a port in 1..65535, got {text!r}")
    return host, int(port)


def _socket(address: tuple[str, int]) -> dict[str, Any]:
    return {"socket_address": {"address": address[0], "port_value": address[1]}}


def render(
    listen: tuple[str, int],
    admin: tuple[str, int],
    endpoints: Mapping[str, Sequence[tuple[str, int]]],
    source: Path = SHIPPED,
) -> dict[str, Any]:
    """The config of ``source`` with the listener, admin and each cluster's endpoints replaced."""
    if set(endpoints) != set(CLUSTERS):
        raise ValueError(f"endpoints for exactly {CLUSTERS} are needed, got {sorted(endpoints)}")
    config = copy.deepcopy(yaml.safe_load(source.read_text()))
    config["admin"]["address"] = _socket(admin)
    [listener] = config["static_resources"]["listeners"]
    listener["address"] = _socket(listen)
    clusters = {cluster["name"]: cluster for cluster in config["static_resources"]["clusters"]}
    if set(clusters) != set(CLUSTERS):
        raise ValueError(f"{source} should define the clusters {CLUSTERS}, found {sorted(clusters)}")
    for name, addresses in endpoints.items():
        if not addresses:
            raise ValueError(f"the {name} cluster needs at least one endpoint")
        clusters[name]["load_assignment"]["endpoints"] = [
            {"lb_endpoints": [{"endpoint": {"address": _socket(address)}} for address in addresses]}
        ]
    return config


def dump(config: dict[str, Any]) -> str:
    header = f"# Rendered from {SHIPPED.name} by deploy/envoy/render.py: only addresses differ.\n"
    return header + yaml.safe_dump(config, sort_keys=False)


def write(path: Path, config: dict[str, Any]) -> Path:
    path.write_text(dump(config))
    return path


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--listen", required=True, help="HOST:PORT Envoy listens on for both services")
    parser.add_argument("--admin", required=True, help="HOST:PORT of Envoy's admin interface")
    parser.add_argument(
        "--model", action="append", required=True, help="HOST:PORT of a model replica (repeat)"
    )
    parser.add_argument(
        "--scaler", action="append", required=True, help="HOST:PORT of a scaler replica (repeat)"
    )
    parser.add_argument("--output", type=Path, help="write here instead of stdout")
    args = parser.parse_args(argv)
    try:
        config = render(
            parse_address(args.listen),
            parse_address(args.admin),
            {
                "model": [parse_address(a) for a in args.model],
                "scaler": [parse_address(a) for a in args.scaler],
            },
        )
    except ValueError as error:
        parser.error(str(error))
    if args.output:
        write(args.output, config)
    else:
        sys.stdout.write(dump(config))
    return 0


if __name__ == "__main__":
    sys.exit(main())
