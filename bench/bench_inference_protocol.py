"""Open Inference Protocol bench: tritonclient against the model service, next to the MLServer reference.

Starts a scaler service and a model service as separate processes on 127.0.0.1 (free ports picked by the
OS), trains the seed notes' example-1 stacked LSTM (LSTM(10,relu) -> LSTM(2,relu) -> LSTM(10,relu),
MinMax-scaled x), then drives inference.GRPCInferenceService/ModelInfer with tritonclient.grpc:

- sequential: one client, batch 1, p50/p99 latency;
- concurrent: N threads (32 by default), each with its own InferenceServerClient (its own channel, as
  independent callers would have), batch 1, requests per second over a fixed duration.

Both runs follow a 4-second warm-up load (the service compiles its hot batch-size buckets with XLA).

Reference (MLServer 1.7.1 serving the same seed model on these machines): p50 1.8 ms sequentially and
700-780 req/s with 32 clients; the target is half that latency and twice that throughput.

Usage: .venv/bin/python bench/bench_inference_protocol.py [--requests 2000] [--clients 32] [--seconds 10]
"""

from __future__ import annotations

import argparse
import os
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from pathlib import Path

import grpc
import numpy as np
import tritonclient.grpc as triton
from grpc_health.v1 import health_pb2, health_pb2_grpc

from demo.seed_examples import example1_windows
from demo.services import free_port
from protos.lstm_stack.v1 import model_pb2, model_pb2_grpc, scaler_pb2
from service_common import codec

REPO_ROOT = Path(__file__).resolve().parent.parent

REFERENCE_P50_MS = 1.8
REFERENCE_RPS = (700.0, 780.0)
MODEL_ID = "bench-seed-example-1"


def wait_serving(address: str, process: subprocess.Popen[bytes], timeout: float = 180.0) -> None:
    deadline = time.monotonic() + timeout
    with grpc.insecure_channel(address) as channel:
        health = health_pb2_grpc.HealthStub(channel)
        while True:
            if process.poll() is not None:
                raise RuntimeError(f"service on {address} exited with code {process.returncode}")
            try:
                status = health.Check(health_pb2.HealthCheckRequest(), timeout=1.0).status
                if status == health_pb2.HealthCheckResponse.SERVING:
                    return
            except grpc.RpcError:
                pass
            if time.monotonic() > deadline:
                raise RuntimeError(f"service on {address} not SERVING after {timeout:.0f}s")
            time.sleep(0.25)


@contextmanager
def service(module: str, *args: str, env: dict[str, str], log: Path) -> Iterator[str]:
    """Run ``python -m module`` on a free 127.0.0.1 port; yield its address once SERVING; always stop it."""
    port = free_port()
    with log.open("wb") as log_file:
        process = subprocess.Popen(
            [sys.executable, "-m", module, "--host", "127.0.0.1", "--port", str(port), *args],
            cwd=REPO_ROOT,
            env=env,
            stdout=log_file,
            stderr=subprocess.STDOUT,
        )
        try:
            wait_serving(f"127.0.0.1:{port}", process)
            yield f"127.0.0.1:{port}"
        finally:
            process.send_signal(signal.SIGTERM)
            try:
                process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()


def train(model_address: str) -> int:
    x, y = example1_windows()
    lstm = model_pb2.LstmLayer
    spec = model_pb2.ModelSpec(
        input=model_pb2.InputShape(timesteps=3, features=1),
        layers=[
            model_pb2.Layer(lstm=lstm(units=10, activation="relu", return_sequences=True)),
            model_pb2.Layer(lstm=lstm(units=2, activation="relu", return_sequences=True)),
            model_pb2.Layer(lstm=lstm(units=10, activation="relu")),
        ],
        head=model_pb2.Head(task=model_pb2.REGRESSION, outputs=1),
    )
    request = model_pb2.TrainRequest(
        model_id=MODEL_ID,
        spec=spec,
        supervised=model_pb2.SupervisedData(x=codec.from_numpy(x), y=codec.from_numpy(y)),
        epochs=20,
        batch_size=4,
        seed=7,
        x_scaling=scaler_pb2.ScalerSpec(kind=scaler_pb2.MINMAX),
    )
    with grpc.insecure_channel(model_address) as channel:
        version = 0
        for event in model_pb2_grpc.ModelServiceStub(channel).Train(request, timeout=600):
            if event.HasField("done"):
                version = event.done.version
    if not version:
        raise RuntimeError("training finished without a model")
    return version


