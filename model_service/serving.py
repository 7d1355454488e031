"""A served model version: raw-unit input -> adaptive batcher -> its serving graph -> original units.

The serving graph (model_service/serving_graph.py) holds the whole computation Predict answers: the x
scaler's affine form, the float32 model and the y scaler's inverse. It runs in an ONNX Runtime session
(graph_session.py), built when the version is first called (``GraphSource`` reads the verified graph)
and dropped again when the registry evicts the version (``SessionBudget``); the version itself stays
served and builds a new session on its next call.

Each prediction says where its time went (InferTiming), for the statistics extension.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import math
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np

from model_service import input_checks
from model_service.batching import AdaptiveBatcher
from model_service.cost import Admission, ModelCost
from model_service.graph_session import GraphSession
from model_service.records import ModelRecord
from model_service.settings import DEFAULT_MAX_BATCH_SIZE, ModelSettings
from model_service.spec import Task
from service_common.codec import require_representable
from service_common.errors import FailedPrecondition, IntegrityError

# Probabilities are clipped this far from 0 and 1 for the log loss (float32 softmax can hit 0 exactly).
LOG_LOSS_EPSILON = 1e-7


@dataclass(frozen=True)
class ServingOptions:
    """How versions are served (configuration only; the batch-size observer is passed on its own)."""

    max_batch_size: int = DEFAULT_MAX_BATCH_SIZE
    max_batch_wait_seconds: float = 0.0
    inline_passes: bool = False  # a lone call's pass on the event loop (see ServedModel.infer_async)
    # Memory budget and reply limit (cost.py); None admits everything and computes in one pass.
    admission: Admission | None = None


def serving_options(settings: ModelSettings) -> ServingOptions:
    """The serving options the settings ask for: batching, the memory budget and reply limit."""
    return ServingOptions(
        max_batch_size=settings.max_batch_size,
        max_batch_wait_seconds=settings.max_batch_wait_ms / 1000.0,
        inline_passes=settings.inline_passes,
        admission=Admission.from_settings(settings.memory_budget_mb, settings.max_message_bytes),
    )


# Told the rows of every forward pass the batcher runs (the batch-size histogram).
BatchObserver = Callable[[int], None]


@dataclass(frozen=True)
class ModelSignature:
    """What a served version takes and gives: x is (batch, timesteps, features)."""

    timesteps: int
    features: int
    task: Task
    outputs: int  # regression: targets per sample; binary: 1; multiclass: n_classes


# eq=False: passes are told apart by identity (the statistics count each one once); weakref_slot: so
# they can be remembered only while a request computed in them is still being answered.
@dataclass(frozen=True, eq=False, slots=True, weakref_slot=True)
class ForwardPass:
    """One forward pass of the model, over all the rows the batcher put together."""

    rows: int
    started_ns: int  # time.perf_counter_ns()
    duration_ns: int


@dataclass(frozen=True, slots=True)
class InferTiming:
    """Where one infer() call spent its time, in nanoseconds."""

    input_ns: int  # checking and scaling x
    queue_ns: int  # in the batcher, until the forward pass that computed it started
    forward: ForwardPass
    output_ns: int  # from the end of that pass to the prediction in original units


@dataclass(frozen=True)
class Prediction:
    """One infer() result; the fields a task does not have are None."""

    values: np.ndarray | None  # regression: (batch, outputs) float64, original units
    probabilities: np.ndarray | None  # binary: (batch, 1) P(class 1); multiclass: (batch, n_classes)
    labels: np.ndarray | None  # classification: (batch,) int64
    timing: InferTiming  # where the call spent its time


class _PassOutput(np.ndarray):
    """A forward pass's output that knows its pass. The batcher hands each caller a slice of it, and a
    view keeps its parent's pass (__array_finalize__), so callers learn which pass computed their rows
    and when it ran without the batcher knowing about timing."""

    forward: ForwardPass | None

    def __array_finalize__(self, obj: Any) -> None:
        self.forward = getattr(obj, "forward", None)


# Reads a version's serving graph, verified against its signature (the registry knows where it lies).
GraphSource = Callable[[], bytes]
_FLOAT32_MAX = float(np.finfo(np.float32).max)


class SessionBudget:
    """Which versions hold a session, most recently used last; past ``max_loaded`` the least recently
    used one is dropped (it builds a new session on its next call). Pinned versions (--preload) are
    never dropped and do not count."""

    def __init__(self, max_loaded: int) -> None:
        self.max_loaded = max(1, max_loaded)
        self._lock = threading.Lock()
        self._order: collections.OrderedDict[ServedModel, None] = collections.OrderedDict()
        self.loads = 0
        self.evictions = 0

    def used(self, model: ServedModel) -> None:
        """``model`` ran a pass: it is now the most recently used (cheap: no eviction here)."""
        with self._lock:
            if model in self._order:
                self._order.move_to_end(model)

    def loaded(self, model: ServedModel) -> None:
        """``model`` built its session: evict the least recently used beyond the budget."""
        evicted: list[ServedModel] = []
        with self._lock:
            self.loads += 1
            if not model.pinned:
                self._order[model] = None
            while len(self._order) > self.max_loaded:
                oldest, _ = self._order.popitem(last=False)
                evicted.append(oldest)
            self.evictions += len(evicted)
        for oldest in evicted:
            oldest.drop_session()

    def forget(self, model: ServedModel) -> None:
        with self._lock:
            self._order.pop(model, None)

    def __len__(self) -> int:
        with self._lock:
            return len(self._order)


class ServedModel:
    """One version being served: ``infer`` takes raw units and answers in original units through the
    adaptive batcher and the version's serving graph; ``max_batch_size`` is the rows per forward pass.
    ``observe_batch`` (when given) is told the rows of each forward pass. Its session is built on first
    use (``load``), from ``graph``."""

    def __init__(
        self,
        record: ModelRecord,
        graph: GraphSource,
        options: ServingOptions,
        observe_batch: BatchObserver | None = None,
        budget: SessionBudget | None = None,
        pinned: bool = False,
        on_refused: Callable[[IntegrityError], None] | None = None,
    ) -> None:
        spec = record.spec
        self.model_id = record.model_id
        self.version = record.version
        self.record = record
        self.task = spec.task
        self.signature = ModelSignature(spec.timesteps, spec.features, spec.task, spec.head.units)
        self.cost = ModelCost.of(record.plan)
        self.pinned = pinned
        self._graph = graph
        self._budget = budget
        self._on_refused = on_refused  # told when the graph fails to verify or load (then re-raised)
        self._admission = options.admission
        self._inline = options.inline_passes
        self._chunk_rows = options.admission.chunk_rows(self.cost) if options.admission else 0
        self._name = f"model {record.model_id!r} v{record.version}"
        self._output = "values" if spec.task is Task.REGRESSION else "probabilities"
        self._x_scaler = record.x_scaler
        # The largest |x| whose scaled value still fits the graph's float32 (None: no bound needed).
        self._x_limit = _x_limit(record)
        self._session: GraphSession | None = None
        self._load_lock = threading.Lock()
        self._closed_reason: str | None = None
        self._batcher = AdaptiveBatcher(
            self._timed_forward,
            options.max_batch_size,
            options.max_batch_wait_seconds,
            f"{record.model_id}-v{record.version}",
            observe_batch,
        )

    @property
    def max_batch_size(self) -> int:
        """The most rows one forward pass takes (a larger request runs in a pass of its own)."""
        return self._batcher.max_batch_size

    @property
    def admission(self) -> Admission | None:
        """The memory budget and reply limit this version's calls are admitted under (None: all)."""
        return self._admission

    @property
    def loaded(self) -> bool:
        """Whether the version holds a session now (its next call pays no load)."""
        return self._session is not None

    def load(self) -> GraphSession:
        """The version's session, built (and counted against the budget) when it has none."""
        session = self._session
        if session is not None:
            return session
        if self._closed_reason is not None:
            raise FailedPrecondition(self._closed_reason)
        with self._load_lock:
            session = self._session
            if session is None:
                try:
                    session = GraphSession(self._graph(), self._output, self._name)
                except IntegrityError as exc:
                    if self._on_refused is not None:
                        self._on_refused(exc)
                    raise
                self._session = session
        if self._budget is not None:
            self._budget.loaded(self)
        return session

    def drop_session(self) -> None:
        """Evicted: the next call builds the session again (a pass under way keeps its own reference)."""
        self._session = None

    def _timed_forward(self, x: np.ndarray) -> np.ndarray:
        session = self._session or self.load()
        if self._budget is not None:
            self._budget.used(self)
        started = time.perf_counter_ns()
        out = session.run(x).view(_PassOutput)
        out.forward = ForwardPass(int(x.shape[0]), started, time.perf_counter_ns() - started)
        return out

    def warm(self) -> None:
        self.load()

    def close(self, reason: str) -> None:
        self._closed_reason = reason
        self._batcher.close(reason)
        if self._budget is not None:
            self._budget.forget(self)
        self._session = None

    def _admit(self, rows: int, reply: bool) -> contextlib.AbstractContextManager[Any]:
        if self._admission is None:
            return contextlib.nullcontext()
        what = f"{rows} row(s) on {self._name}"
        return self._admission.reserve(self._admission.inference(self.cost, rows, what, reply))

    def _model_input(self, x: np.ndarray) -> np.ndarray:
        """Checked raw-unit x -> what the graph takes: contiguous float64 whose x-scaled values fit the
        model's float32 (a finite 1e300 would become inf and come out as NaN). The check is a bound on
        the largest |x|; only a request past it is scaled here to name the value that does not fit."""
        x = input_checks.model_input(x, self.signature.timesteps, self.signature.features)
        x = np.ascontiguousarray(x, dtype=np.float64)
        # max and -min: the largest |x| without an array of absolute values on every call.
        if self._x_limit is not None and max(float(x.max()), -float(x.min())) > self._x_limit:
            if self._x_scaler is None:
                require_representable(x, np.float32, "x", "the model's float32")
            else:
                scaled = self._x_scaler.transform(x)
                require_representable(
                    scaled, np.float32, "x (scaled by the model's x scaler)", "the model's float32"
                )
        return x

    def _chunks(self, x: np.ndarray) -> list[np.ndarray]:
        """``x`` in pieces of at most the rows the memory budget allows in one pass."""
        chunk = self._chunk_rows or x.shape[0]
        if x.shape[0] <= chunk:
            return [x]
        return [x[i : i + chunk] for i in range(0, len(x), chunk)]

    def infer(self, x: np.ndarray, reply: bool = True) -> Prediction:
        """x in raw units, (batch, timesteps, features), any float dtype (InvalidArgument on mismatch;
        ResourceExhausted when its estimated memory, or with ``reply`` its reply, does not fit)."""
        began = time.perf_counter_ns()
        x = self._model_input(x)
        with self._admit(x.shape[0], reply):
            self.load()
            submitted = time.perf_counter_ns()
            outs = [self._batcher.submit(part) for part in self._chunks(x)]
        return self._prediction(outs[0] if len(outs) == 1 else np.concatenate(outs), began, submitted)

    async def infer_async(self, x: np.ndarray, reply: bool = True) -> Prediction:
        """``infer`` from the event loop: admitted here, the session built and the forward pass run
        on other threads."""
        began = time.perf_counter_ns()
        x = self._model_input(x)
        with self._admit(x.shape[0], reply):
            if self._session is None:
                await asyncio.to_thread(self.load)
            submitted = time.perf_counter_ns()
            parts = self._chunks(x)
            if self._inline and len(parts) == 1 and self._batcher.idle():
                # Nothing to batch with: the pass (tens of microseconds, the GIL released) costs less
                # than the two thread hops the batcher would add.
                outs = [self._batcher.run_now(x)]
            else:
                outs = [await self._batcher.submit_async(part) for part in parts]
        return self._prediction(outs[0] if len(outs) == 1 else np.concatenate(outs), began, submitted)

    def _prediction(self, out: np.ndarray, began: int, submitted: int) -> Prediction:
        """The graph's answer (original units) as a Prediction, with the time spent since ``began``
        (perf_counter_ns) split at ``submitted`` (handed to the batcher)."""
        forward = getattr(out, "forward", None)
        if forward is None:  # a batcher that copies its results: the whole wait is this call's pass
            forward = ForwardPass(int(out.shape[0]), submitted, time.perf_counter_ns() - submitted)
        out = out.view(np.ndarray)
        values = probabilities = labels = None
        if self.task is Task.REGRESSION:
            values = out
        else:
            probabilities = out
            if self.task is Task.BINARY:
                labels = (probabilities[:, 0] >= 0.5).astype(np.int64)
            else:
                labels = np.argmax(probabilities, axis=1).astype(np.int64)
        passed = forward.started_ns + forward.duration_ns
        timing = InferTiming(
            input_ns=submitted - began,
            queue_ns=max(0, forward.started_ns - submitted),
            forward=forward,
            output_ns=max(0, time.perf_counter_ns() - passed),
        )
        return Prediction(values, probabilities, labels, timing)

    def evaluate(self, x: np.ndarray, y: np.ndarray) -> dict[str, float]:
        """Metrics in original units: mse/mae/rmse (regression) or accuracy/log_loss (classification)."""
        x = input_checks.model_input(x, self.signature.timesteps, self.signature.features, what="samples")
        y = input_checks.targets(y, x.shape[0], self.record.spec)
        return score(self.task, y, self.infer(x, reply=False))


