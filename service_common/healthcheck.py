"""Container healthcheck: ask a server's grpc.health.v1 endpoint and exit 0 only when it is SERVING.

Usage: ``python -m service_common.healthcheck ADDRESS [--service NAME] [--timeout S]``.
Exit codes: 0 SERVING, 1 anything else (NOT_SERVING, unknown service, unreachable, deadline), 2 bad usage.
It imports only grpc and the health stubs so a check stays cheap enough to run every few seconds.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

EXIT_SERVING = 0
EXIT_UNHEALTHY = 1


def check(address: str, service: str = "", timeout: float = 3.0) -> tuple[bool, str]:
    """Return (serving, human-readable status) for ``service`` ("" = the whole server) at ``address``."""
    with grpc.insecure_channel(address) as channel:
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


def main(argv: Sequence[str] | None = None) -> int:
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
    args = parser.parse_args(argv)
    if args.timeout <= 0:
        parser.error(f"--timeout must be positive, got {args.timeout}")
    serving, status = check(args.address, args.service, args.timeout)
    label = args.service or "<server>"
    print(f"{args.address} {label}: {status}", file=sys.stdout if serving else sys.stderr)
    return EXIT_SERVING if serving else EXIT_UNHEALTHY


if __name__ == "__main__":
    sys.exit(main())