def infer_input(x: np.ndarray) -> list[triton.InferInput]:
    tensor = triton.InferInput("x", list(x.shape), "FP32")
    tensor.set_data_from_numpy(x)
    return [tensor]


def sequential(address: str, requests: int, warmup: int) -> np.ndarray:
    client = triton.InferenceServerClient(address)
    inputs = infer_input(np.array([[[50.0], [60.0], [70.0]]], dtype=np.float32))
    for _ in range(warmup):
        client.infer(MODEL_ID, inputs)
    latencies = np.empty(requests)
    for i in range(requests):
        start = time.perf_counter()
        client.infer(MODEL_ID, inputs)
        latencies[i] = time.perf_counter() - start
    client.close()
    return latencies * 1000.0


def sequential_predict(address: str, requests: int, warmup: int) -> np.ndarray:
    """The same query through the service's own Predict RPC: the control that isolates protocol overhead."""
    with grpc.insecure_channel(address) as channel:
        stub = model_pb2_grpc.ModelServiceStub(channel)
        request = model_pb2.PredictRequest(
            model_id=MODEL_ID, x=codec.from_numpy(np.array([[[50.0], [60.0], [70.0]]], dtype=np.float32))
        )
        for _ in range(warmup):
            stub.Predict(request, timeout=10)
        latencies = np.empty(requests)
        for i in range(requests):
            start = time.perf_counter()
            stub.Predict(request, timeout=10)
            latencies[i] = time.perf_counter() - start
    return latencies * 1000.0


