"""The filesystem store at scale: what a new version costs, what one poll costs at 10 and N models, and
how long a fresh replica takes to serve N stored models (figures for docs/capacity.md).

What runs, on 127.0.0.1, in a temp directory:
- a scaler and a model service (``--workers 1``) train one tiny model (3 timesteps x 1 feature,
  LSTM(4, relu) -> Dense 1, no scaling, 1 epoch): a real artifact, signed;
- its model.keras + record are committed again under N ids (and 10 ids in a second store) through the
  store's own path (ModelWriter: allocate under the store lock, write, fsync, rename, sign), timed
  per version (wall and this process's CPU);
- per store, the calls a replica's poll makes (ArtifactStore.generation and live_reservations: what
  runs every --store-poll-seconds when nothing changed) and a full scan (what runs when something did),
  in this process, wall and CPU;
- per store, a fresh model replica (``python -m model_service --workers 1``): seconds until it answers
  SERVING (it opens its port once every stored version's record is verified and listed; no session is
  built), its resident memory, then one Predict on every model (the first call of each builds that
  version's ONNX Runtime session: each call's latency, p50/p99/max), the process tree's memory after
  them, then its idle CPU over a window (what following the store costs it: polls every second, inotify).

Targets: a fresh replica over 1 000 models SERVING within 5 s, its process tree within 400 MiB after one
Predict on every model, each first call within 20 ms; over 10 000 models SERVING within 30 s.

Usage: .venv/bin/python bench/bench_store.py               # N = 1000 and 10000 (~15 min on 2 cores)
       .venv/bin/python bench/bench_store.py --quick       # N = 100
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import secrets
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from contextlib import ExitStack
from pathlib import Path

import grpc
import numpy as np
from bench_model import service_process

from model_service.model_store import ARTIFACT_DIR, GRAPH_FILE, ModelWriter, read_version
from model_service.records import ModelRecord
from protos.lstm_stack.v1 import model_pb2, model_pb2_grpc
from service_common import codec
from service_common.artifacts import ArtifactStore

CLOCK_TICKS = os.sysconf("SC_CLK_TCK")


def tiny_request(model_id: str) -> model_pb2.TrainRequest:
    x = np.array([[i, i + 1, i + 2] for i in range(1, 14)], dtype=np.float64).reshape(13, 3, 1)
    return model_pb2.TrainRequest(
        model_id=model_id,
        spec=model_pb2.ModelSpec(
            input=model_pb2.InputShape(timesteps=3, features=1),
            layers=[model_pb2.Layer(lstm=model_pb2.LstmLayer(units=4, activation="relu"))],
            head=model_pb2.Head(task=model_pb2.REGRESSION, outputs=1),
        ),
        supervised=model_pb2.SupervisedData(x=codec.from_numpy(x), y=codec.from_numpy(np.arange(4.0, 17.0))),
        epochs=1,
        batch_size=4,
        seed=1,
    )


def timed(call: Callable[[], object], repeat: int) -> tuple[float, float]:
    """Median wall and CPU seconds of ``repeat`` calls (this process's CPU: every thread)."""
    walls, cpus = [], []
    for _ in range(repeat):
        wall, cpu = time.perf_counter(), time.process_time()
        call()
        walls.append(time.perf_counter() - wall)
        cpus.append(time.process_time() - cpu)
    return statistics.median(walls), statistics.median(cpus)


def fill(
    root: Path, key: bytes, template: tuple[ModelRecord, bytes, bytes], count: int
) -> tuple[float, float]:
    """``count`` committed copies of the template under new ids; mean wall and CPU seconds per version."""
    record, keras_bytes, graph = template
    writer = ModelWriter(ArtifactStore(root / ARTIFACT_DIR, key))
    wall, cpu = time.perf_counter(), time.process_time()
    for index in range(count):
        reserved, reservation = writer.reserve(f"m{index:06d}", record.spec, record.seed)
        copy = dataclasses.replace(record, model_id=reserved.model_id, version=reserved.version)
        writer.commit(copy, keras_bytes, graph, reservation)
    return (time.perf_counter() - wall) / count, (time.process_time() - cpu) / count


def tree_cpu_seconds(pid: int) -> float:
    """utime + stime of ``pid`` and its children (the trainer), from /proc."""
    total = 0.0
    pids = [pid]
    children = Path(f"/proc/{pid}/task/{pid}/children")
    if children.exists():
        pids += [int(child) for child in children.read_text().split()]
    for each in pids:
        try:
            fields = Path(f"/proc/{each}/stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        total += (int(fields[11]) + int(fields[12])) / CLOCK_TICKS
    return total


def rss_mib(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def tree_rss_mib(pid: int) -> float:
    """VmRSS of ``pid`` and its children (a trainer, had one started)."""
    children = Path(f"/proc/{pid}/task/{pid}/children")
    pids = [pid] + ([int(c) for c in children.read_text().split()] if children.exists() else [])
    return sum(rss_mib(each) for each in pids)


def replica_figures(store: Path, key: str, scaler: str, count: int, logs: Path, idle_seconds: float) -> dict:
    args = ["--store", str(store), "--scaler-address", scaler, "--signing-key", key, "--workers", "1"]
    args += ["--store-poll-seconds", "1"]
    began = time.monotonic()
    log = logs / f"replica-{count}.log"
    with service_process("model_service", args, log, start_timeout=3600) as (process, address):
        ready = time.monotonic() - began
        rss = rss_mib(process.pid)
        latencies = []
        with grpc.insecure_channel(address) as channel:
            stub = model_pb2_grpc.ModelServiceStub(channel)
            x = codec.from_numpy(np.array([[[1.0], [2.0], [3.0]]]))
            first = time.monotonic()
            for index in range(count):
                call = time.perf_counter()
                stub.Predict(model_pb2.PredictRequest(model_id=f"m{index:06d}", x=x), timeout=60)
                latencies.append((time.perf_counter() - call) * 1000)
            first_calls = time.monotonic() - first
        tree_after = tree_rss_mib(process.pid)
        # Idle once the calls are over: under 5 % of a core for 2 s running, or after a minute at most
        # (at thousands of models a poll alone can take more than that, and the figure says so).
        quiet_since = time.monotonic()
        while time.monotonic() - quiet_since < 60:
            before = tree_cpu_seconds(process.pid)
            time.sleep(2.0)
            if tree_cpu_seconds(process.pid) - before < 0.1:
                break
        before, wall = tree_cpu_seconds(process.pid), time.monotonic()
        time.sleep(idle_seconds)
        idle_cpu = (tree_cpu_seconds(process.pid) - before) / (time.monotonic() - wall)
        rss_after = rss_mib(process.pid)
    return {
        "ready_s": ready,
        "rss_mib_at_ready": rss,
        "first_predict_each_s": first_calls,
        "first_call_p50_ms": float(np.percentile(latencies, 50)),
        "first_call_p99_ms": float(np.percentile(latencies, 99)),
        "first_call_max_ms": max(latencies),
        "tree_rss_mib_after_calls": tree_after,
        "rss_mib_after_calls": rss_after,
        "idle_cpu_share": idle_cpu,
    }


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--models", default="1000,10000", help="models in the large stores, comma-separated")
    parser.add_argument("--idle-seconds", type=float, default=20.0, help="idle CPU window per replica")
    parser.add_argument("--json", type=Path, help="also write every figure here")
    parser.add_argument("--quick", action="store_true", help="100 models, 10 s idle windows")
    args = parser.parse_args()
    if args.quick:
        args.models, args.idle_seconds = "100", 10.0
    print(f"machine: {os.cpu_count()} cpus; load average {os.getloadavg()}", flush=True)
    key = secrets.token_hex(32)
    figures: dict[str, dict] = {}
    with ExitStack() as stack:
        root = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="bench-store-")))
        logs = root / "logs"
        logs.mkdir()
        _, scaler = stack.enter_context(
            service_process(
                "scaler_service", ["--store", str(root / "scalers"), "--workers", "1"], logs / "scaler.log"
            )
        )
        template_store = root / "template"
        args_ = [
            "--store",
            str(template_store),
            "--scaler-address",
            scaler,
            "--signing-key",
            key,
            "--workers",
            "1",
        ]
        with (
            service_process("model_service", args_, logs / "template.log") as (_, address),
            grpc.insecure_channel(address) as channel,
        ):
            events = model_pb2_grpc.ModelServiceStub(channel).Train(tiny_request("template"), timeout=300)
            [done] = [event.done for event in events if event.HasField("done")]
        stored = ArtifactStore(template_store / ARTIFACT_DIR, key.encode())
        record, keras_bytes = read_version(stored, "template", done.version)
        graph = stored.read("template", done.version, (GRAPH_FILE,))[GRAPH_FILE]
        template = (record, keras_bytes, graph)
        print(f"template: model.keras {len(keras_bytes)} bytes, model.onnx {len(graph)} bytes", flush=True)
        for count in (10, *(int(n) for n in args.models.split(","))):
            store = root / f"store-{count}"
            per_version = fill(store, key.encode(), template, count)
            artifacts = ArtifactStore(store / ARTIFACT_DIR, key.encode())
            poll = timed(lambda: (artifacts.generation(), artifacts.live_reservations(None)), 50)  # noqa: B023
            scan = timed(lambda: list(artifacts.scan()), 10)  # noqa: B023 - called at once, in this iteration
            disk = sum(f.stat().st_size for f in (store / ARTIFACT_DIR).rglob("*") if f.is_file())
            print(
                f"{count} models: written, {disk / 2**20:.1f} MiB on disk; starting a fresh replica",
                flush=True,
            )
            replica = replica_figures(store, key, scaler, count, logs, args.idle_seconds)
            figures[str(count)] = {
                "commit_wall_ms": per_version[0] * 1000,
                "commit_cpu_ms": per_version[1] * 1000,
                "poll_wall_ms": poll[0] * 1000,
                "poll_cpu_ms": poll[1] * 1000,
                "scan_wall_ms": scan[0] * 1000,
                "scan_cpu_ms": scan[1] * 1000,
                "disk_mib": disk / 2**20,
                **replica,
            }
    print()
    print(f"{'':34}" + "".join(f"{count + ' models':>16}" for count in figures))
    rows = [
        ("commit one version, wall ms", "commit_wall_ms", 2),
        ("commit one version, CPU ms", "commit_cpu_ms", 2),
        ("poll, nothing changed: wall ms", "poll_wall_ms", 3),
        ("poll, nothing changed: CPU ms", "poll_cpu_ms", 3),
        ("full scan: wall ms", "scan_wall_ms", 2),
        ("full scan: CPU ms", "scan_cpu_ms", 2),
        ("store on disk, MiB", "disk_mib", 1),
        ("fresh replica SERVING after, s", "ready_s", 1),
        ("its RSS at SERVING, MiB", "rss_mib_at_ready", 0),
        ("first Predict on every model, s", "first_predict_each_s", 2),
        ("  one first call, p50 ms", "first_call_p50_ms", 2),
        ("  one first call, p99 ms", "first_call_p99_ms", 2),
        ("  one first call, max ms", "first_call_max_ms", 2),
        ("its process tree's RSS after, MiB", "tree_rss_mib_after_calls", 0),
        ("its RSS after those (idle), MiB", "rss_mib_after_calls", 0),
        ("its idle CPU, % of a core", "idle_cpu_share", 2),
    ]
    for label, name, digits in rows:
        scale = 100 if name == "idle_cpu_share" else 1
        print(f"  {label:32}" + "".join(f"{figures[c][name] * scale:16.{digits}f}" for c in figures))
    print()
    checks = [
        ("1000", "ready_s", 5.0, "fresh replica over 1 000 models SERVING, s"),
        ("1000", "tree_rss_mib_after_calls", 400.0, "its tree after one Predict on every model, MiB"),
        ("1000", "first_call_max_ms", 20.0, "its slowest first call, ms"),
        ("10000", "ready_s", 30.0, "fresh replica over 10 000 models SERVING, s"),
    ]
    for models, name, limit, label in checks:
        if models in figures:
            value = figures[models][name]
            print(f"  {label:50}{value:10.2f}  <= {limit:g}  {'yes' if value <= limit else 'NO'}")
    print(f"\n(every figure from this run; load average now {os.getloadavg()})")
    if args.json:
        args.json.write_text(json.dumps(figures, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
