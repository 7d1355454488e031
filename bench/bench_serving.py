"""Serving bench: lstm-stack and MLServer 1.7.1 side by side in one run, driven by h2load (a C load generator).

A Python load generator on a 2-core machine competes with the server for CPU and hides server-side
gains, so throughput and mean latency come from h2load (Debian's nghttp2-client, installed when
missing), with gRPC framed by hand (bench/grpc_h2load.py). Every target is first called once through
nghttp with the same request file and headers, and the bench stops unless its trailers say
grpc-status 0 and its body is a real response (h2load itself counts any HTTP 200 as a success). The
Python driver (grpcio, raw bytes, one caller) stays for client-side latency percentiles.

What runs, all on 127.0.0.1 with free ports, stores and logs in a temp directory:
- the previous design: this repository's model service at ``--previous`` (default: the last commit
  before serving moved from TensorFlow to ONNX Runtime), extracted into a temp dir with ``git archive``
  and run with the same venv over the same store, measured in the same interleaved rounds;
- a scaler service and a model service (``python -m ...``) from this checkout; two models are trained
  once through the model service, without scaling (so both servers compute exactly the same thing):
  the seed model (3 timesteps x 1 feature, LSTM(10,relu) -> LSTM(2,relu) -> LSTM(10,relu) -> Dense 1)
  and a realistic one (48 timesteps x 4 features, LSTM64 -> LSTM64 -> Dense 1), a few epochs each;
- MLServer 1.7.1 in its own virtualenv (bench/.mlserver-venv, made on first use, git-ignored) with
  bench/mlserver_runtime.py: the same model.keras files, read from our store through its signature
  check, served with a tf.function forward pass over gRPC (inference.GRPCInferenceService). Its access
  log (debug) and metrics are off: the fastest configuration of it, so the bar is the highest.
  ``parallel_workers`` = W, its own way of using W processes for inference.

Per W (worker processes of the model service: 1 and 2, every W up to the core count on a bigger box),
for a sequential caller (h2load -c 1 -m 1) and 32 concurrent callers (h2load -c 32 -m 1: 32 connections
with one stream each, as 32 independent clients), each row's targets are measured in interleaved
rounds (ours, theirs, ours, theirs, ...), every figure from this run:
- the no-op floor: our grpc.health.v1.Health/Check; MLServer's inference ServerLive (it serves no
  grpc.health.v1); our ServerLive too (the same method on both);
- per model: our ModelInfer, MLServer's ModelInfer (the same request bytes), our native
  lstm_stack.v1.ModelService/Predict;
- Python driver, sequential: p50/p99/mean of the same calls;
- Predict p99 (seed model, a steady trickle) idle, then while a Train call (48x4 spec, enough epochs)
  runs on another model; the Train call is cancelled once the window is measured.
Then ratios (ours / MLServer, ours / the previous design, W / W=1) against the targets, and where the
CPU went during the 32-caller ModelInfer rounds (per process and thread, from /proc).

Usage: .venv/bin/python bench/bench_serving.py            # ~10-15 min on 2 cores (3 rounds x 5 s a target)
       .venv/bin/python bench/bench_serving.py --quick    # smoke run: 1 round x 1 s, every row
"""

from __future__ import annotations

import argparse
import json
import os
import re
import secrets
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections import defaultdict
from collections.abc import Callable, Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import asdict, dataclass, field
from pathlib import Path

import grpc
import numpy as np
from bench_model import HEALTH_CHECK, PREDICT, free_port, percentiles, seed_spec, service_process
from grpc_h2load import (
    H2loadReport,
    check_sample,
    ensure_nghttp2_client,
    h2load_command,
    run_h2load,
    unframe,
    write_request,
)
from grpc_health.v1 import health_pb2

from demo.seed_examples import example1_windows
from protos.inference import grpc_service_pb2 as oip
from protos.inference import grpc_service_pb2_grpc as oip_grpc
from protos.lstm_stack.v1 import model_pb2, model_pb2_grpc
from service_common import codec
from service_common.artifacts import ArtifactStore

BENCH_DIR = Path(__file__).resolve().parent
REPO_ROOT = BENCH_DIR.parent
MLSERVER_VENV = BENCH_DIR / ".mlserver-venv"
# MLServer's worker pool breaks with newer uvloop; TF/Keras as ours, so both run the same kernels.
MLSERVER_REQUIREMENTS = ("mlserver==1.7.1", "uvloop==0.21.0", "tensorflow-cpu==2.21.0", "keras==3.15.1")
MODEL_INFER = "/inference.GRPCInferenceService/ModelInfer"
SERVER_LIVE = "/inference.GRPCInferenceService/ServerLive"
CONCURRENT_CALLERS = 32

# Targets: ours / MLServer in the same run, ours / our previous design, latency, training isolation,
# worker scaling.
TARGET_INFER_VS_MLSERVER_NOOP = 0.6
TARGET_INFER_VS_MLSERVER_INFER = {"seed": 5.0, "48x4": 10.0}
TARGET_SEQUENTIAL_OVER_NOOP_MS = 0.25  # our sequential ModelInfer mean minus our own no-op's
TARGET_CPU_VS_PREVIOUS = 0.5  # server CPU per ModelInfer call at 32 callers, ours / previous design
TARGET_TRAINING_P99 = 1.5
TARGET_WORKER_EFFICIENCY = 0.8  # W workers >= 0.8 * W x one worker
# The previous design: the last commit before serving moved from TensorFlow to ONNX Runtime.
PREDECESSOR = "81134d8"


