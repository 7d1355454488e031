"""PNG figures with matplotlib's Agg canvas: training curves, predictions, scaling.

Figures are drawn on an explicit FigureCanvasAgg rather than through pyplot, so no display is needed
and the caller's global matplotlib backend is left alone.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from protos.lstm_stack.v1 import model_pb2


def _save(figure: Figure, path: str | Path) -> Path:
    target = Path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    FigureCanvasAgg(figure)
    figure.tight_layout()
    figure.savefig(target, format="png", dpi=110)
    return target


def training_curves(
    histories: Mapping[str, Sequence[model_pb2.EpochEvent]], path: str | Path, title: str = ""
) -> Path:
    """Loss per epoch for one or more runs (plus validation loss where there was a holdout);
    log scale when the losses span more than two decades."""
    figure = Figure(figsize=(7, 4))
    axes = figure.add_subplot()
    every_loss: list[float] = []
    for name, history in histories.items():
        prefix = f"{name}: " if name else ""
        loss = [e.loss for e in history]
        every_loss.extend(loss)
        axes.plot([e.epoch for e in history], loss, label=f"{prefix}loss (train)")
        val = [(e.epoch, e.val_loss) for e in history if e.HasField("val_loss")]
        if val:
            axes.plot(
                [v[0] for v in val], [v[1] for v in val], linestyle="--", label=f"{prefix}val_loss (holdout)"
            )
    positive = np.array([v for v in every_loss if v > 0])
    if positive.size and positive.max() / positive.min() > 100:
        axes.set_yscale("log")
    axes.set_xlabel("epoch")
    axes.set_ylabel("loss")
    axes.set_title(title or "training curve")
    axes.grid(True, alpha=0.3)
    axes.legend()
    return _save(figure, path)


def training_curve(history: Sequence[model_pb2.EpochEvent], path: str | Path, title: str = "") -> Path:
    return training_curves({"": history}, path, title)


def predicted_vs_actual(
    predicted: np.ndarray,
    path: str | Path,
    actual: np.ndarray | None = None,
    *,
    labels: Sequence[str] | None = None,
    title: str = "",
) -> Path:
    """Predicted values per sample, next to the actual ones when known (plus a predicted-vs-actual scatter)."""
    pred = np.asarray(predicted, dtype=float).reshape(len(predicted), -1)[:, 0]
    index = np.arange(len(pred))
    with_actual = actual is not None
    figure = Figure(figsize=(11 if with_actual else 7, 4))
    bars = figure.add_subplot(1, 2 if with_actual else 1, 1)
    width = 0.4 if with_actual else 0.6
    if with_actual:
        truth = np.asarray(actual, dtype=float).reshape(len(pred), -1)[:, 0]
        bars.bar(index - width / 2, truth, width, label="actual")
        bars.bar(index + width / 2, pred, width, label="predicted")
    else:
        bars.bar(index, pred, width, label="predicted")
    bars.set_xticks(index, labels if labels is not None else [str(i) for i in index], rotation=30, ha="right")
    bars.set_xlabel("sample")
    bars.set_ylabel("value")
    bars.set_title(title or "predictions")
    bars.grid(True, axis="y", alpha=0.3)
    bars.legend()
    if with_actual:
        scatter = figure.add_subplot(1, 2, 2)
        scatter.scatter(truth, pred)
        low = float(min(truth.min(), pred.min()))
        high = float(max(truth.max(), pred.max()))
        scatter.plot([low, high], [low, high], linestyle="--", color="gray", label="perfect")
        scatter.set_xlabel("actual")
        scatter.set_ylabel("predicted")
        scatter.set_title("predicted vs actual")
        scatter.grid(True, alpha=0.3)
        scatter.legend()
    return _save(figure, path)


def scaling_comparison(
    original: np.ndarray, scaled: Mapping[str, np.ndarray], path: str | Path, title: str = ""
) -> Path:
    """One panel per scaler: each sample's first column before (x) and after (y) scaling."""
    figure = Figure(figsize=(4 * len(scaled), 4))
    x = np.asarray(original, dtype=float).reshape(len(original), -1)[:, 0]
    for i, (name, values) in enumerate(scaled.items(), start=1):
        axes = figure.add_subplot(1, len(scaled), i)
        y = np.asarray(values, dtype=float).reshape(len(values), -1)[:, 0]
        axes.scatter(x, y)
        axes.set_xscale("symlog")
        # symlog on both axes: the outliers and the small rows' spread show up in one panel.
        axes.set_yscale("symlog", linthresh=1)
        axes.set_xlabel("original (first column, symlog)")
        axes.set_ylabel("scaled (symlog)")
        axes.set_title(name)
        axes.grid(True, alpha=0.3)
    if title:
        figure.suptitle(title)
    return _save(figure, path)


