"""``lstm-stack``: the command line for the scaler and model services.

    lstm-stack scaler fit --kind robust --data train.csv
    lstm-stack model validate --layers lstm:10:relu,lstm:2:relu,lstm:10:relu,dense:5 --timesteps 3
    lstm-stack model train --layers ... --timesteps 3 --x x.csv --y y.csv --epochs 200 --plot plots/
    lstm-stack model predict --id MODEL --x "50,60,70"

Exit codes: 0 success, 1 the service refused or failed the call, 2 bad command-line input,
130 training cancelled with Ctrl-C.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, TextIO

import numpy as np
from google.protobuf import json_format
from google.protobuf.message import Message

from protos.lstm_stack.v1 import model_pb2, scaler_pb2

from . import datasets as dataset_files
from . import display
from .client import (
    DEFAULT_MODEL_ADDRESS,
    DEFAULT_SCALER_ADDRESS,
    DEFAULT_TIMEOUT,
    DEFAULT_TRAIN_TIMEOUT,
    LstmStackClient,
    LstmStackError,
    connect,
)
from .specs import (
    LAYER_SYNTAX,
    SCALER_KINDS,
    TASKS,
    SpecError,
    load_model_spec,
    model_spec,
    parse_layers,
    parse_scaler_option,
    scaler_spec,
)

EXIT_OK = 0
EXIT_RPC_FAILED = 1
EXIT_USAGE = 2
EXIT_CANCELLED = 130


class UsageError(Exception):
    """Command-line input that cannot be used; reported with exit code 2."""


# ---------------------------------------------------------------- input


def _parse_inline(text: str, what: str) -> np.ndarray:
    rows = [row for row in text.split(";") if row.strip()]
    try:
        parsed = [[float(v) for v in row.replace(",", " ").split()] for row in rows]
    except ValueError:
        raise UsageError(
            f"{what}: {text!r} is neither a file nor numbers like '50,60,70' or '1,2,3;2,3,4'"
        ) from None
    if not parsed or any(not row for row in parsed):
        raise UsageError(f"{what}: no numbers in {text!r}")
    if len({len(row) for row in parsed}) != 1:
        raise UsageError(f"{what}: rows have different lengths: {[len(r) for r in parsed]}")
    array = np.array(parsed, dtype=np.float64)
    return array[0] if len(parsed) == 1 and ";" not in text else array


def _load_csv(path: Path, what: str) -> np.ndarray:
    lines = [
        ln for ln in path.read_text(encoding="utf-8").splitlines() if ln.strip() and not ln.startswith("#")
    ]
    if not lines:
        raise UsageError(f"{what}: {path} has no data")
    # A first line with letters in it is a header.
    has_header = any(c.isalpha() and c not in "eE" for c in lines[0]) or "nan" in lines[0].lower()
    body = lines[1:] if has_header else lines
    delimiter = "," if "," in body[0] else None
    try:
        return np.loadtxt(body, delimiter=delimiter, dtype=np.float64, ndmin=2)
    except ValueError as exc:
        raise UsageError(f"{what}: {path} is not a numeric CSV: {exc}") from None


def load_array(text: str, what: str) -> np.ndarray:
    """An array from a .npy file, a CSV file (header optional), or inline numbers ('50,60,70', 'a,b;c,d')."""
    path = Path(text)
    if path.suffix.lower() == ".npy":
        if not path.is_file():
            raise UsageError(f"{what}: no such file {path}")
        try:
            return np.load(path, allow_pickle=False)
        except ValueError as exc:
            raise UsageError(f"{what}: {path} is not a numeric .npy file: {exc}") from None
    try:
        is_file = path.is_file()
    except OSError:  # e.g. a long inline series is not a valid file name
        is_file = False
    if is_file:
        return _load_csv(path, what)
    return _parse_inline(text, what)


def windows_for(x: np.ndarray, timesteps: int, features: int, what: str = "x") -> np.ndarray:
    """(batch, timesteps, features) from 1-D (one window), 2-D (rows of timesteps*features) or 3-D input."""
    data = np.asarray(x, dtype=np.float64)
    if data.ndim == 1:
        data = data.reshape(1, -1)
    if data.ndim == 2:
        if data.shape[1] != timesteps * features:
            raise UsageError(
                f"{what}: rows have {data.shape[1]} values, but the model takes timesteps x features = "
                f"{timesteps} x {features} = {timesteps * features}"
            )
        data = data.reshape(len(data), timesteps, features)
    if data.ndim != 3 or data.shape[1:] != (timesteps, features):
        raise UsageError(
            f"{what}: shape {list(data.shape)} does not match the model input (batch, {timesteps}, {features})"
        )
    return data


def targets(y: np.ndarray) -> np.ndarray:
    data = np.asarray(y)
    return data.ravel() if data.ndim == 2 and data.shape[1] == 1 else data


def samples_2d(data: np.ndarray) -> np.ndarray:
    """Scaler input: 1-D means one feature over many samples."""
    return data.reshape(-1, 1) if data.ndim == 1 else data


def save_array(array: np.ndarray, path: str) -> None:
    target = Path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    if target.suffix.lower() == ".npy":
        np.save(target, array)
    else:
        np.savetxt(target, array.reshape(len(array), -1), delimiter=",", fmt="%.10g")


def _pair(text: str | None, what: str) -> tuple[float, float] | None:
    if text is None:
        return None
    parts = text.replace(":", ",").split(",")
    try:
        low, high = (float(p) for p in parts)
    except ValueError:
        raise UsageError(f"{what}: expected two numbers like '25,75', got {text!r}") from None
    return low, high


# ---------------------------------------------------------------- output


class Context:
    """What every command gets: parsed args, output streams, and lazily opened clients."""

    def __init__(self, args: argparse.Namespace, out: TextIO, err: TextIO):
        self.args = args
        self.out = out
        self.err = err
        self._client: LstmStackClient | None = None

    @property
    def client(self) -> LstmStackClient:
        if self._client is None:
            if bool(self.args.tls_cert) != bool(self.args.tls_key):
                raise UsageError("--tls-cert and --tls-key go together: both are needed for mutual TLS")
            self._client = connect(
                scaler_address=self.args.scaler_address,
                model_address=self.args.model_address,
                tls=self.args.tls,
                tls_root_cert=self.args.tls_ca,
                tls_client_cert=self.args.tls_cert,
                tls_client_key=self.args.tls_key,
                token=self.args.token,
                timeout=self.args.timeout,
                train_timeout=getattr(self.args, "train_timeout", DEFAULT_TRAIN_TIMEOUT),
            )
        return self._client

    def close(self) -> None:
        if self._client is not None:
            self._client.close()
            self._client = None

    def print(self, text: str = "") -> None:
        print(text, file=self.out, flush=True)

    def json(self, message: Message | list[Message] | dict[str, Any]) -> None:
        def plain(m: Message) -> Any:
            return json_format.MessageToDict(m, preserving_proto_field_name=True)

        if isinstance(message, Message):
            value: Any = plain(message)
        elif isinstance(message, list):
            value = [plain(m) for m in message]
        else:
            value = message
        self.print(json.dumps(value, indent=2))


def array_text(array: np.ndarray) -> str:
    return np.array2string(np.asarray(array), precision=6, separator=", ", max_line_width=110, threshold=500)


def scaler_description(info: scaler_pb2.ScalerInfo) -> str:
    lines = [
        f"scaler {info.id} v{info.version}: {display.scaler_kind(info.spec)}, "
        f"layout {scaler_pb2.Layout.Name(info.layout).lower().replace('_', '-')}, "
        f"sample shape {list(info.sample_shape)}, {info.n_columns} columns, "
        f"fitted on {info.n_samples_seen} samples",
        f"  fingerprint {info.fingerprint}, created {info.created_at}",
    ]
    for name, _ in info.statistics.DESCRIPTOR.fields_by_name.items():
        values = getattr(info.statistics, name)
        if len(values):
            lines.append(f"  {name:<10} {display.row_text(np.asarray(values), 6)}")
    if len(info.affine.scale):
        lines.append(f"  transform(x) = x * {display.row_text(np.asarray(info.affine.scale), 6)}")
        lines.append(f"                 + {display.row_text(np.asarray(info.affine.offset), 6)}")
    return "\n".join(lines)


# ---------------------------------------------------------------- scaler commands


def _scaler_spec_from(args: argparse.Namespace) -> scaler_pb2.ScalerSpec:
    return scaler_spec(
        args.kind,
        args.layout,
        feature_range=_pair(args.feature_range, "--feature-range"),
        clip=args.clip,
        with_mean=False if args.no_mean else None,
        with_std=False if args.no_std else None,
        quantile_range=_pair(args.quantile_range, "--quantile-range"),
        with_centering=False if args.no_centering else None,
        with_scaling=False if args.no_scaling else None,
        unit_variance=args.unit_variance,
    )


def cmd_scaler_fit(ctx: Context) -> int:
    args = ctx.args
    data = samples_2d(load_array(args.data, "--data"))
    info = ctx.client.scaler.fit(data, _scaler_spec_from(args), scaler_id=args.id or "")
    if args.json:
        ctx.json(info)
    else:
        ctx.print(scaler_description(info))
    return EXIT_OK


def _cmd_scaler_apply(ctx: Context, inverse: bool) -> int:
    args = ctx.args
    data = load_array(args.data, "--data")
    scaler = ctx.client.scaler
    if data.ndim == 1:
        # One row of the scaler's features ('100,200,300'), or many samples of a 1-feature scaler.
        fitted = scaler.get(args.id, version=args.version)
        one_row = list(fitted.sample_shape) == [len(data)] and len(data) > 1
        data = data.reshape(1, -1) if one_row else data.reshape(-1, 1)
    method = scaler.inverse_transform if inverse else scaler.transform
    result = method(args.id, data, version=args.version)
    if args.output:
        save_array(result, args.output)
        ctx.print(f"wrote {list(result.shape)} to {args.output}")
    elif args.json:
        ctx.json({"scaler_id": args.id, "data": result.tolist()})
    else:
        ctx.print(array_text(result))
    return EXIT_OK


def cmd_scaler_transform(ctx: Context) -> int:
    return _cmd_scaler_apply(ctx, inverse=False)


def cmd_scaler_inverse(ctx: Context) -> int:
    return _cmd_scaler_apply(ctx, inverse=True)


def cmd_scaler_get(ctx: Context) -> int:
    info = ctx.client.scaler.get(ctx.args.id, version=ctx.args.version)
    if ctx.args.json:
        ctx.json(info)
    else:
        ctx.print(scaler_description(info))
    return EXIT_OK


def cmd_scaler_list(ctx: Context) -> int:
    scalers = ctx.client.scaler.list(ctx.args.id or "")
    if ctx.args.json:
        ctx.json(list(scalers))
    elif not scalers:
        ctx.print("no scalers")
    else:
        ctx.print(display.scaler_rows(scalers))
    return EXIT_OK


def cmd_scaler_delete(ctx: Context) -> int:
    deleted = ctx.client.scaler.delete(ctx.args.id, version=ctx.args.version)
    ctx.print(f"deleted scaler {ctx.args.id} versions {', '.join(map(str, deleted)) or '(none)'}")
    return EXIT_OK


# ---------------------------------------------------------------- model commands


def spec_from_args(args: argparse.Namespace) -> model_pb2.ModelSpec:
    """--spec FILE (proto JSON), with any of the compact flags overriding its fields; or the flags alone."""
    if args.spec:
        spec = load_model_spec(args.spec)
        if args.layers:
            del spec.layers[:]
            spec.layers.extend(parse_layers(args.layers))
        if args.timesteps is not None:
            spec.input.timesteps = args.timesteps
        if args.features is not None:
            spec.input.features = args.features
        if args.task:
            spec.head.task = TASKS[args.task]
    else:
        if not args.layers or args.timesteps is None:
            raise UsageError("give --spec FILE.json, or --layers and --timesteps (" + LAYER_SYNTAX + ")")
        spec = model_spec(
            args.layers,
            timesteps=args.timesteps,
            features=args.features if args.features is not None else 1,
            task=args.task or "regression",
        )
    if args.outputs is not None:
        spec.head.outputs = args.outputs
    if args.classes is not None:
        spec.head.n_classes = args.classes
    if args.optimizer:
        spec.optimizer.name = args.optimizer
    if args.learning_rate is not None:
        spec.optimizer.learning_rate = args.learning_rate
    return spec


def cmd_model_validate(ctx: Context) -> int:
    response = ctx.client.model.validate(spec_from_args(ctx.args))
    if ctx.args.json:
        ctx.json(response)
    else:
        ctx.print(display.validation_report(response))
    return EXIT_OK


def _plot_dir(args: argparse.Namespace) -> Path | None:
    return Path(args.plot) if getattr(args, "plot", None) else None


def _names(text: str | None) -> list[str]:
    return [name.strip() for name in text.split(",") if name.strip()] if text else []


def cmd_model_train(ctx: Context) -> int:
    args = ctx.args
    spec = spec_from_args(args)
    data: dict[str, Any] = {}
    if args.dataset:
        if args.series or args.x or args.y:
            raise UsageError("give --dataset, --series, or --x and --y: one of them")
        data = {
            "dataset": args.dataset,
            "window": args.window or 0,
            "stride": args.stride,
            "input_columns": _names(args.input_columns),
            "target_columns": _names(args.target_columns),
        }
    elif args.series:
        if args.x or args.y:
            raise UsageError("give --series (with --window), or --x and --y, not both")
        if not args.window:
            raise UsageError("--series needs --window (the number of timesteps per sample)")
        data = {"series": load_array(args.series, "--series"), "window": args.window}
        data["target_feature"] = args.target_feature
        data.update(
            horizon=args.horizon,
            strategy=args.strategy,
            target_columns=_ints(args.target_columns, "--target-columns"),
            input_columns=_ints(args.input_columns, "--input-columns"),
            stride=args.stride,
            quantiles=_floats(args.quantiles, "--quantiles"),
        )
    else:
        if not args.x or not args.y:
            raise UsageError("training needs --x and --y (files or inline numbers), or --series and --window")
        data = {
            "x": windows_for(load_array(args.x, "--x"), spec.input.timesteps, spec.input.features or 1),
            "y": targets(load_array(args.y, "--y")),
        }
    run = ctx.client.model.train(
        spec,
        model_id=args.id or "",
        epochs=args.epochs,
        batch_size=args.batch_size,
        seed=args.seed,
        shuffle=args.shuffle,
        validation_fraction=args.validation_fraction,
        patience=args.patience,
        min_delta=args.min_delta,
        restore_best_weights=args.restore_best,
        x_scaling=args.x_scaler,
        y_scaling=args.y_scaler,
        **data,
    )
    progress = display.ProgressBar(ctx.out)
    try:
        for event in run:
            which = event.WhichOneof("event")
            if which == "started" and not args.json:
                s = event.started
                scalers = "".join(
                    f", {name} scaler {ref.scaler_id} v{ref.version}"
                    for name, ref in (("x", s.x_scaler), ("y", s.y_scaler))
                    if ref.scaler_id
                )
                ctx.print(
                    f"training model {s.model_id} v{s.version}: {s.n_train} training samples, "
                    f"{s.n_validation} held out{scalers}"
                )
            elif which == "epoch" and not args.json:
                progress.update(event.epoch)
    except KeyboardInterrupt:
        run.cancel()
        progress.close()
        where = f" (model {run.started.model_id} v{run.started.version})" if run.started else ""
        print(f"\ntraining cancelled{where}: nothing was saved", file=ctx.err, flush=True)
        return EXIT_CANCELLED
    finally:
        progress.close()
    model = run.result()
    if args.json:
        ctx.json(model)
    else:
        ctx.print(display.model_description(model))
    plot_dir = _plot_dir(args)
    if plot_dir is not None:
        from . import plots

        path = plots.training_curve(
            model.history,
            plot_dir / f"{model.id}-v{model.version}-training.png",
            title=f"{model.id} v{model.version}",
        )
        ctx.print(f"wrote {path}")
    return EXIT_OK


def _model_input(ctx: Context, text: str, what: str) -> tuple[np.ndarray, model_pb2.ModelInfo]:
    info = ctx.client.model.get(ctx.args.id, version=ctx.args.version)
    x = windows_for(load_array(text, what), info.spec.input.timesteps, info.spec.input.features or 1, what)
    return x, info


def cmd_model_predict(ctx: Context) -> int:
    args = ctx.args
    x, _ = _model_input(ctx, args.x, "--x")
    actual = targets(load_array(args.y, "--y")) if args.y else None
    if actual is not None and len(actual) != len(x):
        raise UsageError(f"--y has {len(actual)} values but --x has {len(x)} samples")
    prediction = ctx.client.model.predict(args.id, x, version=args.version)
    outputs = prediction.values if prediction.values is not None else prediction.probabilities
    if args.output and outputs is not None:
        save_array(outputs, args.output)
    if args.json:
        ctx.json(
            {
                "model_id": prediction.model_id,
                "version": prediction.version,
                **{
                    name: value.tolist()
                    for name in ("values", "probabilities", "labels")
                    if (value := getattr(prediction, name)) is not None
                },
            }
        )
    else:
        headers = ["#", "input"]
        columns: list[list[str]] = []
        if prediction.values is not None:
            headers.append("predicted")
            columns.append([display.row_text(v) for v in prediction.values])
        if prediction.labels is not None:
            headers.append("label")
            columns.append([str(int(v)) for v in prediction.labels])
        if prediction.probabilities is not None:
            headers.append("probabilities")
            columns.append([display.row_text(v) for v in prediction.probabilities])
        if actual is not None:
            headers.append("actual")
            columns.append([display.row_text(np.atleast_1d(v)) for v in actual])
        rows = [[i, display.row_text(x[i]), *(column[i] for column in columns)] for i in range(len(x))]
        ctx.print(f"model {prediction.model_id} v{prediction.version}")
        ctx.print(display.table(headers, rows, right=[0]))
    if args.output:
        ctx.print(f"wrote {args.output}")
    plot_dir = _plot_dir(args)
    if plot_dir is not None and outputs is not None:
        from . import plots

        path = plots.predicted_vs_actual(
            prediction.labels if prediction.values is None and prediction.labels is not None else outputs,
            plot_dir / f"{prediction.model_id}-v{prediction.version}-predictions.png",
            actual,
            title=f"{prediction.model_id} v{prediction.version}",
        )
        ctx.print(f"wrote {path}")
    return EXIT_OK


def cmd_model_evaluate(ctx: Context) -> int:
    args = ctx.args
    x, _ = _model_input(ctx, args.x, "--x")
    y = targets(load_array(args.y, "--y"))
    evaluation = ctx.client.model.evaluate(args.id, x, y, version=args.version)
    if args.json:
        ctx.json(
            {
                "model_id": evaluation.model_id,
                "version": evaluation.version,
                "n_samples": evaluation.n_samples,
                "metrics": evaluation.metrics,
            }
        )
        return EXIT_OK
    ctx.print(f"model {evaluation.model_id} v{evaluation.version} on {evaluation.n_samples} samples")
    rows = [[name, display.number(value)] for name, value in sorted(evaluation.metrics.items())]
    ctx.print(display.table(["metric", "value"], rows, right=[1]))
    return EXIT_OK


def _ints(text: str | None, what: str) -> list[int]:
    return [int(v) for v in _floats(text, what)] if text else []


def _floats(text: str | None, what: str) -> list[float]:
    if not text:
        return []
    try:
        return [float(v) for v in text.replace(",", " ").split()]
    except ValueError:
        raise UsageError(f"{what}: expected numbers like '0.1,0.5,0.9', got {text!r}") from None


def cmd_model_forecast(ctx: Context) -> int:
    args = ctx.args
    history = load_array(args.history, "--history")
    result = ctx.client.model.forecast(args.id, history, horizon=args.horizon, version=args.version)
    if args.output:
        save_array(result.point.reshape(result.point.shape[0] * result.horizon, -1), args.output)
    if args.json:
        ctx.json(
            {
                "model_id": result.model_id,
                "version": result.version,
                "horizon": result.horizon,
                "target_columns": list(result.target_columns),
                "point": result.point.tolist(),
                "quantiles": list(result.levels),
                **({"quantile_values": result.quantiles.tolist()} if result.quantiles is not None else {}),
            }
        )
    else:
        ctx.print(f"model {result.model_id} v{result.version}: {result.horizon} step(s) ahead")
        headers = ["series", "step", "target", "forecast"]
        if result.quantiles is not None:
            headers += [f"q{level:g}" for level in result.levels]
        rows = []
        for i in range(result.point.shape[0]):
            for step in range(result.horizon):
                for t, column in enumerate(result.target_columns):
                    row = [i, step + 1, column, display.number(float(result.point[i, step, t]))]
                    if result.quantiles is not None:
                        row += [display.number(float(v)) for v in result.quantiles[i, step, t]]
                    rows.append(row)
        ctx.print(display.table(headers, rows, right=[0, 1, 2]))
    if args.output:
        ctx.print(f"wrote {args.output}")
    plot_dir = _plot_dir(args)
    if plot_dir is not None:
        from . import plots

        series = history.reshape(-1, 1) if history.ndim == 1 else history
        series = series if series.ndim == 2 else series[0]
        column, first = result.target_columns[0], 0
        band = (
            None
            if result.quantiles is None
            else (result.quantiles[0, :, 0, 0], result.quantiles[0, :, 0, -1])
        )
        path = plots.forecast_plot(
            series[:, column],
            result.point[0, :, 0],
            plot_dir / f"{result.model_id}-v{result.version}-forecast.png",
            lower=band[0] if band else None,
            upper=band[1] if band else None,
            band_label=f"q{result.levels[0]:g}-q{result.levels[-1]:g}" if band else "interval",
            title=f"{result.model_id} v{result.version}: column {column}, series {first}",
        )
        ctx.print(f"wrote {path}")
    return EXIT_OK


def cmd_model_backtest(ctx: Context) -> int:
    args = ctx.args
    series = load_array(args.series, "--series")
    result = ctx.client.model.backtest(
        args.id,
        series,
        windows=args.windows,
        origin_step=args.origin_step,
        horizon=args.horizon,
        season_length=args.season_length,
        retrain=args.retrain,
        version=args.version,
    )
    if args.json:
        ctx.json(
            {
                "windows": [
                    {
                        "index": w.index,
                        "origin": w.origin,
                        "metrics": w.metrics,
                        "forecast": w.forecast.tolist(),
                    }
                    for w in result.windows
                ],
                "summary": result.summary,
            }
        )
    else:
        names = sorted({name for w in result.windows for name in w.metrics})
        rows = [
            [w.index, w.origin, *(display.number(w.metrics[n]) if n in w.metrics else "" for n in names)]
            for w in result.windows
        ]
        rows.append(
            ["all", "", *(display.number(result.summary[n]) if n in result.summary else "" for n in names)]
        )
        ctx.print(f"backtest of {args.id}: {len(result.windows)} window(s)")
        ctx.print(display.table(["window", "origin", *names], rows, right=list(range(len(names) + 2))))
    plot_dir = _plot_dir(args)
    if plot_dir is not None and result.windows:
        from . import plots

        rows_2d = series.reshape(-1, 1) if series.ndim == 1 else series
        info = ctx.client.model.get(args.id, version=args.version)
        column = info.forecast.target_columns[0] if info.forecast.target_columns else 0
        path = plots.backtest_chart(
            rows_2d[:, column],
            [w.origin for w in result.windows],
            [w.forecast[:, 0] for w in result.windows],
            plot_dir / f"{args.id}-v{result.windows[0].model_version}-backtest.png",
            lowers=[None if w.lower is None else w.lower[:, 0] for w in result.windows],
            uppers=[None if w.upper is None else w.upper[:, 0] for w in result.windows],
            metrics={k: v for k, v in result.summary.items() if k in ("mae", "mase", "smape", "coverage")},
            title=f"backtest of {args.id}, column {column}",
        )
        ctx.print(f"wrote {path}")
    return EXIT_OK


def cmd_model_list(ctx: Context) -> int:
    models = ctx.client.model.list(ctx.args.id or "")
    if ctx.args.json:
        ctx.json(list(models))
    elif not models:
        ctx.print("no models")
    else:
        ctx.print(display.model_rows(models))
    return EXIT_OK


def cmd_model_describe(ctx: Context) -> int:
    info = ctx.client.model.get(ctx.args.id, version=ctx.args.version)
    if ctx.args.json:
        ctx.json(info)
    else:
        ctx.print(display.model_description(info))
    return EXIT_OK


def cmd_model_delete(ctx: Context) -> int:
    deleted = ctx.client.model.delete(ctx.args.id, version=ctx.args.version)
    ctx.print(f"deleted model {ctx.args.id} versions {', '.join(map(str, deleted)) or '(none)'}")
    return EXIT_OK


def cmd_model_export(ctx: Context) -> int:
    args = ctx.args
    info = ctx.client.model.export(args.id, args.output, format=args.format, version=args.version)
    if args.json:
        ctx.json(info)
        return EXIT_OK
    ctx.print(
        f"exported model {info.model_id} v{info.version} as {args.format} to {args.output} "
        f"({info.size_bytes} bytes, sha256 {info.sha256[:12]}...)"
    )
    ctx.print(f"  input {info.input_name}: float64 (batch, timesteps, features) in raw units")
    ctx.print(f"  outputs: {', '.join(info.output_names)} (scalers folded into the graph)")
    return EXIT_OK


def _scaler_ref(text: str | None, flag: str) -> tuple[str, int] | None:
    if not text:
        return None
    scaler_id, _, version = text.partition(":")
    if not scaler_id or (version and not version.isdigit()):
        raise UsageError(f"{flag} takes SCALER_ID or SCALER_ID:VERSION, got {text!r}")
    return scaler_id, int(version or 0)


def cmd_model_import(ctx: Context) -> int:
    args = ctx.args
    if not Path(args.file).is_file():
        raise UsageError(f"{args.file}: no such file")
    info = ctx.client.model.import_model(
        args.file,
        task=args.task,
        outputs=args.outputs or 0,
        n_classes=args.classes or 0,
        model_id=args.id or "",
        timesteps=args.timesteps or 0,
        features=args.features or 0,
        x_scaler=_scaler_ref(args.x_scaler_ref, "--x-scaler"),
        y_scaler=_scaler_ref(args.y_scaler_ref, "--y-scaler"),
    )
    if args.json:
        ctx.json(info)
    else:
        ctx.print(f"imported {args.file} as model {info.id} v{info.version}")
        ctx.print(display.model_description(info))
    return EXIT_OK


def cmd_model_tensorboard(ctx: Context) -> int:
    args = ctx.args
    if args.version:
        logdir = ctx.client.model.get(args.id, version=args.version).tensorboard_logdir
        if not logdir:
            raise UsageError(
                f"model {args.id} v{args.version} has no TensorBoard events (it was not trained here)"
            )
    else:
        # The id's directory: every trained version is a run in it, named by its version number.
        runs = [info.tensorboard_logdir for info in ctx.client.model.list(args.id) if info.tensorboard_logdir]
        if not runs:
            raise UsageError(f"model {args.id} has no version with TensorBoard events")
        logdir = str(Path(runs[0]).parent)
    command = ["tensorboard", "--logdir", logdir, "--host", args.host, "--port", str(args.port)]
    if args.json:
        ctx.json({"logdir": logdir, "command": command})
    else:
        ctx.print(" ".join(command))
        if not Path(logdir).is_dir():
            ctx.print(
                f"# {logdir} is on the model service's host: run the command there (or mount its store)"
            )
    if args.launch:
        ctx.close()
        os.execvp(command[0], command)  # replaces this process; OSError (not installed) exits 2
    return EXIT_OK


# ---------------------------------------------------------------- dataset commands


def _open_rows(path: str, what: str) -> tuple[Any, list[str]]:
    """Rows of a .npy (memory-mapped) or a CSV (read in chunks; its header names the columns) file."""
    if path.endswith(".npy"):
        return dataset_files.load_npy(path), []
    if path.endswith(".csv"):
        return None, dataset_files.csv_columns(path)
    raise UsageError(f"{what}: expected a .npy or .csv file, got {path!r}")


def cmd_dataset_upload(ctx: Context) -> int:
    args = ctx.args
    rows = args.rows_per_chunk
    if args.series:
        if args.x or args.y:
            raise UsageError("give --series, or --x and --y, not both")
        array, header = _open_rows(args.series, "--series")
        columns = [c.strip() for c in args.columns.split(",")] if args.columns else header
        if not columns:
            raise UsageError("a .npy series needs --columns NAME,NAME,... (one name per column)")
        chunks = dataset_files.csv_chunks(args.series, rows) if array is None else array
        info = ctx.client.datasets.upload_series(chunks, columns, rows_per_chunk=rows)
    else:
        if not (args.x and args.y) or not (args.x.endswith(".npy") and args.y.endswith(".npy")):
            raise UsageError("a supervised dataset needs --x and --y as .npy files (or give --series)")
        info = ctx.client.datasets.upload_supervised(
            dataset_files.load_npy(args.x), dataset_files.load_npy(args.y), rows_per_chunk=rows
        )
    if args.json:
        ctx.json(info)
    else:
        ctx.print(display.dataset_description(info))
    return EXIT_OK


def cmd_dataset_get(ctx: Context) -> int:
    info = ctx.client.datasets.get(ctx.args.id)
    if ctx.args.json:
        ctx.json(info)
    else:
        ctx.print(display.dataset_description(info))
    return EXIT_OK


def cmd_dataset_list(ctx: Context) -> int:
    found = ctx.client.datasets.list()
    if ctx.args.json:
        ctx.json(list(found))
    elif not found:
        ctx.print("no datasets")
    else:
        ctx.print(display.dataset_rows(found))
    return EXIT_OK


def cmd_dataset_delete(ctx: Context) -> int:
    ctx.client.datasets.delete(ctx.args.id)
    ctx.print(f"deleted dataset {ctx.args.id}")
    return EXIT_OK


# ---------------------------------------------------------------- parser


def _global_options(parser: argparse.ArgumentParser, suppress: bool) -> None:
    """The connection options, accepted before or after the subcommand."""

    def default(value: Any) -> Any:
        return argparse.SUPPRESS if suppress else value

    env = os.environ
    parser.add_argument(
        "--scaler-address",
        default=default(env.get("LSTM_STACK_SCALER_ADDRESS", DEFAULT_SCALER_ADDRESS)),
        help=f"scaler service host:port (env LSTM_STACK_SCALER_ADDRESS, default {DEFAULT_SCALER_ADDRESS})",
    )
    parser.add_argument(
        "--model-address",
        default=default(env.get("LSTM_STACK_MODEL_ADDRESS", DEFAULT_MODEL_ADDRESS)),
        help=f"model service host:port (env LSTM_STACK_MODEL_ADDRESS, default {DEFAULT_MODEL_ADDRESS})",
    )
    parser.add_argument(
        "--token",
        default=default(env.get("LSTM_STACK_TOKEN") or None),
        help="bearer token sent as 'authorization: Bearer TOKEN' (env LSTM_STACK_TOKEN)",
    )
    parser.add_argument("--tls", action="store_true", default=default(False), help="use TLS (system roots)")
    parser.add_argument(
        "--tls-ca",
        default=default(env.get("LSTM_STACK_TLS_CA") or None),
        help="PEM root certificate; implies TLS (env LSTM_STACK_TLS_CA)",
    )
    parser.add_argument(
        "--tls-cert",
        default=default(env.get("LSTM_STACK_TLS_CERT") or None),
        help="PEM client certificate, mutual TLS (env LSTM_STACK_TLS_CERT)",
    )
    parser.add_argument(
        "--tls-key",
        default=default(env.get("LSTM_STACK_TLS_KEY") or None),
        help="PEM client key, mutual TLS (env LSTM_STACK_TLS_KEY)",
    )
    parser.add_argument(
        "--timeout",
        type=float,
        default=default(DEFAULT_TIMEOUT),
        help=f"deadline in seconds for each call (default {DEFAULT_TIMEOUT:g})",
    )
    parser.add_argument("--json", action="store_true", default=default(False), help="print results as JSON")


def _spec_options(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group("model spec (a proto-JSON file, or the compact flags)")
    group.add_argument("--spec", help="ModelSpec as proto JSON")
    group.add_argument("--layers", help=LAYER_SYNTAX)
    group.add_argument("--task", choices=["regression", "binary", "multiclass"])
    group.add_argument("--timesteps", type=int)
    group.add_argument("--features", type=int)
    group.add_argument("--outputs", type=int, help="regression targets per sample (default 1)")
    group.add_argument("--classes", type=int, help="classes for --task multiclass")
    group.add_argument("--optimizer", help="adam (default), sgd, rmsprop, adamw")
    group.add_argument("--learning-rate", type=float)


def _id_options(parser: argparse.ArgumentParser, what: str, required: bool = True) -> None:
    parser.add_argument("--id", required=required, help=f"{what} id")
    parser.add_argument("--version", type=int, default=0, help="version (default 0: the latest)")


def build_parser() -> argparse.ArgumentParser:
    common = argparse.ArgumentParser(add_help=False)
    _global_options(common, suppress=True)

    parser = argparse.ArgumentParser(
        prog="lstm-stack",
        description="Client for the lstm-stack scaler and model services.",
        epilog="Exit codes: 0 ok, 1 the call failed, 2 bad input, 130 training cancelled.",
    )
    _global_options(parser, suppress=False)
    groups = parser.add_subparsers(dest="group", required=True, metavar="{scaler,model,dataset}")

    def command(
        sub: argparse._SubParsersAction, name: str, handler: Callable[[Context], int], help_text: str
    ) -> argparse.ArgumentParser:
        p = sub.add_parser(name, parents=[common], help=help_text, description=help_text)
        p.set_defaults(handler=handler)
        return p

    # scaler
    scaler = groups.add_parser("scaler", help="fit and apply scikit-learn scalers").add_subparsers(
        dest="command", required=True
    )
    fit = command(scaler, "fit", cmd_scaler_fit, "fit a new scaler version on training data")
    fit.add_argument("--kind", required=True, choices=sorted(SCALER_KINDS))
    fit.add_argument("--layout", choices=["per-feature", "per-column"], help="for 3-D data")
    fit.add_argument("--id", help="make a new version of this id (default: a new id)")
    fit.add_argument("--data", required=True, help="training data: .npy, .csv, or inline '1,2,3;2,3,4'")
    fit.add_argument("--feature-range", help="minmax: 'MIN,MAX' (default 0,1)")
    fit.add_argument("--clip", action="store_true", help="minmax: clip transformed values to the range")
    fit.add_argument("--no-mean", action="store_true", help="standard: do not center")
    fit.add_argument("--no-std", action="store_true", help="standard: do not scale")
    fit.add_argument("--quantile-range", help="robust: 'LOW,HIGH' percentiles (default 25,75)")
    fit.add_argument("--no-centering", action="store_true", help="robust: do not center")
    fit.add_argument("--no-scaling", action="store_true", help="robust: do not scale")
    fit.add_argument("--unit-variance", action="store_true", help="robust: scale to unit variance")
    for name, handler, text in (
        ("transform", cmd_scaler_transform, "scale data with a fitted scaler"),
        ("inverse", cmd_scaler_inverse, "map scaled data back to original units"),
    ):
        p = command(scaler, name, handler, text)
        _id_options(p, "scaler")
        p.add_argument("--data", required=True, help=".npy, .csv, or inline '1,2,3;2,3,4'")
        p.add_argument("--output", help="write the result to this .npy or .csv file")
    _id_options(command(scaler, "get", cmd_scaler_get, "show a scaler's fitted statistics"), "scaler")
    lst = command(scaler, "list", cmd_scaler_list, "list scaler versions")
    lst.add_argument("--id", help="only versions of this id")
    _id_options(
        command(scaler, "delete", cmd_scaler_delete, "delete one version (or all with --version 0)"), "scaler"
    )

    # model
    model = groups.add_parser("model", help="declare, train and serve stacked LSTMs").add_subparsers(
        dest="command", required=True
    )
    _spec_options(command(model, "validate", cmd_model_validate, "print a spec's layer-by-layer shapes"))
    train = command(model, "train", cmd_model_train, "train a model version with live progress")
    _spec_options(train)
    data = train.add_argument_group("data")
    data.add_argument("--x", help="inputs: .npy, .csv (a row per sample), or inline '1,2,3;2,3,4'")
    data.add_argument("--y", help="targets: .npy, .csv, or inline '4,5'")
    data.add_argument("--series", help="a raw series to cut into windows instead of --x/--y")
    data.add_argument("--window", type=int, help="with --series: timesteps per window")
    data.add_argument("--target-feature", type=int, default=0, help="with --series: the column y comes from")
    data.add_argument("--horizon", type=int, default=0, help="with --series: steps ahead (default 1)")
    data.add_argument("--strategy", choices=["direct", "recursive"], default="direct", help="with --series")
    data.add_argument(
        "--target-columns",
        help="columns to forecast: indices with --series (e.g. '0,2'), names with a series --dataset",
    )
    data.add_argument(
        "--input-columns",
        help="columns the model reads (default: all): indices with --series, names with a series --dataset",
    )
    data.add_argument("--stride", type=int, default=0, help="with a series: rows between windows (default 1)")
    data.add_argument("--quantiles", help="with --series: quantile head levels, e.g. '0.1,0.5,0.9'")
    data.add_argument(
        "--dataset", help="a stored dataset id (lstm-stack dataset upload) instead of sending data"
    )
    training = train.add_argument_group("training")
    training.add_argument("--id", help="make a new version of this id (default: a new id)")
    training.add_argument("--epochs", type=int, default=0, help="default: the service's (10)")
    training.add_argument("--batch-size", type=int, default=0, help="default 32")
    training.add_argument("--seed", type=int, default=0)
    training.add_argument("--shuffle", action="store_true", help="shuffle within the training split")
    training.add_argument("--validation-fraction", type=float, default=0.0, help="last fraction held out")
    training.add_argument("--patience", type=int, default=0, help="early stopping patience (0: off)")
    training.add_argument("--min-delta", type=float, default=0.0)
    training.add_argument("--restore-best", action="store_true", help="keep the best epoch's weights")
    training.add_argument("--x-scaler", help="scale x: KIND[:LAYOUT], e.g. robust or minmax:per-column")
    training.add_argument("--y-scaler", help="scale y (regression): KIND")
    training.add_argument(
        "--train-timeout", type=float, default=DEFAULT_TRAIN_TIMEOUT, help="deadline for the whole training"
    )
    training.add_argument("--plot", metavar="DIR", help="write the training curve PNG into DIR")

    predict = command(model, "predict", cmd_model_predict, "predict in original units")
    _id_options(predict, "model")
    predict.add_argument(
        "--x", required=True, help="inline '50,60,70' (one window), '1,2,3;2,3,4', .csv or .npy"
    )
    predict.add_argument("--y", help="actual values, to show and plot next to the predictions")
    predict.add_argument("--output", help="write predictions to this .npy or .csv file")
    predict.add_argument("--plot", metavar="DIR", help="write a predicted-vs-actual PNG into DIR")

    evaluate = command(model, "evaluate", cmd_model_evaluate, "metrics on labelled data")
    _id_options(evaluate, "model")
    evaluate.add_argument("--x", required=True)
    evaluate.add_argument("--y", required=True)

    fc = command(model, "forecast", cmd_model_forecast, "the next steps after a history, in original units")
    _id_options(fc, "model")
    fc.add_argument("--history", required=True, help="recent rows in raw units: inline '1,2,3', .csv or .npy")
    fc.add_argument("--horizon", type=int, default=0, help="steps ahead (default: the model's horizon)")
    fc.add_argument("--output", help="write the point forecast to this .npy or .csv file")
    fc.add_argument("--plot", metavar="DIR", help="write history, forecast and interval band PNG into DIR")

    bt = command(model, "backtest", cmd_model_backtest, "rolling-origin evaluation on a series")
    _id_options(bt, "model")
    bt.add_argument("--series", required=True, help="the whole series in raw units: .csv, .npy or inline")
    bt.add_argument("--windows", type=int, default=5, help="rolling origins (default 5)")
    bt.add_argument("--origin-step", type=int, default=0, help="rows between origins (default: the horizon)")
    bt.add_argument("--horizon", type=int, default=0, help="steps per window (default: the model's)")
    bt.add_argument("--season-length", type=int, default=0, help="also score a seasonal-naive baseline")
    bt.add_argument("--retrain", action="store_true", help="retrain the version's settings per window")
    bt.add_argument("--plot", metavar="DIR", help="write the backtest chart PNG into DIR")

    lst = command(model, "list", cmd_model_list, "list model versions")
    lst.add_argument("--id", help="only versions of this id")
    _id_options(command(model, "describe", cmd_model_describe, "show a model version"), "model")
    _id_options(
        command(model, "delete", cmd_model_delete, "delete one version (or all with --version 0)"), "model"
    )

    export = command(model, "export", cmd_model_export, "write a version as ONNX or a SavedModel tar")
    _id_options(export, "model")
    export.add_argument("--format", choices=["onnx", "savedmodel"], default="onnx")
    export.add_argument("-o", "--output", required=True, help="file to write (appears only when whole)")

    imp = command(model, "import", cmd_model_import, "bring a Keras model (.keras) in as a new version")
    imp.add_argument("file", help="the .keras archive (streamed in chunks)")
    imp.add_argument(
        "--task",
        required=True,
        choices=["regression", "binary", "multiclass"],
        help="the head the model ends in",
    )
    imp.add_argument("--outputs", type=int, help="regression targets per sample (default 1)")
    imp.add_argument("--classes", type=int, help="classes for --task multiclass")
    imp.add_argument("--id", help="make a new version of this id (default: a new id)")
    imp.add_argument("--timesteps", type=int, help="check the model's input has these timesteps")
    imp.add_argument("--features", type=int, help="check the model's input has these features")
    imp.add_argument(
        "--x-scaler",
        dest="x_scaler_ref",
        metavar="ID[:VERSION]",
        help="the scaler service's x scaler the model was trained with",
    )
    imp.add_argument(
        "--y-scaler",
        dest="y_scaler_ref",
        metavar="ID[:VERSION]",
        help="the y scaler (regression) to invert its outputs with",
    )

    board = command(model, "tensorboard", cmd_model_tensorboard, "print (or run) the tensorboard command")
    _id_options(board, "model")
    board.add_argument("--launch", action="store_true", help="run tensorboard (it must be installed here)")
    board.add_argument("--host", default="127.0.0.1", help="tensorboard --host (default 127.0.0.1)")
    board.add_argument("--port", type=int, default=6006, help="tensorboard --port (default 6006)")

    # dataset
    dataset = groups.add_parser("dataset", help="upload training data of any size, in chunks").add_subparsers(
        dest="command", required=True
    )
    up = command(dataset, "upload", cmd_dataset_upload, "upload a series or x/y samples in chunks of rows")
    up.add_argument(
        "--series", help="a raw series: .npy (memory-mapped) or .csv (a header row names the columns)"
    )
    up.add_argument(
        "--columns", help="column names NAME,NAME,... (a .npy series needs them; default: the CSV header)"
    )
    up.add_argument("--x", help="supervised samples: .npy (rows, timesteps, features), memory-mapped")
    up.add_argument("--y", help="supervised targets: .npy (rows,) or (rows, outputs)")
    up.add_argument("--rows-per-chunk", type=int, default=0, help="rows per message (default: about 4 MiB)")
    for name, handler, text in (
        ("get", cmd_dataset_get, "show a dataset"),
        ("delete", cmd_dataset_delete, "delete a dataset (refused while a training job uses it)"),
    ):
        command(dataset, name, handler, text).add_argument("--id", required=True, help="dataset id")
    command(dataset, "list", cmd_dataset_list, "list datasets")
    return parser


def _parse_scaler_flags(args: argparse.Namespace) -> None:
    for name in ("x_scaler", "y_scaler"):
        value = getattr(args, name, None)
        if isinstance(value, str):
            setattr(args, name, parse_scaler_option(value))


def main(argv: Sequence[str] | None = None, *, out: TextIO | None = None, err: TextIO | None = None) -> int:
    args = build_parser().parse_args(argv)
    ctx = Context(args, out or sys.stdout, err or sys.stderr)
    try:
        _parse_scaler_flags(args)
        return args.handler(ctx)
    except (UsageError, SpecError, OSError) as exc:
        print(f"error: {exc}", file=ctx.err)
        return EXIT_USAGE
    except LstmStackError as exc:
        print(f"error: {exc.code.name}: {exc.details}", file=ctx.err)
        if exc.code.name == "UNAVAILABLE":
            print(
                f"hint: is the service running? scaler at {args.scaler_address}, model at {args.model_address}",
                file=ctx.err,
            )
        return EXIT_RPC_FAILED
    finally:
        ctx.close()


if __name__ == "__main__":
    sys.exit(main())
