"""Datasets bench: upload rows/s, training rows/s through the service (Train by reference) against
in-process ``model.fit`` on the same samples and settings, and the model service's memory growth
while it uploads and trains, for several dataset sizes.

A scaler service and a model service (``--workers 1``: one serving process plus its trainer process)
run as separate processes on 127.0.0.1. The client here generates each series chunk on the fly (rows
x 4 features, float32, a noisy sine per feature) and streams it in ~4 MiB chunks: it never holds the
dataset either. For each size and each windowing (the seed's 3-step windows, and 48-step windows):

- upload: rows/s over the whole Upload call;
- training: one job on the dataset (no scalers: the in-process side has none either), the time-ordered
  holdout as --validation-fraction; samples/s of the fit (the last epoch's rows_per_second event: the
  first also traces the step) and of the whole Train call; against in-process ``model.fit`` on the first --fit-samples windows of the
  same series held in memory (numpy, tf.data from_tensor_slices as the service's in-memory path does,
  same spec, batch size, shuffle, seed), samples/s of its epochs;
- memory: the model service's processes (serving + trainer) sampled every 0.1 s from /proc: the peak
  growth over the idle baseline of private memory (RssAnon) and of all resident memory (VmRSS, which
  also counts pages of the memory-mapped dataset: page cache the kernel can drop).

Targets: training >= 0.9x model.fit; RSS growth flat in the number of rows (the 1 M and
10 M runs within 1.5x of each other).

Usage: .venv/bin/python bench/bench_datasets.py                 # 1 M and 10 M rows (long: see --help)
       .venv/bin/python bench/bench_datasets.py --quick         # a few minutes: every row, tiny sizes
       .venv/bin/python bench/bench_datasets.py --rows 1000000 --stride48 16
"""

from __future__ import annotations

import argparse
import math
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import grpc
import numpy as np
from bench_model import service, service_process
from bench_serving import process_tree

from protos.lstm_stack.v1 import dataset_pb2, dataset_pb2_grpc, model_pb2, model_pb2_grpc
from service_common import codec

FEATURES = 4
CHUNK_BYTES = 4 * 1024 * 1024
COLUMNS = [f"f{i}" for i in range(FEATURES)]


def series_rows(start: int, stop: int) -> np.ndarray:
    """Rows [start, stop) of the bench series, the same whoever asks (client chunks, in-process fit)."""
    t = np.arange(start, stop, dtype=np.float64)[:, None]
    periods = np.array([50.0, 170.0, 23.0, 400.0])
    noise = np.random.default_rng(start).normal(0, 0.05, (stop - start, FEATURES))
    return (np.sin(t / periods) + noise).astype(np.float32)


def chunks(rows: int) -> Iterator[dataset_pb2.DatasetChunk]:
    per_chunk = CHUNK_BYTES // (FEATURES * 4)
    header = dataset_pb2.DatasetHeader(kind=dataset_pb2.DATASET_SERIES, columns=COLUMNS)
    for start in range(0, rows, per_chunk):
        chunk = dataset_pb2.DatasetChunk(
            series=codec.from_numpy(series_rows(start, min(rows, start + per_chunk)))
        )
        if start == 0:
            chunk.header.CopyFrom(header)
        yield chunk


def spec(window: int) -> model_pb2.ModelSpec:
    """The seed's stack (LSTM(10,relu) -> LSTM(2,relu) -> LSTM(10,relu) -> Dense(1)) on 4 features."""
    lstm = model_pb2.LstmLayer
    return model_pb2.ModelSpec(
        input=model_pb2.InputShape(timesteps=window, features=FEATURES),
        layers=[
            model_pb2.Layer(lstm=lstm(units=10, activation="relu")),
            model_pb2.Layer(lstm=lstm(units=2, activation="relu")),
            model_pb2.Layer(lstm=lstm(units=10, activation="relu")),
        ],
        head=model_pb2.Head(task=model_pb2.REGRESSION),
        optimizer=model_pb2.Optimizer(learning_rate=0.01),
    )


# ---- memory --------------------------------------------------------------------------------------


def _status_kib(pid: int, field: str) -> int:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith(field + ":"):
                return int(line.split()[1])
    except OSError:
        pass
    return 0


class MemorySampler:
    """Peak summed RssAnon and VmRSS (KiB) of a process tree, sampled in a thread."""

    def __init__(self, root: int, period: float = 0.1) -> None:
        self._root = root
        self._period = period
        self._stop = threading.Event()
        self.peak_anon = self.peak_rss = 0
        self._thread = threading.Thread(target=self._run, daemon=True)

    def sample(self) -> tuple[int, int]:
        pids = process_tree(self._root)
        return sum(_status_kib(p, "RssAnon") for p in pids), sum(_status_kib(p, "VmRSS") for p in pids)

    def _run(self) -> None:
        while not self._stop.is_set():
            anon, rss = self.sample()
            self.peak_anon, self.peak_rss = max(self.peak_anon, anon), max(self.peak_rss, rss)
            self._stop.wait(self._period)

    def __enter__(self) -> MemorySampler:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()


