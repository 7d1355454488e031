"""Container healthcheck: ask a server's grpc.health.v1 endpoint and exit 0 only when it is SERVING.

Usage: ``python -m service_common.healthcheck ADDRESS [--service NAME] [--timeout S] [TLS options]``.
Exit codes: 0 SERVING, 1 anything else (NOT_SERVING, unknown service, unreachable, deadline, unreadable
TLS file), 2 bad usage.

Health is exempt from bearer tokens but not from TLS: with ``--tls-ca`` (or ``--tls``, system roots) the
check speaks TLS, with ``--tls-cert``/``--tls-key`` it shows a client certificate (mutual TLS), and
``--tls-server-name`` is the name the server certificate must carry when it does not name ADDRESS (a
container checks itself on 127.0.0.1 but its certificate names the compose service). Every TLS option
also comes from the environment (``LSTM_HEALTHCHECK_TLS_CA``, ...) so a compose healthcheck command stays
the same whether TLS is on or off. It imports only grpc, the health stubs and the TLS helpers, so a
check stays cheap enough to run every few seconds.
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

from service_common.channels import open_channel

EXIT_SERVING = 0
EXIT_UNHEALTHY = 1
ENV_PREFIX = "LSTM_HEALTHCHECK_"


@dataclass(frozen=True)
class TlsOptions:
    """TLS for the check: on when ``enabled`` or any file is given; files are PEM paths."""

    enabled: bool = False
    root_ca: str = ""
    client_cert: str = ""
    client_key: str = ""
    server_name: str = ""

    @property
    def active(self) -> bool:
        return self.enabled or bool(self.root_ca or self.client_cert or self.client_key)


def _open_channel(address: str, tls: TlsOptions | None) -> grpc.Channel:
    if tls is None or not tls.active:
        return open_channel(address)
    return open_channel(
        address,
        tls=True,
        tls_root_cert=tls.root_ca or None,
        tls_client_cert=tls.client_cert or None,
        tls_client_key=tls.client_key or None,
        tls_server_name=tls.server_name,
    )


def check(
    address: str, service: str = "", timeout: float = 3.0, tls: TlsOptions | None = None
) -> tuple[bool, str]:
    """Return (serving, human-readable status) for ``service`` ("" = the whole server) at ``address``."""
    try:
        channel = _open_channel(address, tls)
    except ValueError as error:  # an unreadable or half-given TLS file
        return False, f"TLS configuration: {error}"
    with channel:
        stub = health_pb2_grpc.HealthStub(channel)
        try:
            # wait_for_ready: a server still binding its port gets the whole timeout, not an instant failure.
            response = stub.Check(
                health_pb2.HealthCheckRequest(service=service), timeout=timeout, wait_for_ready=True
            )
        except grpc.RpcError as error:
            code = error.code()
            return False, f"{code.name if code else 'UNKNOWN'}: {error.details()}"
    status_name = health_pb2.HealthCheckResponse.ServingStatus.Name(response.status)
    return response.status == health_pb2.HealthCheckResponse.SERVING, status_name


def _env_flag(environ: Mapping[str, str], name: str) -> bool:
    return environ.get(name, "").strip().lower() in {"1", "true", "yes", "on"}


def main(argv: Sequence[str] | None = None, environ: Mapping[str, str] | None = None) -> int:
    env = os.environ if environ is None else environ
    parser = argparse.ArgumentParser(
        prog="python -m service_common.healthcheck",
        description="Exit 0 only when the gRPC health service at ADDRESS reports SERVING.",
    )
    parser.add_argument("address", metavar="ADDRESS", help="host:port of the server, e.g. 127.0.0.1:50051")
    parser.add_argument(
        "--service", default="", help="fully qualified service name to check (default: the whole server)"
    )
    parser.add_argument(
        "--timeout", type=float, default=3.0, help="seconds to wait for an answer (default 3)"
    )
    tls = parser.add_argument_group("TLS (each option also from the environment variable named)")
    tls.add_argument(
        "--tls",
        action="store_true",
        default=_env_flag(env, ENV_PREFIX + "TLS"),
        help=f"use TLS trusting the system roots (env {ENV_PREFIX}TLS=1)",
    )
    for flag, what in (
        ("ca", "PEM root certificate to trust; implies TLS"),
        ("cert", "PEM client certificate, for servers that require mutual TLS"),
        ("key", "PEM key of the client certificate"),
        ("server-name", "name the server certificate must carry (default: the host of ADDRESS)"),
    ):
        env_name = f"{ENV_PREFIX}TLS_{flag.replace('-', '_').upper()}"
        tls.add_argument(f"--tls-{flag}", default=env.get(env_name, ""), help=f"{what} (env {env_name})")
    args = parser.parse_args(argv)
    if args.timeout <= 0:
        parser.error(f"--timeout must be positive, got {args.timeout}")
    if bool(args.tls_cert) != bool(args.tls_key):
        parser.error("--tls-cert and --tls-key must be given together")
    options = TlsOptions(args.tls, args.tls_ca, args.tls_cert, args.tls_key, args.tls_server_name)
    serving, status = check(args.address, args.service, args.timeout, options)
    label = args.service or "<server>"
    scheme = " (tls)" if options.active else ""
    print(f"{args.address}{scheme} {label}: {status}", file=sys.stdout if serving else sys.stderr)
    return EXIT_SERVING if serving else EXIT_UNHEALTHY


if __name__ == "__main__":
    sys.exit(main())
