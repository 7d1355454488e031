"""Typed client for the lstm-stack scaler and model services: numpy in, numpy out.

Every call carries a deadline. Only idempotent calls (Get/List/Transform/Predict/Validate/Evaluate)
are retried, and only when the server is UNAVAILABLE, with exponential backoff inside that deadline.
Fit, Train and Delete are never retried: a retry could create a second version or act twice.
"""

from __future__ import annotations

import builtins
import hashlib
import os
import random
import time
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from types import TracebackType
from typing import Any, Self, TypeVar

import grpc
import numpy as np

from protos.lstm_stack.v1 import (
    dataset_pb2,
    dataset_pb2_grpc,
    model_pb2,
    model_pb2_grpc,
    scaler_pb2,
    scaler_pb2_grpc,
    tensor_pb2,
)

from . import codec, health
from .channels import bearer_metadata, message_size_options, open_channel
from .datasets import array_chunks
from .datasets import rows_per_chunk as _rows_per_chunk
from .specs import scaler_spec

DEFAULT_SCALER_ADDRESS = "127.0.0.1:50051"
DEFAULT_MODEL_ADDRESS = "127.0.0.1:50052"
DEFAULT_TIMEOUT = 30.0
# Training streams for as long as the epochs take; it still gets a deadline, just a long one.
DEFAULT_TRAIN_TIMEOUT = 3600.0
# Matches the services' default --max-message-mb.
MAX_MESSAGE_BYTES = 64 * 1024 * 1024
# Imports stream the archive in pieces of this size.
IMPORT_CHUNK_BYTES = 1024 * 1024
USER_AGENT = "lstm-stack-python-client/0.1"

Response = TypeVar("Response")


class LstmStackError(Exception):
    """An RPC failed; ``code`` is the gRPC status, ``details`` the server's message."""

    def __init__(self, method: str, code: grpc.StatusCode, details: str, attempts: int = 1):
        self.method = method
        self.code = code
        self.details = details
        self.attempts = attempts
        suffix = f" (after {attempts} attempts)" if attempts > 1 else ""
        super().__init__(f"{method}: {code.name}: {details}{suffix}")


class TrainingCancelled(LstmStackError):
    """The caller cancelled a training stream; the service saves no model for it."""


@dataclass(frozen=True)
class RetryPolicy:
    """Retry idempotent calls on UNAVAILABLE: attempt n waits initial * multiplier**(n-1), capped, +-jitter."""

    max_attempts: int = 4
    initial_backoff: float = 0.2
    max_backoff: float = 3.0
    multiplier: float = 2.0
    jitter: float = 0.2

    def backoff(self, retry_number: int) -> float:
        base = min(self.max_backoff, self.initial_backoff * self.multiplier ** (retry_number - 1))
        return base * (1.0 + random.uniform(-self.jitter, self.jitter))


NO_RETRY = RetryPolicy(max_attempts=1)


def _client_options(max_message_bytes: int) -> list[tuple[str, Any]]:
    return [
        *message_size_options(max_message_bytes),
        ("grpc.primary_user_agent", USER_AGENT),
        # Retries are ours (below), so that only idempotent calls are retried.
        ("grpc.enable_retries", 0),
    ]


def encode(array: Any, name: str) -> tensor_pb2.Tensor:
    """numpy (or nested lists) -> Tensor; raises TypeError for non-numeric data before any RPC."""
    data = np.asarray(array)
    if data.dtype.kind not in "biuf":
        raise TypeError(f"{name}: expected numbers, got an array of dtype {data.dtype}")
    return codec.from_numpy(data)


def decode(tensor: tensor_pb2.Tensor, name: str) -> np.ndarray:
    return codec.to_numpy(tensor, name)


class _Rpc:
    """Deadline, token metadata, retries and error translation shared by both clients."""

    def __init__(
        self,
        channel: grpc.Channel,
        *,
        timeout: float,
        retry: RetryPolicy,
        token: str | None,
        sleep: Callable[[float], None] = time.sleep,
    ):
        self.channel = channel
        self.timeout = timeout
        self.retry = retry
        self.metadata = bearer_metadata(token) if token else ()
        self.sleep = sleep

    def call(
        self,
        method: str,
        stub_method: Callable[..., Response],
        request: Any,
        *,
        idempotent: bool,
        timeout: float | None = None,
    ) -> Response:
        budget = self.timeout if timeout is None else timeout
        deadline = time.monotonic() + budget
        attempt = 0
        while True:
            attempt += 1
            remaining = deadline - time.monotonic()
            try:
                return stub_method(request, timeout=max(remaining, 0.001), metadata=self.metadata)
            except grpc.RpcError as exc:
                code = exc.code() if hasattr(exc, "code") else grpc.StatusCode.UNKNOWN
                details = (exc.details() if hasattr(exc, "details") else None) or str(exc)
                if idempotent and code == grpc.StatusCode.UNAVAILABLE and attempt < self.retry.max_attempts:
                    pause = self.retry.backoff(attempt)
                    if time.monotonic() + pause < deadline:
                        self.sleep(pause)
                        continue
                raise LstmStackError(method, code, details, attempt) from None

    def health(self, service: str = "", timeout: float | None = None) -> str:
        """The grpc.health.v1 status name (SERVING, NOT_SERVING, ...) for ``service``."""
        status: str = self.call(
            "Health/Check", health.check_method(self.channel), service, idempotent=True, timeout=timeout
        )
        return status

    def wait_until_serving(self, service: str, timeout: float) -> None:
        """Poll the health service until ``service`` reports SERVING; raises LstmStackError on timeout."""
        deadline = time.monotonic() + timeout
        last = "no answer"
        while True:
            try:
                status = self.health(service, timeout=min(2.0, max(deadline - time.monotonic(), 0.05)))
                if status == "SERVING":
                    return
                last = status
            except LstmStackError as exc:
                last = f"{exc.code.name}: {exc.details}"
            if time.monotonic() >= deadline:
                raise LstmStackError(
                    "Health/Check",
                    grpc.StatusCode.DEADLINE_EXCEEDED,
                    f"{service or 'server'} not SERVING after {timeout:.0f}s (last: {last})",
                )
            time.sleep(0.2)