# ---- runs ----------------------------------------------------------------------------------------


@dataclass
class Run:
    rows: int
    window: int
    stride: int
    upload_rows_s: float = math.nan
    upload_anon_mib: float = math.nan
    upload_rss_mib: float = math.nan
    samples: int = 0
    fit_samples_s: float = math.nan
    train_samples_s: float = math.nan
    train_anon_mib: float = math.nan
    train_rss_mib: float = math.nan
    in_process_samples_s: float = math.nan


def measure(address: str, root_pid: int, run: Run, args: argparse.Namespace, dataset_id: str | None) -> str:
    with grpc.insecure_channel(address, options=[("grpc.max_send_message_length", 64 << 20)]) as channel:
        datasets = dataset_pb2_grpc.DatasetServiceStub(channel)
        models = model_pb2_grpc.ModelServiceStub(channel)
        sampler = MemorySampler(root_pid)
        base_anon, base_rss = sampler.sample()
        if dataset_id is None:
            with sampler:
                began = time.perf_counter()
                info = datasets.Upload(chunks(run.rows), timeout=3600)
                run.upload_rows_s = run.rows / (time.perf_counter() - began)
            run.upload_anon_mib = (sampler.peak_anon - base_anon) / 1024
            run.upload_rss_mib = (sampler.peak_rss - base_rss) / 1024
            dataset_id = info.id
        request = model_pb2.TrainRequest(
            spec=spec(run.window),
            dataset=dataset_pb2.DatasetSource(dataset_id=dataset_id, window=run.window, stride=run.stride),
            epochs=args.epochs,
            batch_size=args.batch_size,
            seed=1,
            shuffle=True,
            validation_fraction=args.validation_fraction,
        )
        sampler = MemorySampler(root_pid)
        base_anon, base_rss = sampler.sample()
        with sampler:
            began = time.perf_counter()
            events = list(models.Train(request, timeout=24 * 3600))
            wall = time.perf_counter() - began
        run.train_anon_mib = (sampler.peak_anon - base_anon) / 1024
        run.train_rss_mib = (sampler.peak_rss - base_rss) / 1024
        done = events[-1].done
        run.samples = done.n_train
        epochs = [e.epoch for e in events if e.HasField("epoch")]
        # The last epoch: the first also pays for tracing the training step (as model.fit's does).
        run.fit_samples_s = epochs[-1].rows_per_second
        run.train_samples_s = done.n_train * len(epochs) / wall
        models.DeleteModel(model_pb2.DeleteModelRequest(model_id=done.id), timeout=60)
    return dataset_id


def warm_up(address: str) -> None:
    with grpc.insecure_channel(address) as channel:
        dataset_id = dataset_pb2_grpc.DatasetServiceStub(channel).Upload(chunks(64), timeout=600).id
        request = model_pb2.TrainRequest(
            spec=spec(3), dataset=dataset_pb2.DatasetSource(dataset_id=dataset_id), epochs=1, batch_size=32
        )
        done = list(model_pb2_grpc.ModelServiceStub(channel).Train(request, timeout=600))[-1].done
        model_pb2_grpc.ModelServiceStub(channel).DeleteModel(
            model_pb2.DeleteModelRequest(model_id=done.id), timeout=60
        )
        dataset_pb2_grpc.DatasetServiceStub(channel).DeleteDataset(
            dataset_pb2.DeleteDatasetRequest(dataset_id=dataset_id), timeout=60
        )


def in_process_fit(window: int, stride: int, samples: int, args: argparse.Namespace) -> float:
    """model.fit samples/s (last epoch) on the first ``samples`` windows, in memory, the service's
    settings (the first epoch also traces the step, on both sides)."""
    # TensorFlow only in here, after the services' runs: the client side stays light while they run.
    import keras

    from model_service import builder, model_messages
    from model_service.spec import with_defaults
    from model_service.training.fitting import dataset

    rows = (samples - 1) * stride + window + 1
    series = series_rows(0, rows).astype(np.float64)
    x = np.lib.stride_tricks.sliding_window_view(series, window, axis=0)[
        : (samples - 1) * stride + 1 : stride
    ]
    x = np.ascontiguousarray(x.transpose(0, 2, 1), dtype=np.float32)
    y = series[window : window + (samples - 1) * stride + 1 : stride, :1].astype(np.float32)
    resolved = with_defaults(model_messages.spec_from_proto(spec(window)))
    with builder.seeded(1):
        model = builder.build(resolved, 1)
        train_set = dataset(x, y, args.batch_size, 7)
    timings: list[float] = []

    class EpochTimer(keras.callbacks.Callback):
        def on_epoch_begin(self, epoch: int, logs: object = None) -> None:
            self._began = time.perf_counter()

        def on_epoch_end(self, epoch: int, logs: object = None) -> None:
            timings.append(time.perf_counter() - self._began)

    model.fit(
        train_set,
        epochs=args.epochs,
        steps_per_epoch=math.ceil(samples / args.batch_size),
        callbacks=[EpochTimer()],
        verbose=0,
    )
    return samples / timings[-1]