# ---- models --------------------------------------------------------------------------------------


@dataclass(frozen=True)
class BenchModel:
    key: str
    model_id: str
    spec: model_pb2.ModelSpec
    x: np.ndarray
    y: np.ndarray
    epochs: int
    batch_size: int
    query: np.ndarray  # (1, timesteps, features) float32: the measured request


def realistic_spec() -> model_pb2.ModelSpec:
    """48 timesteps x 4 features, LSTM64 -> LSTM64 -> Dense 1 (return_sequences derived)."""
    lstm = model_pb2.LstmLayer
    return model_pb2.ModelSpec(
        input=model_pb2.InputShape(timesteps=48, features=4),
        layers=[model_pb2.Layer(lstm=lstm(units=64)), model_pb2.Layer(lstm=lstm(units=64))],
        head=model_pb2.Head(task=model_pb2.REGRESSION),
    )


def realistic_data(rows: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """``rows`` windows of 4 noisy sines, 48 steps each -> the next value of the first one."""
    rng = np.random.default_rng(seed)
    t = np.arange(rows + 48)[:, None] / np.array([7.0, 11.0, 17.0, 29.0])
    series = np.sin(t) + rng.normal(0, 0.1, t.shape)
    x = np.lib.stride_tricks.sliding_window_view(series, (48, 4))[:rows, 0].copy()
    return x, series[48 : rows + 48, 0].copy()


def bench_models() -> list[BenchModel]:
    seed_x, seed_y = example1_windows()
    real_x, real_y = realistic_data(256)
    query = np.random.default_rng(1).normal(size=(1, 48, 4)).astype(np.float32)
    return [
        BenchModel(
            "seed",
            "bench-seed",
            seed_spec(),
            seed_x,
            seed_y,
            20,
            4,
            np.array([[[50.0], [60.0], [70.0]]], np.float32),
        ),
        BenchModel("48x4", "bench-48x4", realistic_spec(), real_x, real_y, 2, 32, query),
    ]


def train(address: str, model: BenchModel) -> int:
    """Train through our service (no scaling: both servers then run the bare Keras model); the version."""
    request = model_pb2.TrainRequest(
        model_id=model.model_id,
        spec=model.spec,
        supervised=model_pb2.SupervisedData(x=codec.from_numpy(model.x), y=codec.from_numpy(model.y)),
        epochs=model.epochs,
        batch_size=model.batch_size,
        seed=1,
    )
    version = 0
    with grpc.insecure_channel(address) as channel:
        for event in model_pb2_grpc.ModelServiceStub(channel).Train(request, timeout=900):
            if event.HasField("done"):
                version = event.done.version
    if not version:
        raise RuntimeError(f"training {model.model_id} finished without a version")
    return version


# ---- request bytes and response checks ------------------------------------------------------------


def infer_request(model: BenchModel) -> bytes:
    request = oip.ModelInferRequest(
        model_name=model.model_id,
        inputs=[
            oip.ModelInferRequest.InferInputTensor(name="x", datatype="FP32", shape=list(model.query.shape))
        ],
        raw_input_contents=[model.query.astype("<f4").tobytes()],
    )
    return request.SerializeToString()


def predict_request(model: BenchModel) -> bytes:
    return model_pb2.PredictRequest(
        model_id=model.model_id, x=codec.from_numpy(model.query)
    ).SerializeToString()


def infer_values(response: bytes) -> np.ndarray:
    """The "values" output of a ModelInferResponse, raw or typed contents."""
    message = oip.ModelInferResponse.FromString(response)
    for index, output in enumerate(message.outputs):
        if output.name != "values":
            continue
        if message.raw_output_contents:
            values = np.frombuffer(message.raw_output_contents[index], dtype="<f8")
        else:
            values = np.asarray(output.contents.fp64_contents, dtype=np.float64)
        return values.reshape(tuple(output.shape))
    raise RuntimeError(f"ModelInfer answered without a 'values' output: {message}")


def predict_values(response: bytes) -> np.ndarray:
    return codec.to_numpy(model_pb2.PredictResponse.FromString(response).values)


def health_serving(response: bytes) -> np.ndarray:
    status = health_pb2.HealthCheckResponse.FromString(response).status
    if status != health_pb2.HealthCheckResponse.SERVING:
        raise RuntimeError(f"health Check answered {status}, expected SERVING")
    return np.array([1.0])


def server_live(response: bytes) -> np.ndarray:
    if not oip.ServerLiveResponse.FromString(response).live:
        raise RuntimeError("ServerLive answered live=false")
    return np.array([1.0])


# ---- MLServer ------------------------------------------------------------------------------------


def ensure_mlserver_venv(venv: Path = MLSERVER_VENV) -> Path:
    """bench/.mlserver-venv with MLSERVER_REQUIREMENTS (made once; a stamp says what is in it)."""
    stamp = venv / ".bench-requirements"
    wanted = "\n".join(MLSERVER_REQUIREMENTS)
    if (venv / "bin" / "mlserver").exists() and stamp.exists() and stamp.read_text() == wanted:
        return venv
    print(f"making {venv} ({', '.join(MLSERVER_REQUIREMENTS)}); a few minutes, once ...", flush=True)
    subprocess.run([sys.executable, "-m", "venv", "--clear", str(venv)], check=True)
    pip = [str(venv / "bin" / "python"), "-m", "pip", "install", "--quiet"]
    with (venv / "install.log").open("ab") as log:
        for command in ([*pip, "--upgrade", "pip"], [*pip, *MLSERVER_REQUIREMENTS]):
            if subprocess.run(command, stdout=log, stderr=subprocess.STDOUT).returncode != 0:
                raise RuntimeError(f"{' '.join(command)} failed; see {venv / 'install.log'}")
    stamp.write_text(wanted)
    return venv


def export_to_mlserver(store_root: Path, key: bytes, models: dict[str, int], repository: Path) -> None:
    """Each model's model.keras, read from our store through its signature check, as an MLServer model.
    The artifact directory (``<root>/<id>/<version>/``) is found under the service's --store rather than
    assumed, so the bench follows the store's layout."""
    for model_id, version in models.items():
        found = sorted(store_root.glob(f"**/{model_id}/{version}/model.keras"))
        if len(found) != 1:
            raise RuntimeError(
                f"expected one {model_id}/{version}/model.keras under {store_root}, found {found}"
            )
        artifacts = ArtifactStore(
            found[0].parent.parent.parent, key
        )  # training is over: nothing half-written
        folder = repository / model_id
        folder.mkdir(parents=True)
        (folder / "model.keras").write_bytes(artifacts.read(model_id, version)["model.keras"])
        settings = {
            "name": model_id,
            "implementation": "mlserver_runtime.KerasForward",
            "parameters": {"uri": str(folder / "model.keras"), "version": str(version)},
        }
        (folder / "model-settings.json").write_text(json.dumps(settings, indent=2))


def wait_mlserver(address: str, model_ids: list[str], process: subprocess.Popen[bytes], log: Path) -> None:
    deadline = time.monotonic() + 300
    with grpc.insecure_channel(address) as channel:
        stub = oip_grpc.GRPCInferenceServiceStub(channel)
        while True:
            if process.poll() is not None:
                raise RuntimeError(f"MLServer exited with {process.returncode}; see {log}")
            try:
                if all(stub.ModelReady(oip.ModelReadyRequest(name=m), timeout=1).ready for m in model_ids):
                    return
            except grpc.RpcError:
                pass
            if time.monotonic() > deadline:
                raise RuntimeError(f"MLServer models not ready in time; see {log}")
            time.sleep(0.5)


@contextmanager
def mlserver(
    venv: Path, repository: Path, workers: int, model_ids: list[str], log: Path
) -> Iterator[tuple[subprocess.Popen[bytes], str]]:
    """``mlserver start`` over ``repository`` with ``parallel_workers`` = workers; (process, gRPC address)."""
    grpc_port = free_port()
    settings = {
        "debug": False,  # access log off
        "parallel_workers": workers,
        "host": "127.0.0.1",
        "http_port": free_port(),
        "grpc_port": grpc_port,
        "metrics_port": free_port(),
        "metrics_endpoint": None,
        "model_repository_root": str(repository),
    }
    (repository / "settings.json").write_text(json.dumps(settings, indent=2))
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3", "PYTHONPATH": str(BENCH_DIR)}  # finds mlserver_runtime
    with log.open("ab") as log_file:
        process = subprocess.Popen(
            [str(venv / "bin" / "mlserver"), "start", str(repository)],
            cwd=repository.parent,
            env=env,
            stdout=log_file,
            stderr=subprocess.STDOUT,
            start_new_session=True,  # its worker processes with it, so a hung stop can take them all
        )
        try:
            wait_mlserver(f"127.0.0.1:{grpc_port}", model_ids, process, log)
            yield process, f"127.0.0.1:{grpc_port}"
        finally:
            process.send_signal(signal.SIGTERM)
            try:
                process.wait(timeout=60)
            except subprocess.TimeoutExpired:
                os.killpg(process.pid, signal.SIGKILL)
                process.wait()


# ---- worker processes of our model service --------------------------------------------------------


# ---- per-thread CPU, from /proc ------------------------------------------------------------------


CLOCK_TICKS = os.sysconf("SC_CLK_TCK")


def process_tree(root: int) -> list[int]:
    """``root`` and every descendant, from /proc/*/stat parent ids."""
    parents: dict[int, list[int]] = defaultdict(list)
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        parents[int(fields[1])].append(int(stat.parent.name))
    tree, todo = [], [root]
    while todo:
        pid = todo.pop()
        tree.append(pid)
        todo.extend(parents.get(pid, []))
    return tree


def thread_cpu(root: int) -> dict[tuple[str, str, int], float]:
    """CPU seconds (user + system) so far per thread of root's process tree, keyed (process, thread
    name without its trailing number, tid); the process is "main" for root, else "child <pid>"."""
    seconds: dict[tuple[str, str, int], float] = {}
    for pid in process_tree(root):
        role = "main" if pid == root else f"child {pid}"
        for task in Path(f"/proc/{pid}/task").glob("*"):
            try:
                fields = (task / "stat").read_text().rsplit(")", 1)[1].split()
                name = (task / "comm").read_text().strip()
            except OSError:
                continue
            group = re.sub(r"[-_:.#]?\d+$", "", name) or name
            seconds[(role, group, int(task.name))] = (int(fields[11]) + int(fields[12])) / CLOCK_TICKS
    return seconds


def cpu_delta(before: dict[tuple[str, str, int], float], after: dict[tuple[str, str, int], float]) -> dict:
    return {key: after[key] - before.get(key, 0.0) for key in after if after[key] - before.get(key, 0.0) > 0}


def cpu_summary(spent: dict[tuple[str, str, int], float], wall: float, top: int = 5) -> str:
    """ "process/thread-name  total % of a core (n threads, busiest %)" for the busiest groups."""
    groups: dict[tuple[str, str], list[float]] = defaultdict(list)
    for (role, group, _), value in spent.items():
        groups[(role, group)].append(value / wall * 100)
    ranked = sorted(groups.items(), key=lambda item: -sum(item[1]))[:top]
    return ", ".join(
        f"{role}/{group} {sum(values):.0f}"
        + (f" ({len(values)} thr, max {max(values):.0f})" if len(values) > 1 else "")
        for (role, group), values in ranked
    )


# ---- measurement ---------------------------------------------------------------------------------


@dataclass(frozen=True)
class Target:
    """One measured call: a server, a method, a request file; ``decode`` checks and reads a response."""

    key: str  # "ours ..." or "MLServer ..."
    address: str
    method: str
    body: Path
    decode: Callable[[bytes], np.ndarray]
    pid: int

    @property
    def url(self) -> str:
        return f"http://{self.address}{self.method}"

    def message(self) -> bytes:
        return unframe(self.body.read_bytes())[0]


@dataclass
class Measured:
    reports: list[H2loadReport] = field(default_factory=list)
    load_cpu: list[float] = field(default_factory=list)  # h2load's own CPU seconds per round
    server_cpu: dict[tuple[str, str, int], float] = field(default_factory=dict)  # per thread, all rounds
    wall: float = 0.0  # seconds the rounds took, h2load's warm-up and connection set-up included

    def rps(self) -> list[float]:
        return [r.requests_per_second for r in self.reports]

    def mean_ms(self) -> list[float]:
        return [r.mean_ms for r in self.reports]


LOADS = {"sequential": (1, 1), "32 callers": (CONCURRENT_CALLERS, 1)}


def measure_rounds(
    rows: list[list[Target]],
    load: str,
    rounds: int,
    seconds: float,
    warmup: float,
    results: dict[tuple[str, str], Measured],
) -> None:
    """Each row's targets in turn, ``rounds`` times over (ours, theirs, ours, theirs ...), row after row."""
    connections, streams = LOADS[load]
    for row in rows:
        for _ in range(rounds):
            for target in row:
                before, began = thread_cpu(target.pid), time.monotonic()
                report, load_cpu = run_h2load(target.url, target.body, connections, streams, seconds, warmup)
                spent = cpu_delta(before, thread_cpu(target.pid))
                measured = results.setdefault((load, target.key), Measured())
                measured.reports.append(report)
                measured.load_cpu.append(load_cpu)
                measured.wall += time.monotonic() - began
                for key, value in spent.items():
                    measured.server_cpu[key] = measured.server_cpu.get(key, 0.0) + value


def python_sequential(target: Target, requests: int) -> list[float]:
    """One grpcio caller, the same request bytes, ``requests`` calls after 100 unmeasured: seconds each."""
    with grpc.insecure_channel(target.address) as channel:
        call = channel.unary_unary(
            target.method, request_serializer=lambda b: b, response_deserializer=lambda b: b
        )
        request = target.message()
        for _ in range(100):
            call(request, timeout=30)
        latencies = []
        for _ in range(requests):
            began = time.perf_counter()
            call(request, timeout=30)
            latencies.append(time.perf_counter() - began)
    return latencies


def trickle(address: str, request: bytes, seconds: float) -> list[float]:
    """Sequential Predict latencies for ``seconds``, a 2 ms pause between calls (a steady trickle)."""
    latencies = []
    with grpc.insecure_channel(address) as channel:
        call = channel.unary_unary(PREDICT, request_serializer=lambda b: b, response_deserializer=lambda b: b)
        for _ in range(50):
            call(request, timeout=30)
        end = time.monotonic() + seconds
        while time.monotonic() < end:
            began = time.perf_counter()
            call(request, timeout=30)
            latencies.append(time.perf_counter() - began)
            time.sleep(0.002)
    return latencies


def busy_training_request() -> model_pb2.TrainRequest:
    """A realistic job (48x4 LSTM64 x2, 2048 windows) with far more epochs than a window needs; the
    call is cancelled once the window is measured."""
    x, y = realistic_data(2048, seed=2)
    return model_pb2.TrainRequest(
        model_id="bench-busy",
        spec=realistic_spec(),
        supervised=model_pb2.SupervisedData(x=codec.from_numpy(x), y=codec.from_numpy(y)),
        epochs=1000,
        batch_size=32,
        seed=3,
    )


def trickle_while_training(address: str, request: bytes, seconds: float) -> tuple[list[float], int]:
    """Predict latencies while a Train call runs (measured from its first epoch on); the epochs seen."""
    fitting = threading.Event()
    outcome: dict[str, object] = {}
    with grpc.insecure_channel(address) as channel:
        stream = model_pb2_grpc.ModelServiceStub(channel).Train(busy_training_request(), timeout=900)

        def follow() -> None:
            try:
                for event in stream:
                    if event.HasField("epoch"):
                        outcome["epochs"] = event.epoch.epoch
                        fitting.set()
                    if event.HasField("done"):
                        outcome["done"] = True
            except grpc.RpcError as exc:
                outcome["code"] = exc.code()
            fitting.set()

        follower = threading.Thread(target=follow, daemon=True)
        follower.start()
        if not fitting.wait(timeout=600) or "code" in outcome:
            raise RuntimeError(f"the training job never reached its first epoch: {outcome}")
        busy = trickle(address, request, seconds)
        still_training = not outcome.get("done") and "code" not in outcome
        stream.cancel()
        follower.join(timeout=60)
    if not still_training:
        raise RuntimeError(f"the training job ended before the window did ({outcome}); raise its epochs")
    return busy, int(outcome.get("epochs", 0))  # type: ignore[call-overload]


def predict_while_training(
    address: str, request: bytes, seconds: float, rounds: int
) -> dict[str, list[float]]:
    """Predict p50/p99 in ``rounds`` pairs of windows: idle, then while a Train call on another model
    runs (a new job each round)."""
    figures: dict[str, list[float]] = defaultdict(list)
    for _ in range(rounds):
        idle = trickle(address, request, seconds)
        busy, epochs = trickle_while_training(address, request, seconds)
        for name, latencies in (("idle", idle), ("busy", busy)):
            p50, p99 = percentiles(latencies)
            figures[f"{name}_p50"].append(p50)
            figures[f"{name}_p99"].append(p99)
            figures[f"{name}_n"].append(len(latencies))
        figures["epochs_seen"].append(epochs)
    return dict(figures)


def check_targets(targets: list[Target], models: list[BenchModel]) -> None:
    """Every target once through nghttp (as h2load sends it): grpc-status 0 and a real response, and
    ours and MLServer's ModelInfer give the same values as our Predict (the same model on both)."""
    values = {target.key: target.decode(check_sample(target.url, target.body)) for target in targets}
    for model in models:
        ours = values[f"ours ModelInfer {model.key}"]
        theirs = values[f"MLServer ModelInfer {model.key}"]
        native = values[f"ours Predict {model.key}"]
        scale = max(1.0, float(np.max(np.abs(native))))
        if not (np.all(np.isfinite(ours)) and ours.shape == theirs.shape == (1, 1)):
            raise RuntimeError(f"{model.key}: unexpected outputs ours {ours}, MLServer {theirs}")
        others = [("MLServer ModelInfer", theirs), ("our Predict", native.reshape(ours.shape))]
        if f"previous ModelInfer {model.key}" in values:
            others.append(("the previous design's ModelInfer", values[f"previous ModelInfer {model.key}"]))
        for name, other in others:
            if not np.allclose(ours, other, rtol=1e-3, atol=1e-4 * scale):
                raise RuntimeError(f"{model.key}: our ModelInfer says {ours.ravel()}, {name} {other.ravel()}")
        print(
            f"  {model.key}: ModelInfer ours {ours.item():.5f}, MLServer {theirs.item():.5f}; checked",
            flush=True,
        )


# ---- report --------------------------------------------------------------------------------------


def spread(values: list[float], digits: int = 0) -> str:
    if not values:
        return "-"
    median = statistics.median(values)
    if len(values) == 1:
        return f"{median:.{digits}f}"
    return f"{median:.{digits}f} ({min(values):.{digits}f}-{max(values):.{digits}f})"


def ratio_text(ours: list[float], theirs: list[float]) -> tuple[float, str]:
    """Median ratio and the spread of the per-round ratios (round i of ours / round i of theirs)."""
    per_round = [a / b for a, b in zip(ours, theirs, strict=True)]
    median = statistics.median(ours) / statistics.median(theirs)
    if len(per_round) == 1:
        return median, f"{median:.2f}x"
    return median, f"{median:.2f}x ({min(per_round):.2f}-{max(per_round):.2f})"


def counterpart(key: str) -> str | None:
    """The MLServer target an "ours" (or "previous") row is compared with."""
    if key in ("ours Health/Check", "ours ServerLive", "previous Health/Check"):
        return "MLServer ServerLive"
    for method in ("ModelInfer", "Predict"):
        for who in ("ours", "previous"):
            if key.startswith(f"{who} {method} "):
                return f"MLServer ModelInfer {key.rsplit(' ', 1)[1]}"
    return None


def cpu_per_call_ms(measured: Measured, seconds: float, warmup: float) -> float:
    """Server CPU milliseconds per call over the rounds: the server's CPU (h2load's warm-up included)
    over the calls of the measured and the warm-up time, at the measured rate."""
    calls = sum(r.requests_per_second * (seconds + warmup) for r in measured.reports)
    return sum(measured.server_cpu.values()) / calls * 1000 if calls else float("nan")


def print_throughput(
    workers: int, results: dict[tuple[str, str], Measured], rows: list[list[Target]]
) -> None:
    for load, (connections, streams) in LOADS.items():
        print()
        print(f"W={workers}, {load} (h2load -c {connections} -m {streams}); median (min-max) of the rounds")
        print(f"  {'target':28}{'req/s':>24}{'mean ms':>27}   {'ours/MLServer req/s':<22}")
        for row in rows:
            for target in row:
                measured = results[(load, target.key)]
                other = counterpart(target.key)
                ratio = ""
                if other is not None:
                    _, ratio = ratio_text(measured.rps(), results[(load, other)].rps())
                    ratio += f" vs {other.replace('MLServer ', '')}"
                print(
                    f"  {target.key:28}{spread(measured.rps()):>24}{spread(measured.mean_ms(), 3):>27}   {ratio}"
                )


def print_cpu(workers: int, results: dict[tuple[str, str], Measured], keys: list[str]) -> None:
    load = "32 callers"
    print()
    print(
        f"W={workers}, where the CPU went during the {load} rounds: % of one core over the rounds' wall time "
        "(h2load warm-up included), per process/thread name, from /proc"
    )
    for key in keys:
        measured = results[(load, key)]
        total = sum(measured.server_cpu.values()) / measured.wall * 100
        load_cpu = sum(measured.load_cpu) / measured.wall * 100
        print(
            f"  {key:28} server {total:4.0f} %, h2load {load_cpu:3.0f} %: {cpu_summary(measured.server_cpu, measured.wall)}"
        )


@dataclass
class WorkerFigures:
    """Everything measured at one W."""

    h2load: dict[tuple[str, str], Measured]
    python: dict[str, list[float]]
    training: dict[str, list[float]]  # per round: idle_p99, busy_p99, ...


def request_files(folder: Path, models: list[BenchModel]) -> dict[str, Path]:
    """Every request body h2load and nghttp send (the Python driver sends the same messages)."""
    files = {
        "health": write_request(folder / "health.bin", health_pb2.HealthCheckRequest().SerializeToString()),
        "live": write_request(folder / "live.bin", oip.ServerLiveRequest().SerializeToString()),
    }
    for model in models:
        files[f"infer {model.key}"] = write_request(folder / f"infer-{model.key}.bin", infer_request(model))
        files[f"predict {model.key}"] = write_request(
            folder / f"predict-{model.key}.bin", predict_request(model)
        )
    return files


def target_rows(
    ours: tuple[str, int],
    theirs: tuple[str, int],
    previous: tuple[str, int] | None,
    files: dict[str, Path],
    models: list[BenchModel],
) -> list[list[Target]]:
    """The rows measured in interleaved rounds: the no-op floor, then per model ModelInfer on each
    server and our native Predict. ``ours``/``theirs``/``previous`` are (address, pid)."""
    floor = [
        Target("ours Health/Check", ours[0], HEALTH_CHECK, files["health"], health_serving, ours[1]),
        Target("MLServer ServerLive", theirs[0], SERVER_LIVE, files["live"], server_live, theirs[1]),
        Target("ours ServerLive", ours[0], SERVER_LIVE, files["live"], server_live, ours[1]),
    ]
    if previous is not None:
        floor.append(
            Target(
                "previous Health/Check",
                previous[0],
                HEALTH_CHECK,
                files["health"],
                health_serving,
                previous[1],
            )
        )
    rows = [floor]
    for model in models:
        infer, predict = files[f"infer {model.key}"], files[f"predict {model.key}"]
        row = [
            Target(f"ours ModelInfer {model.key}", ours[0], MODEL_INFER, infer, infer_values, ours[1]),
            Target(
                f"MLServer ModelInfer {model.key}", theirs[0], MODEL_INFER, infer, infer_values, theirs[1]
            ),
            Target(f"ours Predict {model.key}", ours[0], PREDICT, predict, predict_values, ours[1]),
        ]
        if previous is not None:
            row.append(
                Target(
                    f"previous ModelInfer {model.key}",
                    previous[0],
                    MODEL_INFER,
                    infer,
                    infer_values,
                    previous[1],
                )
            )
        rows.append(row)
    return rows


def measure_at_w(
    rows: list[list[Target]], models: list[BenchModel], args: argparse.Namespace
) -> WorkerFigures:
    targets = [target for row in rows for target in row]
    check_targets(targets, models)
    # Warm-up: every target under both loads (every session gets built, and the previous design
    # compiles its hot batch-size buckets with XLA in the background), then a pause for its compiler.
    for target in targets:
        for connections, streams in LOADS.values():
            run_h2load(target.url, target.body, connections, streams, max(1.0, args.seconds / 2), 0.5)
    time.sleep(4.0)
    h2load: dict[tuple[str, str], Measured] = {}
    for load in LOADS:
        measure_rounds(rows, load, args.rounds, args.seconds, args.warmup_seconds, h2load)
        print(f"  {load} rounds done", flush=True)
    check_targets(targets, models)  # still answering right after the load
    python: dict[str, list[float]] = defaultdict(list)
    for _ in range(args.rounds):
        for target in (t for row in rows[1:] for t in row):
            python[target.key].extend(python_sequential(target, args.requests))
    ours_predict = next(t for t in targets if t.key == "ours Predict seed")
    training = predict_while_training(
        ours_predict.address, ours_predict.message(), args.training_seconds, args.rounds
    )
    print("  Python driver and training windows done", flush=True)
    return WorkerFigures(h2load, dict(python), training)


def print_worker_figures(
    workers: int, figures: WorkerFigures, rows: list[list[Target]], args: argparse.Namespace
) -> None:
    print_throughput(workers, figures.h2load, rows)
    print_cpu(
        workers,
        figures.h2load,
        [
            key
            for key in (
                "ours ModelInfer seed",
                "previous ModelInfer seed",
                "MLServer ModelInfer seed",
                "ours Health/Check",
                "MLServer ServerLive",
            )
            if (("32 callers", key)) in figures.h2load
        ],
    )
    print()
    print(f"W={workers}, Python driver (grpcio, one caller, sequential, same request bytes): client-side ms")
    print(f"  {'target':28}{'p50':>9}{'p99':>9}{'mean':>9}{'calls':>8}")
    for key, latencies in figures.python.items():
        p50, p99 = percentiles(latencies)
        print(f"  {key:28}{p50:9.3f}{p99:9.3f}{statistics.fmean(latencies) * 1000:9.3f}{len(latencies):8d}")
    busy = figures.training
    print()
    print(
        f"W={workers}, our Predict (seed), one caller with a 2 ms pause, {args.training_seconds:g} s windows, "
        "idle then while a Train (48x4, another model) runs; median (min-max) of the rounds, ms"
    )
    for name, label in (("idle", "idle"), ("busy", "while training")):
        print(
            f"  {label:16} p50 {spread(busy[f'{name}_p50'], 3):>22}   p99 {spread(busy[f'{name}_p99'], 3):>22}"
            f"   calls/window {spread(busy[f'{name}_n'])}"
        )
    print(f"  epochs the job reached per window: {', '.join(f'{e:.0f}' for e in busy['epochs_seen'])}")


def target_rows_of(
    measured: dict[int, WorkerFigures],
    models: list[BenchModel],
    skipped_because: str | None,
    args: argparse.Namespace,
) -> list[tuple[str, float | None, str, bool | None]]:
    """(what, measured value or None, target, met) for every target."""
    c32 = "32 callers"
    rows: list[tuple[str, float | None, str, bool | None]] = []
    for workers, figures in measured.items():
        h2 = figures.h2load
        noop = h2[(c32, "MLServer ServerLive")].rps()
        for model in models:
            ours = h2[(c32, f"ours ModelInfer {model.key}")].rps()
            if model.key == "seed":
                value, _ = ratio_text(ours, noop)
                want = TARGET_INFER_VS_MLSERVER_NOOP
                rows.append(
                    (
                        f"W={workers} seed ModelInfer@32 / MLServer no-op@32",
                        value,
                        f">= {want}",
                        value >= want,
                    )
                )
            value, _ = ratio_text(ours, h2[(c32, f"MLServer ModelInfer {model.key}")].rps())
            want = TARGET_INFER_VS_MLSERVER_INFER[model.key]
            rows.append(
                (
                    f"W={workers} {model.key} ModelInfer@32 / MLServer ModelInfer@32",
                    value,
                    f">= {want:g}",
                    value >= want,
                )
            )
        noop_mean = statistics.median(h2[("sequential", "ours Health/Check")].mean_ms())
        for model in models:
            mean = statistics.median(h2[("sequential", f"ours ModelInfer {model.key}")].mean_ms())
            want = TARGET_SEQUENTIAL_OVER_NOOP_MS
            rows.append(
                (
                    f"W={workers} {model.key} sequential ModelInfer mean - our no-op's (ms)",
                    mean - noop_mean,
                    f"<= {want}",
                    mean - noop_mean <= want,
                )
            )
        if (c32, "previous ModelInfer seed") in h2:
            for model in models:
                ours_cpu = cpu_per_call_ms(
                    h2[(c32, f"ours ModelInfer {model.key}")], args.seconds, args.warmup_seconds
                )
                before = cpu_per_call_ms(
                    h2[(c32, f"previous ModelInfer {model.key}")], args.seconds, args.warmup_seconds
                )
                want = TARGET_CPU_VS_PREVIOUS
                rows.append(
                    (
                        f"W={workers} {model.key} server CPU/call@32, ours / previous",
                        ours_cpu / before,
                        f"<= {want}",
                        ours_cpu / before <= want,
                    )
                )
        value, _ = ratio_text(figures.training["busy_p99"], figures.training["idle_p99"])
        want = TARGET_TRAINING_P99
        rows.append((f"W={workers} Predict p99 while training / idle", value, f"<= {want}", value <= want))
    if 1 in measured and len(measured) > 1:
        base = measured[1].h2load
        for workers, figures in measured.items():
            if workers == 1:
                continue
            want = TARGET_WORKER_EFFICIENCY * workers
            for key in (
                "ours ModelInfer seed",
                "ours ModelInfer 48x4",
                "ours Predict seed",
                "ours Health/Check",
            ):
                value = statistics.median(figures.h2load[(c32, key)].rps()) / statistics.median(
                    base[(c32, key)].rps()
                )
                rows.append((f"W={workers} / W=1, {key}@32", value, f">= {want:.1f}", value >= want))
    if skipped_because:
        rows.append(("W=2 / W=1 throughput", None, ">= 1.6", None))
    return rows


@contextmanager
def previous_checkout(rev: str) -> Iterator[Path | None]:
    """This repository's tree at ``rev`` in a temp dir (None when ``rev`` is empty)."""
    if not rev:
        yield None
        return
    with tempfile.TemporaryDirectory(prefix="bench-previous-") as folder:
        archive = subprocess.run(
            ["git", "-C", str(BENCH_DIR.parent), "archive", "--format=tar", rev],
            check=True,
            capture_output=True,
        ).stdout
        subprocess.run(["tar", "-x", "-C", folder], input=archive, check=True)
        yield Path(folder)


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--rounds", type=int, default=3, help="interleaved rounds per target")
    parser.add_argument("--seconds", type=float, default=5.0, help="h2load's measured duration per round")
    parser.add_argument("--warmup-seconds", type=float, default=1.0, help="h2load's warm-up per round")
    parser.add_argument("--requests", type=int, default=1000, help="Python-driver calls per target per round")
    parser.add_argument("--training-seconds", type=float, default=10.0, help="each Predict p99 window")
    parser.add_argument("--workers", default="", help="comma-separated W values (default: 1..cpu count)")
    parser.add_argument("--json", type=Path, help="also write every figure here")
    parser.add_argument(
        "--previous",
        default=PREDECESSOR,
        help="the commit whose model service is measured beside ours (the previous design); '' = none",
    )
    parser.add_argument(
        "--quick", action="store_true", help="smoke run: 1 round x 1 s, 200 requests, 3 s windows"
    )
    args = parser.parse_args()
    if args.quick:
        args.rounds, args.seconds, args.warmup_seconds, args.requests, args.training_seconds = (
            1,
            1.0,
            0.5,
            200,
            3.0,
        )

    ensure_nghttp2_client()
    venv = ensure_mlserver_venv()
    cpus = os.cpu_count() or 1
    wanted = [int(w) for w in args.workers.split(",")] if args.workers else list(range(1, max(2, cpus) + 1))
    worker_counts = wanted
    skipped_because: str | None = None
    cpu_model = next(
        (
            line.split(":", 1)[1].strip()
            for line in Path("/proc/cpuinfo").read_text().splitlines()
            if "model name" in line
        ),
        "?",
    )
    print(
        f"machine: {cpus} cpus ({cpu_model}); python {sys.version.split()[0]}; load average {os.getloadavg()}"
    )
    print(
        f"rounds: {args.rounds} x {args.seconds:g} s per target (after {args.warmup_seconds:g} s of h2load warm-up)"
    )
    example = h2load_command(
        "http://127.0.0.1:PORT/METHOD", Path("BODY"), 32, 1, args.seconds, args.warmup_seconds
    )
    print(f"h2load: {' '.join(repr(a) if ' ' in a else a for a in example)}", flush=True)

    models = bench_models()
    measured: dict[int, WorkerFigures] = {}
    rows: list[list[Target]] = []
    key = secrets.token_hex(32)
    with ExitStack() as stack:
        root = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="bench-serving-")))
        (root / "logs").mkdir()
        (root / "bodies").mkdir()
        logs = root / "logs"
        scaler_args = ["--store", str(root / "scalers"), "--signing-key", key]
        _, scaler = stack.enter_context(service_process("scaler_service", scaler_args, logs / "scaler.log"))
        model_args = ["--store", str(root / "models"), "--scaler-address", scaler, "--signing-key", key]
        versions = {}
        with service_process("model_service", model_args, logs / "model-train.log") as (_, address):
            for model in models:
                began = time.monotonic()
                versions[model.model_id] = train(address, model)
                print(
                    f"trained {model.model_id} v{versions[model.model_id]} in {time.monotonic() - began:.0f} s"
                )
        previous = stack.enter_context(previous_checkout(args.previous))
        if previous is not None:
            print(f"previous design: {args.previous}, checked out into {previous}", flush=True)
        repository = root / "mlserver-models"
        export_to_mlserver(root / "models", key.encode(), versions, repository)
        files = request_files(root / "bodies", models)
        for workers in worker_counts:
            extra = ["--workers", str(workers)]
            with (
                service_process(
                    "model_service", [*model_args, *extra], logs / f"model-w{workers}.log"
                ) as ours,
                mlserver(
                    venv, repository, workers, list(versions), logs / f"mlserver-w{workers}.log"
                ) as theirs,
                ExitStack() as before,
            ):
                was = None
                if previous is not None:
                    process, address = before.enter_context(
                        service_process(
                            "model_service",
                            [*model_args, *extra],
                            logs / f"previous-w{workers}.log",
                            checkout=previous,
                        )
                    )
                    was = (address, process.pid)
                print(
                    f"W={workers}: ours on {ours[1]}, MLServer on {theirs[1]} (parallel_workers {workers})"
                    + (f", previous design on {was[0]}" if was else ""),
                    flush=True,
                )
                rows = target_rows((ours[1], ours[0].pid), (theirs[1], theirs[0].pid), was, files, models)
                measured[workers] = measure_at_w(rows, models, args)

    for workers, figures in measured.items():
        print_worker_figures(workers, figures, rows, args)
    print()
    print(f"{'targets, median of the rounds':62}{'measured':>9}  {'target':<8} met")
    for what, value, want, ok in target_rows_of(measured, models, skipped_because, args):
        shown = f"{value:9.2f}" if value is not None else f"{'-':>9}"
        verdict = "yes" if ok else ("NO" if ok is not None else f"not measured: {skipped_because}")
        print(f"  {what:60}{shown}  {want:<8} {verdict}")
    print()
    print(f"(every figure from this run, nothing from another day; load average now {os.getloadavg()})")
    if args.json:
        dump = {
            str(w): {
                "h2load": {
                    f"{load} | {k}": [asdict(r) for r in m.reports] for (load, k), m in f.h2load.items()
                },
                "python_p50_p99_ms": {k: percentiles(v) for k, v in f.python.items()},
                "training": f.training,
            }
            for w, f in measured.items()
        }
        args.json.write_text(json.dumps({"skipped_because": skipped_because, "by_workers": dump}, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
