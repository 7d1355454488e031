"""Scaler service bench: Transform over gRPC vs in-process scikit-learn, and a 10M-row streaming fit.

Run: .venv/bin/python bench/bench_scaler.py [--quick]

Starts its own scaler service as a subprocess on 127.0.0.1 port 0 (so its memory can be read from
/proc/<pid>/status) with a throw-away store, and prints figures and ratios. Not part of the test suite.
"""

from __future__ import annotations

import argparse
import os
import re
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import grpc
import numpy as np
from sklearn.preprocessing import StandardScaler

from protos.lstm_stack.v1 import scaler_pb2, scaler_pb2_grpc
from service_common import codec
from service_common.channels import message_size_options

REPO_ROOT = Path(__file__).resolve().parents[1]

FEATURES = 3
LISTENING = re.compile(r"listening on 127\.0\.0\.1:(\d+)")
CHANNEL_OPTIONS = message_size_options(256 * 1024 * 1024)
STANDARD = scaler_pb2.ScalerSpec(kind=scaler_pb2.STANDARD)


class ServerProcess:
    """`python -m scaler_service` on a free port; stderr to a log file read for the bound port."""

    def __init__(self, store: Path) -> None:
        self.log_path = store.parent / f"{store.name}.log"
        self._log = open(self.log_path, "w")  # noqa: SIM115 - closed in stop()
        self.process = subprocess.Popen(
            [sys.executable, "-m", "scaler_service", "--port", "0", "--store", str(store)],
            cwd=REPO_ROOT,
            stderr=self._log,
            stdout=self._log,
            env={**os.environ, "LSTM_SCALER_MAX_MESSAGE_MB": "128"},
        )
        self.port = self._wait_for_port()
        self.channel = grpc.insecure_channel(f"127.0.0.1:{self.port}", options=CHANNEL_OPTIONS)
        self.stub = scaler_pb2_grpc.ScalerServiceStub(self.channel)

    def _wait_for_port(self) -> int:
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"scaler service exited:\n{self.log_path.read_text()}")
            match = LISTENING.search(self.log_path.read_text())
            if match:
                return int(match.group(1))
            time.sleep(0.05)
        raise RuntimeError("scaler service did not report its port")

    def memory_kb(self, field: str) -> int:
        for line in Path(f"/proc/{self.process.pid}/status").read_text().splitlines():
            if line.startswith(field + ":"):
                return int(line.split()[1])
        raise KeyError(field)

    def stop(self) -> None:
        self.channel.close()
        self.process.terminate()
        try:
            self.process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()
        self._log.close()


def _timings(call: Callable[[], object], iterations: int, warmup: int) -> list[float]:
    for _ in range(warmup):
        call()
    seconds = []
    for _ in range(iterations):
        start = time.perf_counter()
        call()
        seconds.append(time.perf_counter() - start)
    return seconds


def _summary(seconds: list[float], rows: int) -> tuple[float, float, float]:
    """(p50 ms, p99 ms, rows/s over the sequential calls)."""
    ordered = sorted(seconds)
    p99 = ordered[min(len(ordered) - 1, int(round(0.99 * (len(ordered) - 1))))]
    return statistics.median(ordered) * 1e3, p99 * 1e3, rows * len(seconds) / sum(seconds)


def bench_transform(server: ServerProcess, quick: bool) -> None:
    rng = np.random.default_rng(0)
    train = rng.normal(size=(10_000, FEATURES)) * [1, 10, 100] + [0, 5, -5]
    info = server.stub.Fit(scaler_pb2.FitRequest(spec=STANDARD, data=codec.from_numpy(train)))
    local = StandardScaler().fit(train)
    print("\n== Transform, StandardScaler, float64 x 3 features (sequential calls, one client) ==")
    print("gRPC = client encode + call + server decode/validate/transform/encode + client decode")
    header = f"{'rows':>9} | {'gRPC p50':>9} {'p99':>9} {'rows/s':>11} | {'sklearn p50':>11} {'p99':>9} {'rows/s':>11} | {'p50 ratio':>9} {'thru ratio':>10}"
    print(header)
    print("-" * len(header))
    plan = [(1, 2000, 100), (1_000, 1000, 50), (1_000_000, 20, 2)]
    if quick:
        plan = [(1, 200, 20), (1_000, 100, 10), (1_000_000, 4, 1)]
    for rows, iterations, warmup in plan:
        data = rng.normal(size=(rows, FEATURES))

        def over_grpc(data: np.ndarray = data) -> np.ndarray:
            request = scaler_pb2.TransformRequest(scaler_id=info.id, data=codec.from_numpy(data))
            return codec.to_numpy(server.stub.Transform(request, timeout=60).data)

        np.testing.assert_allclose(over_grpc(), local.transform(data), rtol=1e-12, atol=1e-12)
        remote = _summary(_timings(over_grpc, iterations, warmup), rows)

        def in_process(data: np.ndarray = data) -> np.ndarray:
            return np.asarray(local.transform(data))

        inproc = _summary(_timings(in_process, iterations, warmup), rows)
        print(
            f"{rows:>9,} | {remote[0]:>7.3f}ms {remote[1]:>7.3f}ms {remote[2]:>11,.0f} | "
            f"{inproc[0]:>9.3f}ms {inproc[1]:>7.3f}ms {inproc[2]:>11,.0f} | "
            f"{remote[0] / inproc[0]:>8.1f}x {inproc[2] / remote[2]:>9.1f}x"
        )
    print("ratios: gRPC p50 / sklearn p50, and sklearn rows/s / gRPC rows/s (how many times slower)")