def fmt(value: float, digits: int = 0) -> str:
    return "-" if math.isnan(value) else f"{value:,.{digits}f}"


def report(runs: list[Run]) -> None:
    print()
    header = (
        f"{'rows':>11} {'window':>6} {'stride':>6} {'upload rows/s':>14} {'upload +anon':>12} "
        f"{'upload +rss':>11} {'samples':>11} {'fit samples/s':>13} {'Train samples/s':>15} "
        f"{'model.fit /s':>12} {'ratio':>5} {'train +anon':>11} {'train +rss':>10}"
    )
    print(header)
    print("-" * len(header))
    for r in runs:
        ratio = r.fit_samples_s / r.in_process_samples_s if r.in_process_samples_s else math.nan
        print(
            f"{r.rows:>11,} {r.window:>6} {r.stride:>6} {fmt(r.upload_rows_s):>14} "
            f"{fmt(r.upload_anon_mib, 1):>9} MiB {fmt(r.upload_rss_mib, 1):>7} MiB {r.samples:>11,} "
            f"{fmt(r.fit_samples_s):>13} {fmt(r.train_samples_s):>15} {fmt(r.in_process_samples_s):>12} "
            f"{fmt(ratio, 2):>5} {fmt(r.train_anon_mib, 1):>7} MiB {fmt(r.train_rss_mib, 1):>6} MiB"
        )
    print(
        "\nfit samples/s: the service's last epoch (its rows_per_second event); Train samples/s: the whole call "
        "(dataset verification, pipeline start, holdout scoring, publish included); ratio: fit / model.fit. "
        "+anon / +rss: peak growth of the model service's processes (serving + trainer) over idle."
    )
    by_shape: dict[tuple[int, int], list[Run]] = {}
    for r in runs:
        by_shape.setdefault((r.window, r.stride), []).append(r)
    for (window, stride), group in by_shape.items():
        if len(group) > 1:
            small, big = min(group, key=lambda r: r.rows), max(group, key=lambda r: r.rows)
            growth = big.train_anon_mib / small.train_anon_mib if small.train_anon_mib > 0 else math.nan
            print(
                f"window {window} stride {stride}: training +anon at {big.rows:,} rows is {fmt(growth, 2)}x "
                f"that at {small.rows:,} rows (target <= 1.5x)"
            )


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--quick", action="store_true", help="5 000 and 20 000 rows: a smoke run")
    parser.add_argument("--rows", default="1000000,10000000", help="dataset sizes, comma-separated")
    parser.add_argument("--epochs", type=int, default=2, help="the last one is measured")
    parser.add_argument("--batch-size", type=int, default=256)
    parser.add_argument("--validation-fraction", type=float, default=0.1)
    parser.add_argument("--stride3", type=int, default=1, help="stride of the 3-step windows")
    parser.add_argument("--stride48", type=int, default=16, help="stride of the 48-step windows")
    parser.add_argument(
        "--fit-samples", type=int, default=200_000, help="windows model.fit trains on in memory"
    )
    args = parser.parse_args()
    sizes = [5_000, 20_000] if args.quick else [int(r) for r in args.rows.split(",")]
    if args.quick:
        args.fit_samples = 2_000
    runs: list[Run] = []
    with tempfile.TemporaryDirectory(prefix="bench-datasets-") as tmp:
        root = Path(tmp)
        with service(
            "scaler_service", ["--store", str(root / "scaler"), "--workers", "1"], root / "scaler.log"
        ) as scaler:
            model_args = [
                "--store", str(root / "model"), "--scaler-address", scaler, "--workers", "1",
                "--max-training-work", str(10**12), "--trainer-recycle-jobs", "0",
            ]  # fmt: skip
            with service_process("model_service", model_args, root / "model.log") as (process, address):
                warm_up(address)  # the trainer process starts on the first Train: not part of any figure
                for rows in sizes:
                    dataset_id = None
                    for window, stride in ((3, args.stride3), (48, args.stride48)):
                        run = Run(rows, window, stride)
                        print(f"rows {rows:,}, window {window}, stride {stride} ...", flush=True)
                        dataset_id = measure(address, process.pid, run, args, dataset_id)
                        runs.append(run)
                    with grpc.insecure_channel(address) as channel:
                        dataset_pb2_grpc.DatasetServiceStub(channel).DeleteDataset(
                            dataset_pb2.DeleteDatasetRequest(dataset_id=str(dataset_id)), timeout=60
                        )
    fitted: dict[tuple[int, int], float] = {}
    for run in runs:
        key = (run.window, run.stride)
        if key not in fitted:
            print(f"in-process model.fit, window {run.window}, stride {run.stride} ...", flush=True)
            fitted[key] = in_process_fit(run.window, run.stride, min(args.fit_samples, run.samples), args)
        run.in_process_samples_s = fitted[key]
    report(runs)
    print("\n(the machine may have been shared with other work; figures are indicative)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
