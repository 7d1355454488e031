"""Paired A/B of our own model service under different settings, driven by h2load.

bench_serving.py sets us against MLServer; this one answers "does this setting make us faster?" on a
machine whose speed drifts from minute to minute (a shared VM here moved ±30 % between runs of the
same code). Every variant's server is up at once, idle while another is measured, and each load is
measured on every variant back to back, in alternating order, many times; the figure to read is the
median of the per-repetition ratios to the first variant, not the rates.

Each variant is a name and the model-service flags it adds, e.g.
    .venv/bin/python bench/bench_variants.py --variant asyncio="--event-loop asyncio" --variant uvloop=""
    .venv/bin/python bench/bench_variants.py --variant batched="" --variant wait1="--max-batch-wait-ms 1"
Loads: seed/48x4 ModelInfer and Predict, and the no-op (health Check), each with C callers
(``--loads seed:32,noop:32,seed:1``). Models and requests are bench_serving's.
"""

from __future__ import annotations

import argparse
import shlex
import statistics
import tempfile
import time
from contextlib import ExitStack
from pathlib import Path

from bench_model import HEALTH_CHECK, PREDICT, service_process
from bench_serving import bench_models, infer_request, predict_request, train
from grpc_h2load import check_sample, ensure_nghttp2_client, run_h2load, write_request
from grpc_health.v1 import health_pb2

MODEL_INFER = "/inference.GRPCInferenceService/ModelInfer"


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--variant", action="append", required=True, help='NAME="model-service flags"')
    parser.add_argument("--loads", default="seed:32,noop:32,48x4:32,seed:1", help="TARGET:CALLERS,...")
    parser.add_argument("--repetitions", type=int, default=6)
    parser.add_argument("--seconds", type=float, default=3.0, help="h2load's measured duration per run")
    parser.add_argument("--workers", type=int, default=1)
    args = parser.parse_args()
    variants = dict(v.split("=", 1) if "=" in v else (v, "") for v in args.variant)
    loads = [(target, int(callers)) for target, callers in (x.split(":") for x in args.loads.split(","))]
    ensure_nghttp2_client()

    root = Path(tempfile.mkdtemp(prefix="bench-variants-"))
    (root / "logs").mkdir()
    key = "variants-bench-key-" + "k" * 16
    models = {m.key: m for m in bench_models()}
    requests = {"noop": (HEALTH_CHECK, health_pb2.HealthCheckRequest().SerializeToString())}
    for name, model in models.items():
        requests[name] = (MODEL_INFER, infer_request(model))
        requests[f"predict-{name}"] = (PREDICT, predict_request(model))
    bodies = {name: write_request(root / f"{name}.bin", body) for name, (_, body) in requests.items()}

    rates: dict[tuple[str, int, str], list[float]] = {}
    with ExitStack() as stack:
        scaler_args = ["--store", str(root / "scalers"), "--signing-key", key]
        _, scaler = stack.enter_context(
            service_process("scaler_service", scaler_args, root / "logs/scaler.log")
        )
        model_args = ["--store", str(root / "models"), "--scaler-address", scaler, "--signing-key", key]
        with service_process("model_service", model_args, root / "logs/train.log") as (_, address):
            for model in models.values():
                train(address, model)
        urls = {}
        for name, flags in variants.items():
            extra = ["--workers", str(args.workers), *shlex.split(flags)]
            _, address = stack.enter_context(
                service_process("model_service", [*model_args, *extra], root / f"logs/{name}.log")
            )
            urls[name] = f"http://{address}"
            for target in requests:
                check_sample(urls[name] + requests[target][0], bodies[target])
                run_h2load(urls[name] + requests[target][0], bodies[target], 32, 1, 3, 1)  # XLA buckets
        print(
            f"variants: {variants}; {args.repetitions} repetitions x {args.seconds:g} s per load", flush=True
        )
        time.sleep(2)
        for repetition in range(args.repetitions):
            order = list(variants) if repetition % 2 == 0 else list(variants)[::-1]
            for target, callers in loads:
                for name in order:
                    report, _ = run_h2load(
                        urls[name] + requests[target][0], bodies[target], callers, 1, args.seconds, 0.5
                    )
                    rates.setdefault((target, callers, name), []).append(report.requests_per_second)
            print(f"repetition {repetition + 1} of {args.repetitions} done", flush=True)

    first = next(iter(variants))
    print(f"\nreq/s (median, all runs) and the median of the per-repetition ratios to {first!r}:")
    for target, callers in loads:
        base = rates[(target, callers, first)]
        for name in variants:
            runs = rates[(target, callers, name)]
            ratios = [ours / theirs for ours, theirs in zip(runs, base, strict=True)]
            print(
                f"  {target:13s} c={callers:<3d} {name:10s} {statistics.median(runs):7.0f}   "
                f"x{statistics.median(ratios):.2f} ({min(ratios):.2f}-{max(ratios):.2f})   "
                f"runs {[round(r) for r in runs]}"
            )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