def compare_predictions(
    actual: np.ndarray,
    predicted: Mapping[str, np.ndarray],
    path: str | Path,
    *,
    labels: Sequence[str] | None = None,
    title: str = "",
) -> Path:
    """Actual values next to several models' predictions per sample (symlog: values may span decades)."""
    truth = np.asarray(actual, dtype=float).ravel()
    index = np.arange(len(truth))
    width = 0.8 / (len(predicted) + 1)
    figure = Figure(figsize=(8, 4))
    axes = figure.add_subplot()
    axes.bar(index - 0.4 + width / 2, truth, width, label="actual")
    for i, (name, values) in enumerate(predicted.items(), start=1):
        axes.bar(index - 0.4 + width * (i + 0.5), np.asarray(values, dtype=float).ravel(), width, label=name)
    if np.abs(truth).max() / max(np.abs(truth).min(), 1e-12) > 100:
        axes.set_yscale("symlog", linthresh=10)
    axes.set_xticks(index, labels if labels is not None else [str(i) for i in index], rotation=20, ha="right")
    axes.set_ylabel("value (original units)")
    axes.set_title(title or "predictions")
    axes.grid(True, axis="y", alpha=0.3)
    axes.legend()
    return _save(figure, path)


def forecast_plot(
    history: np.ndarray,
    point: np.ndarray,
    path: str | Path,
    lower: np.ndarray | None = None,
    upper: np.ndarray | None = None,
    actual: np.ndarray | None = None,
    band_label: str = "interval",
    title: str = "",
    start: float = 0.0,
) -> Path:
    """One target's history, the forecast after it and its interval band (and what happened, if known).
    ``history`` (length,), ``point``/``lower``/``upper``/``actual`` (horizon,); x positions from ``start``."""
    figure = Figure(figsize=(8, 4))
    axes = figure.add_subplot()
    n, h = len(history), len(point)
    past = start + np.arange(n)
    future = start + np.arange(n, n + h)
    axes.plot(past, history, color="tab:blue", label="history")
    if lower is not None and upper is not None:
        axes.fill_between(future, lower, upper, color="tab:orange", alpha=0.25, label=band_label)
    # Joined to the last observed point so the forecast reads as its continuation.
    axes.plot(
        np.concatenate([past[-1:], future]),
        np.concatenate([history[-1:], point]),
        color="tab:orange",
        marker="o",
        markersize=3,
        label="forecast",
    )
    if actual is not None:
        axes.plot(future, actual, color="black", linestyle="--", label="actual")
    axes.set_title(title or f"{h}-step forecast")
    axes.grid(True, alpha=0.3)
    axes.legend()
    return _save(figure, path)


def backtest_chart(
    series: np.ndarray,
    origins: Sequence[int],
    forecasts: Sequence[np.ndarray],
    path: str | Path,
    lowers: Sequence[np.ndarray | None] = (),
    uppers: Sequence[np.ndarray | None] = (),
    metrics: Mapping[str, float] | None = None,
    baseline: Sequence[np.ndarray] = (),
    baseline_label: str = "baseline",
    title: str = "",
    start: float = 0.0,
) -> Path:
    """The series with every backtest window's forecast (and band) drawn from its origin; the aggregate
    metrics in the title. ``forecasts[i]`` (horizon,) starts at row ``origins[i]``."""
    figure = Figure(figsize=(9, 4))
    axes = figure.add_subplot()
    first = max(0, min(origins) - 3 * len(forecasts[0])) if origins else 0
    rows = np.arange(first, len(series))
    axes.plot(start + rows, series[first:], color="tab:blue", label="series")
    for i, (origin, forecast) in enumerate(zip(origins, forecasts, strict=True)):
        steps = start + origin + np.arange(len(forecast))
        low = lowers[i] if i < len(lowers) else None
        high = uppers[i] if i < len(uppers) else None
        if low is not None and high is not None:
            axes.fill_between(
                steps,
                low,
                high,
                color="tab:orange",
                alpha=0.2,
                label="interval" if i == 0 else None,
            )
        axes.plot(
            steps,
            forecast,
            color="tab:orange",
            marker="o",
            markersize=3,
            label="forecast" if i == 0 else None,
        )
        if i < len(baseline):
            axes.plot(
                steps, baseline[i], color="tab:gray", linestyle=":", label=baseline_label if i == 0 else None
            )
        axes.axvline(start + origin, color="tab:gray", alpha=0.2)
    figures = ", ".join(f"{k} {v:.3g}" for k, v in sorted((metrics or {}).items()))
    axes.set_title(
        (title or f"backtest, {len(origins)} windows") + (f"\n{figures}" if figures else ""), fontsize=9
    )
    axes.grid(True, alpha=0.3)
    axes.legend()
    return _save(figure, path)