class _Client:
    SERVICE_NAME = ""

    def __init__(
        self,
        channel: grpc.Channel,
        *,
        timeout: float = DEFAULT_TIMEOUT,
        retry: RetryPolicy | None = None,
        token: str | None = None,
        own_channel: bool = False,
    ):
        self._rpc = _Rpc(channel, timeout=timeout, retry=retry or RetryPolicy(), token=token)
        self._own_channel = own_channel

    @property
    def channel(self) -> grpc.Channel:
        return self._rpc.channel

    @property
    def timeout(self) -> float:
        return self._rpc.timeout

    @property
    def retry(self) -> RetryPolicy:
        return self._rpc.retry

    def health(self, timeout: float | None = None) -> str:
        return self._rpc.health(self.SERVICE_NAME, timeout)

    def wait_until_serving(self, timeout: float = 60.0) -> None:
        self._rpc.wait_until_serving(self.SERVICE_NAME, timeout)

    def close(self) -> None:
        if self._own_channel:
            self.channel.close()

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


# ---------------------------------------------------------------- scaler


@dataclass(frozen=True)
class FitTransformResult:
    scaler: scaler_pb2.ScalerInfo
    train: np.ndarray
    others: dict[str, np.ndarray]


def _as_scaler_spec(spec: scaler_pb2.ScalerSpec | str, layout: str | None) -> scaler_pb2.ScalerSpec:
    if isinstance(spec, scaler_pb2.ScalerSpec):
        if layout is None:
            return spec
        merged = scaler_pb2.ScalerSpec()
        merged.CopyFrom(spec)
        merged.MergeFrom(scaler_spec(spec.kind, layout))
        return merged
    return scaler_spec(spec, layout)