def _chunks(rows: int, chunk_rows: int, seed: int) -> Iterator[scaler_pb2.FitChunk]:
    rng = np.random.default_rng(seed)
    yield scaler_pb2.FitChunk(spec=STANDARD)
    sent = 0
    while sent < rows:
        n = min(chunk_rows, rows - sent)
        yield scaler_pb2.FitChunk(data=codec.from_numpy(rng.normal(3.0, 2.0, size=(n, FEATURES))))
        sent += n


def bench_stream(store: Path, rows_plan: list[int], chunk_rows: int) -> None:
    server = ServerProcess(store)
    try:
        # Warm up imports and code paths so the baseline is the steady-state server.
        server.stub.FitStream(_chunks(10_000, 5_000, seed=1))
        base_hwm, base_rss = server.memory_kb("VmHWM"), server.memory_kb("VmRSS")
        print(
            f"\n== FitStream (partial_fit), StandardScaler, {FEATURES} features, {chunk_rows:,}-row chunks =="
        )
        print(f"server after warm-up: VmRSS {base_rss / 1024:.0f} MB, VmHWM (peak) {base_hwm / 1024:.0f} MB")
        header = f"{'rows':>11} | {'raw data':>9} | {'seconds':>7} {'rows/s':>11} {'MB/s':>6} | {'server peak RSS':>15} {'peak growth':>11}"
        print(header)
        print("-" * len(header))
        for rows in rows_plan:
            start = time.perf_counter()
            info = server.stub.FitStream(_chunks(rows, chunk_rows, seed=rows), timeout=600)
            elapsed = time.perf_counter() - start
            assert info.n_samples_seen == rows, info.n_samples_seen
            assert np.allclose(info.statistics.mean, 3.0, atol=0.05), list(info.statistics.mean)
            raw_mb = rows * FEATURES * 8 / 1e6
            hwm = server.memory_kb("VmHWM")
            print(
                f"{rows:>11,} | {raw_mb:>6.0f} MB | {elapsed:>7.2f} {rows / elapsed:>11,.0f} "
                f"{raw_mb / elapsed:>6.0f} | {hwm / 1024:>12.0f} MB {(hwm - base_hwm) / 1024:>8.0f} MB"
            )
        print(
            "peak growth = VmHWM after the stream minus VmHWM after warm-up; flat in rows means the "
            "10M-row stream grows the peak no more than the 1M-row one, and far less than its raw size"
        )
    finally:
        server.stop()


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--quick", action="store_true", help="fewer iterations and a 1M-row stream (smoke run)"
    )
    args = parser.parse_args()
    started = time.perf_counter()
    print(
        f"python {sys.version.split()[0]}, numpy {np.__version__}, grpcio {grpc.__version__}, cpus {os.cpu_count()}"
    )
    with tempfile.TemporaryDirectory(prefix="bench-scaler-") as tmp:
        server = ServerProcess(Path(tmp) / "transform-store")
        try:
            bench_transform(server, args.quick)
        finally:
            server.stop()
        rows_plan = [100_000, 1_000_000] if args.quick else [1_000_000, 10_000_000]
        bench_stream(Path(tmp) / "stream-store", rows_plan, chunk_rows=100_000)
    print(f"\ntotal bench time {time.perf_counter() - started:.1f} s")


if __name__ == "__main__":
    main()
