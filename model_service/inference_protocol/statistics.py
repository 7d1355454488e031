"""The statistics extension: cumulative inference statistics per model version, as Triton counts them.

Every ModelInfer request and every request of a ModelStreamInfer stream that reached a model version is
counted, once, as a success or a failure (requests naming no servable version have nothing to be counted
against). A success adds its batch rows to ``inference_count`` and its phase durations to queue /
compute_input / compute_infer / compute_output, one count each. Model executions are counted once per
forward pass, however many requests the adaptive batcher put into it; ``batch_stats`` groups them by the
pass's rows. Durations are nanoseconds; ``last_inference`` is milliseconds since the epoch.

Domain code: no grpc, no protobuf; the protocol layer turns snapshots into ModelStatistics messages.
Thread-safe: every gRPC worker thread records into one instance.
"""

from __future__ import annotations

import copy
import threading
import time
import weakref
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any


@dataclass
class Duration:
    """How often something happened and how long it took in total."""

    count: int = 0
    ns: int = 0

    def add(self, ns: int) -> None:
        self.count += 1
        self.ns += max(0, ns)


@dataclass(frozen=True)
class SuccessTiming:
    """Where one successful request spent its time."""

    total_ns: int  # from the request's arrival at the protocol layer to its response
    input_ns: int  # decoding, checking and scaling the input
    queue_ns: int  # waiting in the adaptive batcher for its forward pass
    infer_ns: int  # the forward pass it was computed in
    output_ns: int  # inverse scaling and encoding the outputs


@dataclass
class VersionStatistics:
    """A model version's counters (snapshot() hands out copies)."""

    model_id: str
    version: int
    last_inference_ms: int = 0
    inference_count: int = 0
    execution_count: int = 0
    success: Duration = field(default_factory=Duration)
    fail: Duration = field(default_factory=Duration)
    queue: Duration = field(default_factory=Duration)
    compute_input: Duration = field(default_factory=Duration)
    compute_infer: Duration = field(default_factory=Duration)
    compute_output: Duration = field(default_factory=Duration)
    # batch size (rows of a forward pass) -> executions of that size and their duration
    batches: dict[int, Duration] = field(default_factory=dict)


class _Counters:
    def __init__(self, model_id: str, version: int) -> None:
        self.stats = VersionStatistics(model_id, version)
        # The executions already counted. Weak: a pass is forgotten once no request computed in it
        # holds it any more, i.e. once all of them were recorded, so the set stays as small as the
        # number of requests in flight.
        self.executions: weakref.WeakSet[Any] = weakref.WeakSet()


def _now_ms() -> int:
    return time.time_ns() // 1_000_000


class InferenceStatistics:
    def __init__(self, clock_ms: Callable[[], int] = _now_ms) -> None:
        self._clock_ms = clock_ms
        self._lock = threading.Lock()
        self._counters: dict[tuple[str, int], _Counters] = {}

    def _entry(self, model_id: str, version: int) -> _Counters:
        key = (model_id, version)
        counters = self._counters.get(key)
        if counters is None:
            counters = self._counters[key] = _Counters(model_id, version)
        return counters

    def record_success(
        self,
        model_id: str,
        version: int,
        rows: int,
        timing: SuccessTiming,
        execution: Any,
        execution_rows: int,
    ) -> None:
        """One request of ``rows`` rows answered; ``execution`` is the forward pass that computed it (any
        weak-referenceable object, the same one for every request of that pass) of ``execution_rows``."""
        now = self._clock_ms()
        with self._lock:
            counters = self._entry(model_id, version)
            stats = counters.stats
            stats.last_inference_ms = max(stats.last_inference_ms, now)
            stats.inference_count += rows
            stats.success.add(timing.total_ns)
            stats.queue.add(timing.queue_ns)
            stats.compute_input.add(timing.input_ns)
            stats.compute_infer.add(timing.infer_ns)
            stats.compute_output.add(timing.output_ns)
            if execution not in counters.executions:
                counters.executions.add(execution)
                stats.execution_count += 1
                stats.batches.setdefault(execution_rows, Duration()).add(timing.infer_ns)

    def record_failure(self, model_id: str, version: int, total_ns: int) -> None:
        now = self._clock_ms()
        with self._lock:
            stats = self._entry(model_id, version).stats
            stats.last_inference_ms = max(stats.last_inference_ms, now)
            stats.fail.add(total_ns)

    def snapshot(self, model_id: str, version: int) -> VersionStatistics:
        """A copy of the version's counters; all zero for a version that served no request yet."""
        with self._lock:
            counters = self._counters.get((model_id, version))
            if counters is None:
                return VersionStatistics(model_id, version)
            return copy.deepcopy(counters.stats)