class ScalerClient(_Client):
    """ScalerService: fit scalers on training data, then transform and invert other data with them."""

    SERVICE_NAME = scaler_pb2.DESCRIPTOR.services_by_name["ScalerService"].full_name

    def __init__(self, channel: grpc.Channel, **kwargs: Any):
        super().__init__(channel, **kwargs)
        self._stub = scaler_pb2_grpc.ScalerServiceStub(channel)

    @classmethod
    def connect(cls, address: str = DEFAULT_SCALER_ADDRESS, **options: Any) -> ScalerClient:
        channel_options, client_options = _split_options(options)
        return cls(_channel(address, channel_options), own_channel=True, **client_options)

    def fit(
        self,
        data: Any,
        spec: scaler_pb2.ScalerSpec | str,
        *,
        layout: str | None = None,
        scaler_id: str = "",
        timeout: float | None = None,
    ) -> scaler_pb2.ScalerInfo:
        """Fit a new immutable version (of ``scaler_id``, or of a new id) on ``data``."""
        request = scaler_pb2.FitRequest(
            scaler_id=scaler_id, spec=_as_scaler_spec(spec, layout), data=encode(data, "data")
        )
        return self._rpc.call("ScalerService/Fit", self._stub.Fit, request, idempotent=False, timeout=timeout)

    def fit_stream(
        self,
        chunks: Iterable[Any],
        spec: scaler_pb2.ScalerSpec | str,
        *,
        layout: str | None = None,
        scaler_id: str = "",
        timeout: float | None = None,
    ) -> scaler_pb2.ScalerInfo:
        """Fit with partial_fit over chunks, so data larger than one message can be fitted."""
        resolved = _as_scaler_spec(spec, layout)

        def requests() -> Iterator[scaler_pb2.FitChunk]:
            for index, chunk in enumerate(chunks):
                tensor = encode(chunk, f"chunk {index}")
                if index == 0:
                    yield scaler_pb2.FitChunk(scaler_id=scaler_id, spec=resolved, data=tensor)
                else:
                    yield scaler_pb2.FitChunk(data=tensor)

        return self._rpc.call(
            "ScalerService/FitStream", self._stub.FitStream, requests(), idempotent=False, timeout=timeout
        )

    def fit_transform(
        self,
        train: Any,
        spec: scaler_pb2.ScalerSpec | str,
        others: Mapping[str, Any] | None = None,
        *,
        layout: str | None = None,
        scaler_id: str = "",
        timeout: float | None = None,
    ) -> FitTransformResult:
        """Fit on ``train`` only, and transform ``train`` plus every set in ``others`` with that fit."""
        request = scaler_pb2.FitTransformRequest(
            scaler_id=scaler_id,
            spec=_as_scaler_spec(spec, layout),
            train=encode(train, "train"),
            others={name: encode(value, name) for name, value in (others or {}).items()},
        )
        response = self._rpc.call(
            "ScalerService/FitTransform", self._stub.FitTransform, request, idempotent=False, timeout=timeout
        )
        return FitTransformResult(
            scaler=response.scaler,
            train=decode(response.train, "train"),
            others={name: decode(t, name) for name, t in response.others.items()},
        )

    def transform(
        self, scaler_id: str, data: Any, *, version: int = 0, timeout: float | None = None
    ) -> np.ndarray:
        request = scaler_pb2.TransformRequest(scaler_id=scaler_id, version=version, data=encode(data, "data"))
        response = self._rpc.call(
            "ScalerService/Transform", self._stub.Transform, request, idempotent=True, timeout=timeout
        )
        return decode(response.data, "data")

    def inverse_transform(
        self, scaler_id: str, data: Any, *, version: int = 0, timeout: float | None = None
    ) -> np.ndarray:
        request = scaler_pb2.TransformRequest(scaler_id=scaler_id, version=version, data=encode(data, "data"))
        response = self._rpc.call(
            "ScalerService/InverseTransform",
            self._stub.InverseTransform,
            request,
            idempotent=True,
            timeout=timeout,
        )
        return decode(response.data, "data")

    def get(self, scaler_id: str, *, version: int = 0, timeout: float | None = None) -> scaler_pb2.ScalerInfo:
        request = scaler_pb2.GetScalerRequest(scaler_id=scaler_id, version=version)
        return self._rpc.call(
            "ScalerService/GetScaler", self._stub.GetScaler, request, idempotent=True, timeout=timeout
        )

    def list(
        self, scaler_id: str = "", *, page_size: int = 0, timeout: float | None = None
    ) -> list[scaler_pb2.ScalerInfo]:
        """Every scaler version (of ``scaler_id`` if given), following page tokens."""
        found: list[scaler_pb2.ScalerInfo] = []
        token = ""
        while True:
            request = scaler_pb2.ListScalersRequest(
                page_size=page_size, page_token=token, scaler_id=scaler_id
            )
            response = self._rpc.call(
                "ScalerService/ListScalers", self._stub.ListScalers, request, idempotent=True, timeout=timeout
            )
            found.extend(response.scalers)
            token = response.next_page_token
            if not token:
                return found

    def delete(self, scaler_id: str, *, version: int = 0, timeout: float | None = None) -> builtins.list[int]:
        """Delete one version, or every version when ``version`` is 0; returns the deleted versions."""
        request = scaler_pb2.DeleteScalerRequest(scaler_id=scaler_id, version=version)
        response = self._rpc.call(
            "ScalerService/DeleteScaler", self._stub.DeleteScaler, request, idempotent=False, timeout=timeout
        )
        return list(response.deleted_versions)


# ---------------------------------------------------------------- model


@dataclass(frozen=True)
class Prediction:
    model_id: str
    version: int
    values: np.ndarray | None  # regression, original units
    probabilities: np.ndarray | None  # classification
    labels: np.ndarray | None  # classification


@dataclass(frozen=True)
class Evaluation:
    model_id: str
    version: int
    metrics: dict[str, float]
    n_samples: int


@dataclass(frozen=True)
class Forecast:
    model_id: str
    version: int
    horizon: int
    target_columns: tuple[int, ...]
    point: np.ndarray  # (series, horizon, targets), original units
    levels: tuple[float, ...]  # quantile levels, ascending (empty: point model)
    quantiles: np.ndarray | None  # (series, horizon, targets, levels)


@dataclass(frozen=True)
class BacktestWindow:
    index: int
    origin: int
    metrics: dict[str, float]
    forecast: np.ndarray  # (horizon, targets)
    actual: np.ndarray
    lower: np.ndarray | None
    upper: np.ndarray | None
    model_version: int


@dataclass
class Backtest:
    windows: list[BacktestWindow]
    summary: dict[str, float]  # each metric's mean over the windows


_STRATEGIES = {"direct": model_pb2.DIRECT, "recursive": model_pb2.RECURSIVE}


def _strategy(name: str) -> model_pb2.ForecastStrategy.ValueType:
    try:
        return _STRATEGIES[name.lower()]
    except KeyError:
        raise ValueError(f"strategy must be one of {', '.join(_STRATEGIES)}, got {name!r}") from None


