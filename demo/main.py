"""`python -m demo`: start both services locally (or use running ones), run the seed walkthrough, stop."""

from __future__ import annotations

import argparse
import os
import sys
import time
from collections.abc import Sequence
from pathlib import Path

from lstm_stack_client import LstmStackError, connect

from demo import walkthrough
from demo.services import REPO_ROOT, LocalStack


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m demo",
        description="The seed walkthrough through the lstm-stack client. Without addresses it starts "
        "both services on free 127.0.0.1 ports with stores under ./run and stops them afterwards.",
    )
    parser.add_argument("--scaler-address", help="use a running scaler service (host:port)")
    parser.add_argument("--model-address", help="use a running model service (host:port)")
    parser.add_argument("--output", type=Path, default=Path("demo-output"), help="where plots go")
    parser.add_argument(
        "--run-dir", type=Path, default=REPO_ROOT / "run", help="stores and logs of local services"
    )
    parser.add_argument("--epochs", type=int, help="epochs for every example (defaults: 400, 300 and 60)")
    parser.add_argument("--seed", type=int, default=walkthrough.Settings.seed, help="training seed")
    parser.add_argument("--wait", type=float, default=180.0, help="seconds to wait for the services to serve")
    secure = parser.add_argument_group("running services with auth / TLS (README: Security)")
    env = os.environ
    secure.add_argument(
        "--token",
        default=env.get("LSTM_STACK_TOKEN") or None,
        help="bearer token sent on every call (env LSTM_STACK_TOKEN)",
    )
    secure.add_argument(
        "--tls-ca", default=env.get("LSTM_STACK_TLS_CA") or None, help="PEM CA to trust; turns TLS on"
    )
    secure.add_argument(
        "--tls-cert", default=env.get("LSTM_STACK_TLS_CERT") or None, help="PEM client certificate (mTLS)"
    )
    secure.add_argument(
        "--tls-key", default=env.get("LSTM_STACK_TLS_KEY") or None, help="PEM client key (mTLS)"
    )
    args = parser.parse_args(argv)
    if bool(args.scaler_address) != bool(args.model_address):
        parser.error("give both --scaler-address and --model-address, or neither")
    if (args.tls_ca or args.tls_cert or args.tls_key) and not args.scaler_address:
        parser.error("TLS options are for running services: give --scaler-address and --model-address")
    if bool(args.tls_cert) != bool(args.tls_key):
        parser.error("--tls-cert and --tls-key go together (mutual TLS)")
    if args.epochs is not None and args.epochs < 1:
        parser.error("--epochs must be at least 1")
    return args


def _settings(args: argparse.Namespace) -> walkthrough.Settings:
    defaults = walkthrough.Settings(output=args.output)
    return walkthrough.Settings(
        output=args.output,
        epochs1=args.epochs or defaults.epochs1,
        epochs2=args.epochs or defaults.epochs2,
        epochs3=args.epochs or defaults.epochs3,
        seed=args.seed,
    )


def run_against(scaler_address: str, model_address: str, args: argparse.Namespace) -> walkthrough.Results:
    with connect(
        scaler_address=scaler_address,
        model_address=model_address,
        token=args.token,
        tls_root_cert=args.tls_ca,
        tls_client_cert=args.tls_cert,
        tls_client_key=args.tls_key,
    ) as client:
        client.wait_until_serving(args.wait)
        return walkthrough.run(client, _settings(args))


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    started = time.monotonic()
    try:
        if args.scaler_address:
            print(
                f"using running services: scaler {args.scaler_address}, model {args.model_address}",
                flush=True,
            )
            run_against(args.scaler_address, args.model_address, args)
        else:
            print(
                f"starting the scaler and model services (stores and logs in {args.run_dir}) ...", flush=True
            )
            stack = LocalStack(args.run_dir)
            try:
                stack.start(args.wait)
                print(
                    f"services SERVING after {time.monotonic() - started:.1f}s: "
                    f"scaler {stack.scaler_address}, model {stack.model_address}",
                    flush=True,
                )
                run_against(stack.scaler_address, stack.model_address, args)
            finally:
                codes = stack.stop()
                print(f"services stopped (exit codes {codes})", flush=True)
    except KeyboardInterrupt:
        print("\ninterrupted", file=sys.stderr)
        return 130
    except (LstmStackError, RuntimeError) as exc:
        print(f"demo failed: {exc}", file=sys.stderr)
        return 1
    print(f"demo finished in {time.monotonic() - started:.1f}s", flush=True)
    return 0
