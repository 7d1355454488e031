"""Plain-text rendering shared by the CLI and the demo: tables, shape flows, a training progress bar."""

from __future__ import annotations

import sys
import time
from collections.abc import Iterable, Sequence
from typing import TextIO

import numpy as np

from protos.lstm_stack.v1 import dataset_pb2, model_pb2, scaler_pb2


def table(headers: Sequence[str], rows: Iterable[Sequence[object]], *, right: Iterable[int] = ()) -> str:
    """A fixed-width text table; columns listed in ``right`` are right-aligned (numbers)."""
    cells = [[str(c) for c in row] for row in rows]
    widths = [len(h) for h in headers]
    for row in cells:
        for i, cell in enumerate(row):
            widths[i] = max(widths[i], len(cell))
    right_set = set(right)

    def line(row: Sequence[str]) -> str:
        parts = [
            c.rjust(w) if i in right_set else c.ljust(w)
            for i, (c, w) in enumerate(zip(row, widths, strict=True))
        ]
        return "  ".join(parts).rstrip()

    out = [line(list(headers)), "  ".join("-" * w for w in widths)]
    out.extend(line(row) for row in cells)
    return "\n".join(out)


def number(value: float, digits: int = 4) -> str:
    """Compact number: plain for ordinary magnitudes, scientific for tiny or huge ones."""
    if value == 0 or 1e-3 <= abs(value) < 1e6:
        return f"{value:.{digits}f}".rstrip("0").rstrip(".") or "0"
    return f"{value:.{digits - 1}e}"


def row_text(values: np.ndarray, digits: int = 4) -> str:
    flat = np.asarray(values).ravel()
    return "[" + ", ".join(number(float(v), digits) for v in flat) + "]"


def shape_table(layers: Sequence[model_pb2.LayerReport], input_shape: Sequence[int] = ()) -> str:
    """The layer-by-layer shape flow, like Keras' model.summary()."""
    rows: list[list[object]] = []
    if input_shape:
        dims = ", ".join("None" if d < 0 else str(d) for d in input_shape)
        rows.append(["", "input", "input", f"({dims})", 0, "", ""])
    for layer in layers:
        rows.append(
            [
                layer.index,
                layer.name,
                layer.kind,
                layer.output_shape_text or str(tuple(layer.output_shape)),
                layer.params,
                layer.activation,
                "yes" if layer.return_sequences else ("no" if layer.kind == "lstm" else ""),
            ]
        )
    return table(
        ["#", "layer", "kind", "output shape", "params", "activation", "return_sequences"],
        rows,
        right=[0, 4],
    )


def validation_report(response: model_pb2.ValidateSpecResponse) -> str:
    return f"{shape_table(response.layers, response.input_shape)}\ntotal params: {response.total_params}"


def scaler_kind(spec: scaler_pb2.ScalerSpec) -> str:
    return scaler_pb2.ScalerKind.Name(spec.kind).lower()


def scaler_rows(scalers: Iterable[scaler_pb2.ScalerInfo]) -> str:
    rows = [
        [
            s.id,
            s.version,
            scaler_kind(s.spec),
            scaler_pb2.Layout.Name(s.layout).lower().replace("_", "-"),
            "x".join(str(d) for d in s.sample_shape),
            s.n_samples_seen,
            s.created_at,
        ]
        for s in scalers
    ]
    return table(["id", "version", "kind", "layout", "sample", "samples", "created"], rows, right=[1, 5])


def model_rows(models: Iterable[model_pb2.ModelInfo]) -> str:
    rows = []
    for m in models:
        last = m.history[-1] if m.history else None
        rows.append(
            [
                m.id,
                m.version,
                model_pb2.ModelState.Name(m.state),
                model_pb2.Task.Name(m.spec.head.task).lower(),
                f"({m.spec.input.timesteps}, {m.spec.input.features})",
                m.total_params,
                m.epochs_run,
                number(last.loss) if last else "",
                m.created_at,
            ]
        )
    return table(
        ["id", "version", "state", "task", "input", "params", "epochs", "loss", "created"],
        rows,
        right=[1, 5, 6, 7],
    )