@dataclass
class TrainRun:
    """A running Train stream: iterate it for events; ``cancel()`` stops training (nothing is saved)."""

    _call: Any
    _method: str = "ModelService/Train"
    started: model_pb2.TrainStarted | None = None
    epochs: list[model_pb2.EpochEvent] = field(default_factory=list)
    model: model_pb2.ModelInfo | None = None
    cancelled: bool = False

    def __iter__(self) -> Iterator[model_pb2.TrainEvent]:
        try:
            for event in self._call:
                which = event.WhichOneof("event")
                if which == "started":
                    self.started = event.started
                elif which == "epoch":
                    self.epochs.append(event.epoch)
                elif which == "done":
                    self.model = event.done
                yield event
        except grpc.RpcError as exc:
            if self.cancelled and exc.code() == grpc.StatusCode.CANCELLED:
                return
            code, details = exc.code(), exc.details() or str(exc)
            if code == grpc.StatusCode.INTERNAL and "RST_STREAM" in details:
                # A proxy (Envoy) resets the stream when the replica running the job dies mid-stream;
                # grpc reports a reset as INTERNAL. The service saves nothing for a job it did not
                # finish, so it is the replica that became unavailable: a new Train may be sent.
                code = grpc.StatusCode.UNAVAILABLE
                details = (
                    f"the stream was reset on its way (the replica went away; nothing was saved): {details}"
                )
            raise LstmStackError(self._method, code, details) from None

    def cancel(self) -> None:
        """Cancel the stream; the service stops after the current batch and keeps no model."""
        self.cancelled = True
        self._call.cancel()

    def result(self) -> model_pb2.ModelInfo:
        """Run to the end and return the trained model's info."""
        for _ in self:
            pass
        if self.cancelled:
            raise TrainingCancelled(self._method, grpc.StatusCode.CANCELLED, "training was cancelled")
        if self.model is None:
            raise LstmStackError(
                self._method, grpc.StatusCode.INTERNAL, "the stream ended without a final 'done' event"
            )
        return self.model

    def __enter__(self) -> TrainRun:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        if self.model is None and not self.cancelled:
            self.cancel()


def _early_stopping(patience: int, min_delta: float, restore_best_weights: bool) -> model_pb2.EarlyStopping:
    return model_pb2.EarlyStopping(
        patience=patience, min_delta=min_delta, restore_best_weights=restore_best_weights
    )