def concurrent(address: str, clients: int, seconds: float) -> tuple[int, float, int, np.ndarray]:
    """(completed requests, elapsed seconds, errors, latencies in ms) with ``clients`` threads hammering
    for ``seconds``; only requests that finished before the clock stopped count."""
    start_line = threading.Barrier(clients + 1)
    stop = threading.Event()
    counts = [0] * clients
    errors = [0] * clients
    latencies: list[list[float]] = [[] for _ in range(clients)]

    def run(index: int) -> None:
        client = triton.InferenceServerClient(address)
        inputs = infer_input(np.array([[[index], [index + 1.0], [index + 2.0]]], dtype=np.float32))
        try:
            client.infer(MODEL_ID, inputs)  # connect before the clock starts
        except triton.InferenceServerException:
            errors[index] += 1
        start_line.wait()  # reached even after a failed warm-up, or the others would wait forever
        while not stop.is_set():
            began = time.perf_counter()
            try:
                client.infer(MODEL_ID, inputs)
            except triton.InferenceServerException:
                errors[index] += 1
                continue
            if not stop.is_set():
                counts[index] += 1
                latencies[index].append(time.perf_counter() - began)
        client.close()

    threads = [threading.Thread(target=run, args=(i,), daemon=True) for i in range(clients)]
    for thread in threads:
        thread.start()
    start_line.wait()
    began = time.perf_counter()
    time.sleep(seconds)
    done_at_stop = sum(counts)
    elapsed = time.perf_counter() - began
    stop.set()
    for thread in threads:
        thread.join()
    return done_at_stop, elapsed, sum(errors), np.asarray([t for per in latencies for t in per]) * 1000.0


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--requests", type=int, default=2000, help="sequential requests measured")
    parser.add_argument("--warmup", type=int, default=200)
    parser.add_argument("--clients", type=int, default=32)
    parser.add_argument("--seconds", type=float, default=10.0, help="duration of the concurrent run")
    args = parser.parse_args()

    load_before = os.getloadavg()[0]
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3"}
    with ExitStack() as stack:
        store = stack.enter_context(tempfile.TemporaryDirectory(prefix="bench-oip-"))
        logs = Path(store)
        scaler_args = ("--store", f"{store}/scalers")
        scaler = stack.enter_context(
            service("scaler_service", *scaler_args, env=env, log=logs / "scaler.log")
        )
        model_args = ("--store", f"{store}/models", "--scaler-address", scaler)
        address = stack.enter_context(service("model_service", *model_args, env=env, log=logs / "model.log"))
        version = train(address)
        print(f"model service on {address}; trained {MODEL_ID} v{version} (seed example 1)")
        print(f"cpus: {os.cpu_count()}  python: {sys.version.split()[0]}  client: tritonclient.grpc")
        # Warm-up load: the batch-size buckets it uses get hot and are compiled with XLA in the
        # background, as in a server's first seconds of traffic; measurements start after.
        concurrent(address, args.clients, 4.0)
        time.sleep(4.0)

        latencies = sequential(address, args.requests, args.warmup)
        p50, p99 = np.percentile(latencies, [50, 99])
        predict_p50, predict_p99 = np.percentile(
            sequential_predict(address, args.requests, args.warmup), [50, 99]
        )
        done, elapsed, errors, busy = concurrent(address, args.clients, args.seconds)
        rps = done / elapsed
        busy_p50, busy_p99 = np.percentile(busy, [50, 99]) if len(busy) else (float("nan"),) * 2

    reference_rps = sum(REFERENCE_RPS) / 2
    print()
    print(f"{'':34}{'lstm-stack':>12}{'MLServer 1.7.1':>16}{'ratio':>9}{'target':>9}")
    print(
        f"{'sequential p50 latency, batch 1':34}{p50:>9.3f} ms{REFERENCE_P50_MS:>13.1f} ms"
        f"{REFERENCE_P50_MS / p50:>8.2f}x{2.0:>8.1f}x"
    )
    print(f"{'sequential p99 latency, batch 1':34}{p99:>9.3f} ms{'-':>16}")
    print(f"{'  control: own Predict RPC p50':34}{predict_p50:>9.3f} ms{'-':>16}")
    print(f"{'  control: own Predict RPC p99':34}{predict_p99:>9.3f} ms{'-':>16}")
    print(
        f"{f'throughput, {args.clients} clients':34}{rps:>8.0f} r/s{'700-780 r/s':>16}"
        f"{rps / reference_rps:>8.2f}x{2.0:>8.1f}x"
    )
    print(f"{f'  p50 latency, {args.clients} clients':34}{busy_p50:>9.3f} ms{'-':>16}")
    print(f"{f'  p99 latency, {args.clients} clients':34}{busy_p99:>9.3f} ms{'-':>16}")
    print()
    print(f"({args.requests} sequential requests after {args.warmup} warm-up; {done} concurrent requests in")
    print(
        f" {elapsed:.1f} s, {errors} errors; load average before/after {load_before:.1f}/{os.getloadavg()[0]:.1f};"
    )
    print(" latency ratio = reference p50 / ours, so higher is better;")
    print(f" throughput ratio against the reference's midpoint {reference_rps:.0f} r/s)")
    latency_met = p50 <= REFERENCE_P50_MS / 2
    throughput_met = rps >= 2 * REFERENCE_RPS[1]
    print(
        f"targets met: half the latency {'yes' if latency_met else 'NO'}, "
        f"twice the throughput (>= {2 * REFERENCE_RPS[1]:.0f} r/s) {'yes' if throughput_met else 'NO'}"
    )


if __name__ == "__main__":
    main()