def _x_limit(record: ModelRecord) -> float | None:
    """The largest |x| for which x * scale + offset surely fits float32 (clipped scalers always do)."""
    scaler = record.x_scaler
    if scaler is None:
        return _FLOAT32_MAX
    if scaler.clip is not None and max(abs(scaler.clip[0]), abs(scaler.clip[1])) <= _FLOAT32_MAX:
        return None
    scale = float(np.abs(scaler.scale).max(initial=0.0))
    offset = float(np.abs(scaler.offset).max(initial=0.0))
    if offset >= _FLOAT32_MAX:
        return 0.0
    return (_FLOAT32_MAX - offset) / scale if scale > 0 else math.inf


def score(task: Task, y: np.ndarray, prediction: Prediction) -> dict[str, float]:
    """``y`` as input_checks.targets returns it."""
    if task is Task.REGRESSION:
        assert prediction.values is not None
        errors = prediction.values - y
        mse = float(np.mean(errors**2))
        return {"mse": mse, "mae": float(np.mean(np.abs(errors))), "rmse": math.sqrt(mse)}
    assert prediction.probabilities is not None and prediction.labels is not None
    probabilities = np.clip(prediction.probabilities, LOG_LOSS_EPSILON, 1 - LOG_LOSS_EPSILON)
    if task is Task.BINARY:
        truth = y.reshape(-1)
        p = probabilities[:, 0]
        log_loss = -np.mean(truth * np.log(p) + (1 - truth) * np.log(1 - p))
    else:
        truth = y.astype(np.int64)
        log_loss = -np.mean(np.log(probabilities[np.arange(len(truth)), truth]))
    accuracy = float(np.mean(prediction.labels == truth.astype(np.int64)))
    return {"accuracy": accuracy, "log_loss": float(log_loss)}


def graph_scorer(record: ModelRecord, graph: bytes, options: ServingOptions) -> ServedModel:
    """A version not yet published, served from its graph in memory, unbatched: training scores its
    holdout and calibrates its bands through the very graph it is about to publish. Chunked as served,
    but not counted against the budget again (the job's reservation covers it)."""
    admission = options.admission.untracked() if options.admission else None
    return ServedModel(record, lambda: graph, ServingOptions(max_batch_size=1, admission=admission))