class ModelClient(_Client):
    """ModelService: validate specs, train stacked LSTMs (streamed progress), predict and evaluate."""

    SERVICE_NAME = model_pb2.DESCRIPTOR.services_by_name["ModelService"].full_name

    def __init__(self, channel: grpc.Channel, *, train_timeout: float = DEFAULT_TRAIN_TIMEOUT, **kwargs: Any):
        super().__init__(channel, **kwargs)
        self._stub = model_pb2_grpc.ModelServiceStub(channel)
        self.train_timeout = train_timeout

    @classmethod
    def connect(cls, address: str = DEFAULT_MODEL_ADDRESS, **options: Any) -> ModelClient:
        channel_options, client_options = _split_options(options)
        return cls(_channel(address, channel_options), own_channel=True, **client_options)

    def validate(
        self, spec: model_pb2.ModelSpec, *, timeout: float | None = None
    ) -> model_pb2.ValidateSpecResponse:
        """Every layer's output shape and parameter count, without training."""
        request = model_pb2.ValidateSpecRequest(spec=spec)
        return self._rpc.call(
            "ModelService/ValidateSpec", self._stub.ValidateSpec, request, idempotent=True, timeout=timeout
        )

    def train(
        self,
        spec: model_pb2.ModelSpec,
        x: Any = None,
        y: Any = None,
        *,
        series: Any = None,
        window: int = 0,
        target_feature: int = 0,
        horizon: int = 0,
        strategy: str = "direct",
        target_columns: Iterable[int] | Iterable[str] = (),
        input_columns: Iterable[int] | Iterable[str] = (),
        stride: int = 0,
        quantiles: Iterable[float] = (),
        calibration_fraction: float = 0.0,
        dataset: str = "",
        model_id: str = "",
        epochs: int = 0,
        batch_size: int = 0,
        seed: int = 0,
        shuffle: bool = False,
        validation_fraction: float = 0.0,
        patience: int = 0,
        min_delta: float = 0.0,
        restore_best_weights: bool = False,
        x_scaling: scaler_pb2.ScalerSpec | str | None = None,
        y_scaling: scaler_pb2.ScalerSpec | str | None = None,
        timeout: float | None = None,
    ) -> TrainRun:
        """Start training on (x, y), on a raw ``series`` cut into windows, or on a stored ``dataset``
        (an id from DatasetClient.upload_*; series datasets are windowed by ``window``, ``stride``,
        ``input_columns`` and ``target_columns``); returns a TrainRun to iterate.

        A series model forecasts ``horizon`` steps of ``target_columns`` (``strategy`` "direct" or
        "recursive"), with ``quantiles`` (e.g. 0.1, 0.5, 0.9) for intervals, conformally calibrated on
        the last ``calibration_fraction`` of the training windows when it is set. Never retried: each Train
        call creates a model version.
        """
        request = model_pb2.TrainRequest(
            model_id=model_id,
            spec=spec,
            validation_fraction=validation_fraction,
            epochs=epochs,
            batch_size=batch_size,
            seed=seed,
            shuffle=shuffle,
            early_stopping=_early_stopping(patience, min_delta, restore_best_weights),
        )
        if dataset:
            if x is not None or y is not None or series is not None:
                raise ValueError("give one of x and y, series, or dataset")
            request.dataset.CopyFrom(
                dataset_pb2.DatasetSource(
                    dataset_id=dataset,
                    window=window,
                    stride=stride,
                    input_columns=[str(c) for c in input_columns],
                    target_columns=[str(c) for c in target_columns],
                )
            )
        elif series is not None:
            if x is not None or y is not None:
                raise ValueError("give either x and y, or series, not both")
            request.series.CopyFrom(
                model_pb2.SeriesData(
                    series=encode(series, "series"),
                    window=window,
                    target_feature=target_feature,
                    horizon=horizon,
                    strategy=_strategy(strategy),
                    target_columns=[int(c) for c in target_columns],
                    input_columns=[int(c) for c in input_columns],
                    stride=stride,
                )
            )
            request.quantiles.extend(float(q) for q in quantiles)
            request.calibration_fraction = calibration_fraction
        else:
            if x is None or y is None:
                raise ValueError("training needs x and y (or series)")
            request.supervised.CopyFrom(model_pb2.SupervisedData(x=encode(x, "x"), y=encode(y, "y")))
        if x_scaling is not None:
            request.x_scaling.CopyFrom(_as_scaler_spec(x_scaling, None))
        if y_scaling is not None:
            request.y_scaling.CopyFrom(_as_scaler_spec(y_scaling, None))
        call = self._stub.Train(
            request,
            timeout=self.train_timeout if timeout is None else timeout,
            metadata=self._rpc.metadata,
        )
        return TrainRun(call)

    def predict(self, model_id: str, x: Any, *, version: int = 0, timeout: float | None = None) -> Prediction:
        """Predict in original units. ``x``: (batch, timesteps, features), (batch, timesteps), or one
        window as 1-D (timesteps,)."""
        data = np.asarray(x)
        if data.ndim == 1:
            data = data.reshape(1, -1)
        request = model_pb2.PredictRequest(model_id=model_id, version=version, x=encode(data, "x"))
        response = self._rpc.call(
            "ModelService/Predict", self._stub.Predict, request, idempotent=True, timeout=timeout
        )

        def optional(name: str) -> np.ndarray | None:
            return decode(getattr(response, name), name) if response.HasField(name) else None

        return Prediction(
            model_id=response.model_id,
            version=response.version,
            values=optional("values"),
            probabilities=optional("probabilities"),
            labels=optional("labels"),
        )

    def evaluate(
        self, model_id: str, x: Any, y: Any, *, version: int = 0, timeout: float | None = None
    ) -> Evaluation:
        request = model_pb2.EvaluateRequest(
            model_id=model_id, version=version, x=encode(x, "x"), y=encode(y, "y")
        )
        response = self._rpc.call(
            "ModelService/Evaluate", self._stub.Evaluate, request, idempotent=True, timeout=timeout
        )
        return Evaluation(
            model_id=response.model_id,
            version=response.version,
            metrics=dict(response.metrics),
            n_samples=response.n_samples,
        )

    def forecast(
        self,
        model_id: str,
        history: Any = None,
        *,
        dataset_id: str = "",
        horizon: int = 0,
        version: int = 0,
        timeout: float | None = None,
    ) -> Forecast:
        """The next ``horizon`` steps (0 = the model's) after ``history`` in raw units: (length,),
        (length, columns), or (series, length, columns) for many series in one call; or after the last
        rows of a stored series dataset (``dataset_id``)."""
        if (history is None) == (not dataset_id):
            raise ValueError("give history or dataset_id (one of them)")
        request = model_pb2.ForecastRequest(model_id=model_id, version=version, horizon=horizon)
        if dataset_id:
            request.dataset_id = dataset_id
        else:
            request.history.CopyFrom(encode(history, "history"))
        response = self._rpc.call(
            "ModelService/Forecast", self._stub.Forecast, request, idempotent=True, timeout=timeout
        )
        quantiles = (
            decode(response.quantile_values, "quantile_values")
            if response.HasField("quantile_values")
            else None
        )
        return Forecast(
            model_id=response.model_id,
            version=response.version,
            horizon=response.horizon,
            target_columns=tuple(response.target_columns),
            point=decode(response.point, "point"),
            levels=tuple(response.quantiles),
            quantiles=quantiles,
        )

    def backtest(
        self,
        model_id: str,
        series: Any,
        *,
        windows: int = 5,
        origin_step: int = 0,
        horizon: int = 0,
        season_length: int = 0,
        retrain: bool = False,
        version: int = 0,
        timeout: float | None = None,
    ) -> Backtest:
        """A rolling-origin backtest of ``windows`` origins on ``series`` (raw units), read to the end."""
        request = model_pb2.BacktestRequest(
            model_id=model_id,
            version=version,
            series=encode(series, "series"),
            windows=windows,
            origin_step=origin_step,
            horizon=horizon,
            season_length=season_length,
            retrain=retrain,
        )
        budget = (self.train_timeout if retrain else self.timeout) if timeout is None else timeout

        def run(message: model_pb2.BacktestRequest, **kwargs: Any) -> list[model_pb2.BacktestEvent]:
            return list(self._stub.Backtest(message, **kwargs))

        # Retrying reruns the whole stream, harmless without retraining (which deletes its scratch
        # versions, but costs a training per window): only then is it idempotent.
        events = self._rpc.call("ModelService/Backtest", run, request, idempotent=not retrain, timeout=budget)
        result = Backtest([], {})
        for event in events:
            if event.HasField("window"):
                w = event.window
                result.windows.append(
                    BacktestWindow(
                        index=w.index,
                        origin=w.origin,
                        metrics=dict(w.metrics),
                        forecast=decode(w.forecast, "forecast"),
                        actual=decode(w.actual, "actual"),
                        lower=decode(w.lower, "lower") if w.HasField("lower") else None,
                        upper=decode(w.upper, "upper") if w.HasField("upper") else None,
                        model_version=w.model_version,
                    )
                )
            else:
                result.summary.update(event.summary.metrics)
        return result

    def get(self, model_id: str, *, version: int = 0, timeout: float | None = None) -> model_pb2.ModelInfo:
        request = model_pb2.GetModelRequest(model_id=model_id, version=version)
        return self._rpc.call(
            "ModelService/GetModel", self._stub.GetModel, request, idempotent=True, timeout=timeout
        )

    def list(
        self, model_id: str = "", *, page_size: int = 0, timeout: float | None = None
    ) -> list[model_pb2.ModelInfo]:
        found: list[model_pb2.ModelInfo] = []
        token = ""
        while True:
            request = model_pb2.ListModelsRequest(page_size=page_size, page_token=token, model_id=model_id)
            response = self._rpc.call(
                "ModelService/ListModels", self._stub.ListModels, request, idempotent=True, timeout=timeout
            )
            found.extend(response.models)
            token = response.next_page_token
            if not token:
                return found

    def delete(self, model_id: str, *, version: int = 0, timeout: float | None = None) -> builtins.list[int]:
        request = model_pb2.DeleteModelRequest(model_id=model_id, version=version)
        response = self._rpc.call(
            "ModelService/DeleteModel", self._stub.DeleteModel, request, idempotent=False, timeout=timeout
        )
        return list(response.deleted_versions)

    def export(
        self,
        model_id: str,
        path: str | Path,
        *,
        format: str = "onnx",
        version: int = 0,
        timeout: float | None = None,
    ) -> model_pb2.ExportInfo:
        """Stream a version to ``path`` as ONNX ("onnx") or a SavedModel tar ("savedmodel"), chunk by
        chunk; the file appears whole (written aside, size and sha256 checked, then renamed) or not at all."""
        formats = {"onnx": model_pb2.EXPORT_ONNX, "savedmodel": model_pb2.EXPORT_SAVED_MODEL}
        if format not in formats:
            raise ValueError(f"format must be one of {', '.join(formats)}, got {format!r}")
        request = model_pb2.ExportModelRequest(model_id=model_id, version=version, format=formats[format])
        method = "ModelService/ExportModel"
        target = Path(path)
        temp = target.with_name(f".{target.name}.part")
        digest = hashlib.sha256()
        size = 0
        info: model_pb2.ExportInfo | None = None
        try:
            stream = self._rpc.call(
                method, self._stub.ExportModel, request, idempotent=False, timeout=timeout
            )
            with open(temp, "wb") as out:
                for chunk in stream:
                    if chunk.HasField("info"):
                        info = chunk.info
                    out.write(chunk.data)
                    digest.update(chunk.data)
                    size += len(chunk.data)
            if info is None or size != info.size_bytes or digest.hexdigest() != info.sha256:
                raise LstmStackError(
                    method, grpc.StatusCode.DATA_LOSS, f"the export arrived incomplete ({size} bytes)"
                )
            os.replace(temp, target)
        except grpc.RpcError as exc:
            raise LstmStackError(method, exc.code(), exc.details() or str(exc)) from None
        finally:
            temp.unlink(missing_ok=True)
        return info

    def import_model(
        self,
        source: str | Path | bytes,
        *,
        task: str,
        outputs: int = 0,
        n_classes: int = 0,
        model_id: str = "",
        timesteps: int = 0,
        features: int = 0,
        x_scaler: tuple[str, int] | None = None,
        y_scaler: tuple[str, int] | None = None,
        chunk_bytes: int = IMPORT_CHUNK_BYTES,
        timeout: float | None = None,
    ) -> model_pb2.ModelInfo:
        """Import a .keras archive (a path, streamed in chunks, or its bytes) as a new version.

        ``task``: the head the model ends in (regression, binary, multiclass); ``x_scaler`` /
        ``y_scaler``: (scaler id, version) of the scaler service's versions it was trained with."""
        tasks = {
            "regression": model_pb2.REGRESSION,
            "binary": model_pb2.BINARY,
            "multiclass": model_pb2.MULTICLASS,
        }
        if task not in tasks:
            raise ValueError(f"task must be one of {', '.join(tasks)}, got {task!r}")
        header = model_pb2.ImportHeader(
            model_id=model_id,
            head=model_pb2.Head(task=tasks[task], outputs=outputs, n_classes=n_classes),
            input=model_pb2.InputShape(timesteps=timesteps, features=features),
        )
        for name, ref in (("x_scaler", x_scaler), ("y_scaler", y_scaler)):
            if ref is not None:
                getattr(header, name).CopyFrom(model_pb2.ScalerRef(scaler_id=ref[0], version=ref[1]))

        def requests() -> Iterator[model_pb2.ImportModelChunk]:
            yield model_pb2.ImportModelChunk(header=header)
            if isinstance(source, bytes):
                for start in range(0, len(source), chunk_bytes):
                    yield model_pb2.ImportModelChunk(data=source[start : start + chunk_bytes])
                return
            with open(source, "rb") as fh:
                while data := fh.read(chunk_bytes):
                    yield model_pb2.ImportModelChunk(data=data)

        return self._rpc.call(
            "ModelService/ImportModel", self._stub.ImportModel, requests(), idempotent=False, timeout=timeout
        )