def model_description(model: model_pb2.ModelInfo) -> str:
    lines = [
        f"model {model.id} v{model.version} ({model_pb2.ModelState.Name(model.state)})",
        f"  task: {model_pb2.Task.Name(model.spec.head.task).lower()}, "
        f"input: (timesteps={model.spec.input.timesteps}, features={model.spec.input.features})",
        f"  trained: {model.epochs_run} epochs in {model.train_seconds:.1f}s on {model.n_train} samples "
        f"({model.n_validation} held out), seed {model.seed}, created {model.created_at}",
    ]
    if model.HasField("x_scaler"):
        lines.append(f"  x scaler: {model.x_scaler.scaler_id} v{model.x_scaler.version}")
    if model.HasField("y_scaler"):
        lines.append(f"  y scaler: {model.y_scaler.scaler_id} v{model.y_scaler.version}")
    if model.history:
        last = model.history[-1]
        val = f", val_loss {number(last.val_loss)}" if last.HasField("val_loss") else ""
        lines.append(f"  final loss {number(last.loss)}{val}")
    if model.holdout_metrics:
        metrics = ", ".join(f"{k} {number(v)}" for k, v in sorted(model.holdout_metrics.items()))
        lines.append(f"  holdout: {metrics}")
    lines.append(shape_table(model.layers))
    lines.append(f"total params: {model.total_params}")
    return "\n".join(lines)


class ProgressBar:
    """Training progress, one update per epoch.

    On a terminal the bar is redrawn in place; elsewhere (logs, CI, pipes) it prints a line every
    ``log_every`` epochs so the output stays short but still shows loss going down.
    """

    def __init__(self, stream: TextIO | None = None, width: int = 30, log_lines: int = 10):
        self.stream = stream or sys.stdout
        self.width = width
        self.log_lines = log_lines
        self.interactive = bool(getattr(self.stream, "isatty", lambda: False)())
        self._started = time.monotonic()
        self._drawn = False

    def update(self, event: model_pb2.EpochEvent) -> None:
        total = max(event.epochs, event.epoch, 1)
        filled = int(self.width * event.epoch / total)
        bar = "#" * filled + "." * (self.width - filled)
        text = f"epoch {event.epoch:>{len(str(total))}}/{total} [{bar}] loss {number(event.loss)}"
        if event.HasField("val_loss"):
            text += f"  val_loss {number(event.val_loss)}"
        text += f"  {time.monotonic() - self._started:5.1f}s"
        if self.interactive:
            self.stream.write("\r" + text + "\x1b[K")
            self._drawn = True
        else:
            every = max(1, total // self.log_lines)
            if event.epoch == 1 or event.epoch % every == 0 or event.epoch == total:
                self.stream.write(text + "\n")
        self.stream.flush()

    def close(self) -> None:
        if self._drawn:
            self.stream.write("\n")
            self.stream.flush()
            self._drawn = False


def _dataset_kind(info: dataset_pb2.DatasetInfo) -> str:
    return {dataset_pb2.DATASET_SERIES: "series", dataset_pb2.DATASET_SUPERVISED: "supervised"}.get(
        info.kind, "?"
    )


def _megabytes(size: int) -> str:
    return f"{size / 2**20:.1f} MiB"


def dataset_rows(datasets: Iterable[dataset_pb2.DatasetInfo]) -> str:
    rows = [
        [
            d.id,
            _dataset_kind(d),
            d.rows,
            ",".join(d.columns),
            _megabytes(d.size_bytes),
            "yes" if d.in_use else "",
            d.created_at,
        ]
        for d in datasets
    ]
    return table(["id", "kind", "rows", "columns", "size", "in use", "created"], rows, right=[2, 4])


def dataset_description(info: dataset_pb2.DatasetInfo) -> str:
    arrays = ", ".join(f"{a.name} {list(a.shape)}" for a in info.arrays)
    lines = [
        f"dataset {info.id}: {_dataset_kind(info)}, {info.rows} rows in {info.chunks} part(s), "
        f"{_megabytes(info.size_bytes)}{' (in use by a training job)' if info.in_use else ''}",
        f"  arrays: {arrays}",
    ]
    if info.columns:
        lines.append(f"  columns: {', '.join(info.columns)}")
    lines.append(f"  created: {info.created_at}")
    return "\n".join(lines)