# ---------------------------------------------------------------- datasets


class DatasetClient(_Client):
    """DatasetService (served by the model service): upload training data of any size in chunks of
    rows, then train on it by id (ModelClient.train(dataset=...))."""

    SERVICE_NAME = dataset_pb2.DESCRIPTOR.services_by_name["DatasetService"].full_name

    def __init__(self, channel: grpc.Channel, **kwargs: Any):
        super().__init__(channel, **kwargs)
        self._stub = dataset_pb2_grpc.DatasetServiceStub(channel)

    @classmethod
    def connect(cls, address: str = DEFAULT_MODEL_ADDRESS, **options: Any) -> DatasetClient:
        channel_options, client_options = _split_options(options)
        return cls(open_channel(address, **channel_options), own_channel=True, **client_options)

    @classmethod
    def beside(cls, model: ModelClient) -> DatasetClient:
        """On the model client's channel, with its deadline, retries and token (it does not own it)."""
        client = cls(model.channel)
        client._rpc = model._rpc
        return client

    def upload(
        self,
        header: dataset_pb2.DatasetHeader,
        chunks: Iterable[dict[str, Any]],
        *,
        timeout: float | None = None,
    ) -> dataset_pb2.DatasetInfo:
        """Stream chunks ({"series": rows} or {"x": rows, "y": rows}) lazily: one in memory at a time.

        The deadline covers the whole upload (default: no deadline beyond the train timeout). Never
        retried; uploading the same data again is harmless anyway (same content, same id).
        """

        def requests() -> Iterator[dataset_pb2.DatasetChunk]:
            # The header rides on the first chunk, so the server's chunk numbers are the caller's.
            index = -1
            for index, arrays in enumerate(chunks):
                chunk = dataset_pb2.DatasetChunk()
                for name, value in arrays.items():
                    getattr(chunk, name).CopyFrom(encode(value, f"chunk {index} {name}"))
                if index == 0:
                    chunk.header.CopyFrom(header)
                yield chunk
            if index < 0:
                yield dataset_pb2.DatasetChunk(header=header)

        return self._rpc.call(
            "DatasetService/Upload",
            self._stub.Upload,
            requests(),
            idempotent=False,
            timeout=DEFAULT_TRAIN_TIMEOUT if timeout is None else timeout,
        )

    def upload_series(
        self,
        series: Any | Iterable[Any],
        columns: Iterable[str],
        *,
        rows_per_chunk: int = 0,
        timeout: float | None = None,
    ) -> dataset_pb2.DatasetInfo:
        """A raw series with named columns: an array or memory map (sent in slices of
        ``rows_per_chunk``, default about 4 MiB), or any iterable of (rows, columns) chunks."""
        chunks = array_chunks(series, rows_per_chunk) if hasattr(series, "shape") else series
        header = dataset_pb2.DatasetHeader(kind=dataset_pb2.DATASET_SERIES, columns=list(columns))
        return self.upload(header, ({"series": chunk} for chunk in chunks), timeout=timeout)

    def upload_supervised(
        self, x: Any, y: Any, *, rows_per_chunk: int = 0, timeout: float | None = None
    ) -> dataset_pb2.DatasetInfo:
        """Samples x (rows, timesteps, features) and targets y (rows, ...), arrays or memory maps."""
        x = x if hasattr(x, "shape") else np.asarray(x)
        y = y if hasattr(y, "shape") else np.asarray(y)
        if len(x) != len(y):
            raise ValueError(f"x has {len(x)} rows but y has {len(y)}")
        rows = rows_per_chunk or min(_rows_per_chunk(x), _rows_per_chunk(y))
        pairs = zip(array_chunks(x, rows), array_chunks(y, rows), strict=True)
        header = dataset_pb2.DatasetHeader(kind=dataset_pb2.DATASET_SUPERVISED)
        return self.upload(header, ({"x": cx, "y": cy} for cx, cy in pairs), timeout=timeout)

    def get(self, dataset_id: str, *, timeout: float | None = None) -> dataset_pb2.DatasetInfo:
        request = dataset_pb2.GetDatasetRequest(dataset_id=dataset_id)
        return self._rpc.call(
            "DatasetService/GetDataset", self._stub.GetDataset, request, idempotent=True, timeout=timeout
        )

    def list(self, *, page_size: int = 0, timeout: float | None = None) -> list[dataset_pb2.DatasetInfo]:
        found: list[dataset_pb2.DatasetInfo] = []
        token = ""
        while True:
            request = dataset_pb2.ListDatasetsRequest(page_size=page_size, page_token=token)
            response = self._rpc.call(
                "DatasetService/ListDatasets",
                self._stub.ListDatasets,
                request,
                idempotent=True,
                timeout=timeout,
            )
            found.extend(response.datasets)
            token = response.next_page_token
            if not token:
                return found

    def delete(self, dataset_id: str, *, timeout: float | None = None) -> None:
        request = dataset_pb2.DeleteDatasetRequest(dataset_id=dataset_id)
        self._rpc.call(
            "DatasetService/DeleteDataset",
            self._stub.DeleteDataset,
            request,
            idempotent=False,
            timeout=timeout,
        )


# ---------------------------------------------------------------- both

_CHANNEL_OPTIONS = {
    "tls",
    "tls_root_cert",
    "tls_client_cert",
    "tls_client_key",
    "tls_server_name",
    "max_message_bytes",
}


def _channel(address: str, channel_options: dict[str, Any]) -> grpc.Channel:
    options = dict(channel_options)
    max_message_bytes = options.pop("max_message_bytes", MAX_MESSAGE_BYTES)
    return open_channel(address, options=_client_options(max_message_bytes), **options)


def _split_options(options: dict[str, Any]) -> tuple[dict[str, Any], dict[str, Any]]:
    channel = {k: v for k, v in options.items() if k in _CHANNEL_OPTIONS}
    client = {k: v for k, v in options.items() if k not in _CHANNEL_OPTIONS}
    return channel, client


class LstmStackClient:
    """Both services: ``.scaler``, ``.model`` and ``.datasets`` (on the model service's channel). Use as
    a context manager to close the channels."""

    def __init__(self, scaler: ScalerClient, model: ModelClient):
        self.scaler = scaler
        self.model = model
        self.datasets = DatasetClient.beside(model)

    def wait_until_serving(self, timeout: float = 60.0) -> None:
        deadline = time.monotonic() + timeout
        self.scaler.wait_until_serving(timeout)
        self.model.wait_until_serving(max(deadline - time.monotonic(), 1.0))

    def close(self) -> None:
        self.scaler.close()
        self.model.close()

    def __enter__(self) -> LstmStackClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def connect(
    address: str | None = None,
    *,
    scaler_address: str | None = None,
    model_address: str | None = None,
    tls: bool = False,
    tls_root_cert: bytes | str | Path | None = None,
    tls_client_cert: bytes | str | Path | None = None,
    tls_client_key: bytes | str | Path | None = None,
    tls_server_name: str | None = None,
    token: str | None = None,
    timeout: float = DEFAULT_TIMEOUT,
    train_timeout: float = DEFAULT_TRAIN_TIMEOUT,
    retry: RetryPolicy | None = None,
    max_message_bytes: int = MAX_MESSAGE_BYTES,
) -> LstmStackClient:
    """Connect to both services.

    ``address`` serves both when they sit behind one endpoint; otherwise ``scaler_address`` and
    ``model_address`` (default: $LSTM_STACK_SCALER_ADDRESS / $LSTM_STACK_MODEL_ADDRESS, then
    127.0.0.1:50051 / 127.0.0.1:50052). TLS is used when ``tls`` is set or any certificate is given;
    ``token`` is sent as ``authorization: Bearer <token>`` on every call.
    """
    scaler_target = (
        scaler_address or address or os.environ.get("LSTM_STACK_SCALER_ADDRESS") or DEFAULT_SCALER_ADDRESS
    )
    model_target = (
        model_address or address or os.environ.get("LSTM_STACK_MODEL_ADDRESS") or DEFAULT_MODEL_ADDRESS
    )
    channel_options: dict[str, Any] = {
        "tls": tls,
        "tls_root_cert": tls_root_cert,
        "tls_client_cert": tls_client_cert,
        "tls_client_key": tls_client_key,
        "tls_server_name": tls_server_name,
        "max_message_bytes": max_message_bytes,
    }
    client_options: dict[str, Any] = {"timeout": timeout, "retry": retry, "token": token}
    scaler = ScalerClient(_channel(scaler_target, channel_options), own_channel=True, **client_options)
    model = ModelClient(
        _channel(model_target, channel_options),
        own_channel=True,
        train_timeout=train_timeout,
        **client_options,
    )
    return LstmStackClient(scaler, model)
