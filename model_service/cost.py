"""What a request will cost, worked out before it runs: memory against one budget per process, reply
bytes against the message limit. Domain code only (no grpc, no TensorFlow).

The figures come from a model's plan (spec.plan), per sample:

- forward values: what one forward pass holds, counted layer by layer as if nothing were freed before
  the pass ends (TensorFlow frees earlier, so this errs high): the input; per LSTM a copy of its input
  (Keras walks a time-major copy), the gates of its steps (4 x units each, about half of them alive at
  once) and its output (twice for a sequence: time-major, then batch-major); per Dense its output, twice
  with a non-linear activation (before and after it); the head's outputs three times (before and after
  its activation, then the copy numpy gets). Reshape is a view; Dropout is the identity when serving.
- in/out bytes: the request's values and the copies the serving path makes of them (decoded, scaled,
  narrowed), and the outputs' copies (float64 outputs, inverse-scaled, encoded into the reply).

Inference (Predict, Evaluate, ModelInfer) runs in chunks of at most ``chunk_rows`` rows, one after the
other, so its activation memory is that of one chunk; what it holds for every row is the in/out part.
Training holds, per row of a batch, the forward values, their gradients and the step's temporaries,
plus weights, gradients and optimizer slots for every parameter.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from dataclasses import dataclass

from model_service.spec import UNROLL_MAX_TIMESTEPS, Lstm, SpecPlan, Task
from service_common import memory
from service_common.errors import ResourceExhausted

MIB = 1024 * 1024
VALUE_BYTES = 4  # the models compute in float32
# Allocator rounding and TensorFlow's scratch buffers on top of the counted forward values.
FORWARD_SLACK = 1.25
# A request in flight holds per input value: its bytes in the request, the decoded float64 array and
# the x-scaled float64 copy (the float32 copy is the forward pass's input, counted there).
INPUT_BYTES_PER_VALUE = 24
# ... and per output value: float64 outputs, inverse-scaled copy, the encoded reply's array, bytes
# and serialized message, and a labels or targets array of the same length.
OUTPUT_BYTES_PER_VALUE = 48
# Reply tensors are float64 (values, probabilities) and int64 (labels).
REPLY_BYTES_PER_VALUE = 8
# Room for everything in a reply besides its tensors.
REPLY_OVERHEAD_BYTES = 64 * 1024
# One chunk of a big inference request may take this share of the budget, so that a few of them run
# side by side.
CHUNK_SHARE = 0.25
# A training step holds, per forward value of a batch row: the value (kept for the backward pass),
# its gradient and the step's temporaries.
TRAIN_VALUES_PER_FORWARD_VALUE = 3
# Per parameter while training: the weight, its gradient and the optimizer's two slots (Adam's moments).
TRAIN_BYTES_PER_PARAM = 4 * VALUE_BYTES
# An unrolled LSTM (steps <= builder.UNROLL_MAX_TIMESTEPS) computes its kernels' gradient once per
# step before summing them: per step, its parameters again.
# Per value of the training data (x and y): the request's float64 values, the scaled float64 copy, the
# request to and reply from the scaler service, the float32 dataset and its shuffle buffer.
TRAIN_DATA_BYTES_PER_VALUE = 40
# Work that held at least this much gives malloc's free memory back to the system when it ends.
TRIM_AFTER_BYTES = 64 * MIB
# Below this an estimate is not counted against the budget (no lock on the hot path): such requests
# are bounded in number by max_concurrent_rpcs, and so in total.
UNTRACKED_BYTES = MIB


def _pow2_floor(n: int) -> int:
    return 1 << (max(1, n).bit_length() - 1)


def _pow2_ceil(n: int) -> int:
    return 1 << (max(1, n) - 1).bit_length()


def mib(n: float) -> str:
    return f"{n / MIB:,.1f} MiB"


@dataclass(frozen=True)
class ModelCost:
    """Per-sample figures of one model (see the module docstring)."""

    input_values: int
    outputs: int
    reply_values: int  # values per row of a reply: the outputs, plus a label for classification
    forward_values: int
    params: int
    unrolled_param_steps: int  # sum over unrolled LSTMs of steps x their parameters

    @classmethod
    def of(cls, plan: SpecPlan) -> ModelCost:
        spec = plan.spec
        shape: tuple[int | None, ...] = plan.input_shape
        input_values = spec.timesteps * spec.features
        forward = input_values
        unrolled = 0
        for layer, planned in zip((*spec.layers, None), plan.layers, strict=True):
            before = _values(shape)
            after = _values(planned.output_shape)
            if planned.kind == "lstm":
                assert isinstance(layer, Lstm)
                steps = shape[1] or 0
                forward += before + 2 * layer.units * steps + after * (2 if layer.return_sequences else 1)
                if steps <= UNROLL_MAX_TIMESTEPS:
                    unrolled += steps * planned.params
            elif planned.kind == "dense":
                forward += after * (1 if planned.activation == "linear" else 2)
            elif planned.kind == "head":
                forward += 3 * after
            shape = planned.output_shape
        outputs = spec.head.units
        labels = 0 if spec.task is Task.REGRESSION else 1
        return cls(input_values, outputs, outputs + labels, forward, plan.total_params, unrolled)

    def forward_bytes(self, rows: int) -> int:
        return int(rows * self.forward_values * VALUE_BYTES * FORWARD_SLACK)

    def in_out_bytes(self, rows: int) -> int:
        return rows * (self.input_values * INPUT_BYTES_PER_VALUE + self.outputs * OUTPUT_BYTES_PER_VALUE)


def _values(shape: tuple[int | None, ...]) -> int:
    total = 1
    for d in shape[1:]:
        total *= d or 1
    return total


def forecast_reply_bytes(series: int, horizon: int, targets: int, quantile_levels: int) -> int:
    """A forecast reply's size: the point forecast (series, horizon, targets), and for a quantile model
    the quantiles as well (series, horizon, targets, levels), 8 bytes a value either way."""
    values = series * horizon * targets * (1 + quantile_levels)
    return values * REPLY_BYTES_PER_VALUE + REPLY_OVERHEAD_BYTES


@dataclass(frozen=True)
class Estimate:
    what: str  # e.g. "6000 row(s) on model 'm' v1"
    memory_bytes: int
    explain: Callable[[], str]  # how the figure was made, for a refusal (not formatted otherwise)
    reply_bytes: int = 0


class Reservation:
    """Memory held against the budget until released (idempotent; also a context manager)."""

    def __init__(self, admission: Admission | None, nbytes: int) -> None:
        self._admission = admission
        self._bytes = nbytes

    def release(self) -> None:
        admission, self._admission = self._admission, None
        if admission is not None:
            admission._release(self._bytes)

    def __enter__(self) -> Reservation:
        return self

    def __exit__(self, *exc: object) -> None:
        self.release()


_NOTHING_HELD = Reservation(None, 0)


class Admission:
    """The process's memory budget and reply limit; refuses what would not fit with ResourceExhausted.

    Estimates are counted against the budget while their work runs, so concurrent requests cannot
    together take more than one may alone. ``tracked=False`` (see ``untracked``) only compares each
    estimate with the budget: for work already covered by another reservation.
    """

    def __init__(self, memory_budget_bytes: int, max_reply_bytes: int, tracked: bool = True) -> None:
        self.memory_budget_bytes = memory_budget_bytes
        self.max_reply_bytes = max_reply_bytes
        self._tracked = tracked
        self._lock = threading.Lock()
        self._in_use = 0

    @classmethod
    def from_settings(cls, memory_budget_mb: int, max_message_bytes: int) -> Admission:
        return cls(memory_budget_mb * MIB, max_message_bytes)

    def untracked(self) -> Admission:
        return Admission(self.memory_budget_bytes, self.max_reply_bytes, tracked=False)

    @property
    def in_use(self) -> int:
        with self._lock:
            return self._in_use

    # ---- estimates -------------------------------------------------------------------------------

    def chunk_rows(self, cost: ModelCost) -> int:
        """Rows per forward pass of a big request: a power of two (the predictor pads batches to one)
        whose activations take at most CHUNK_SHARE of the budget; at least 1."""
        per_row = max(1, cost.forward_bytes(1))
        return _pow2_floor(int(self.memory_budget_bytes * CHUNK_SHARE) // per_row)

    def inference(self, cost: ModelCost, rows: int, what: str, reply: bool) -> Estimate:
        """Predict / ModelInfer (``reply``: the rows' outputs travel back) or Evaluate (metrics only)."""
        chunk = _pow2_ceil(min(rows, self.chunk_rows(cost)))
        memory = cost.forward_bytes(chunk) + cost.in_out_bytes(rows)

        def explain() -> str:
            return (
                f"{chunk} row(s) per forward pass x {cost.forward_values} values per row in flight, plus "
                f"{rows} row(s) x ({cost.input_values} inputs + {cost.outputs} outputs) held"
            )

        reply_bytes = rows * cost.reply_values * REPLY_BYTES_PER_VALUE + REPLY_OVERHEAD_BYTES if reply else 0
        return Estimate(what, memory, explain, reply_bytes)

    def training(
        self, cost: ModelCost, batch_size: int, n_train: int, n_validation: int, what: str
    ) -> Estimate:
        step = batch_size * cost.forward_values * VALUE_BYTES * TRAIN_VALUES_PER_FORWARD_VALUE
        weights = cost.params * TRAIN_BYTES_PER_PARAM + cost.unrolled_param_steps * VALUE_BYTES
        rows = n_train + n_validation
        data = rows * (cost.input_values + cost.outputs) * TRAIN_DATA_BYTES_PER_VALUE
        # The holdout is scored after fitting, through the serving path, within this reservation.
        scoring = self.inference(cost, n_validation, what, reply=False).memory_bytes if n_validation else 0

        def explain() -> str:
            return (
                f"batch_size {batch_size} x {cost.forward_values} values per row x "
                f"{TRAIN_VALUES_PER_FORWARD_VALUE} (values, gradients, temporaries), {cost.params} "
                f"parameters with gradients and optimizer state, {rows} rows of data"
            )

        return Estimate(what, max(step, scoring) + weights + data, explain)

    def max_batch_size(self, cost: ModelCost, n_train: int, n_validation: int) -> int:
        """The largest batch_size whose training estimate fits the budget (0: none does)."""
        fixed = self.training(cost, 0, n_train, n_validation, "").memory_bytes
        per_row = cost.forward_values * VALUE_BYTES * TRAIN_VALUES_PER_FORWARD_VALUE
        return max(0, (self.memory_budget_bytes - fixed) // max(1, per_row))

    # ---- admission -------------------------------------------------------------------------------

    def check_reply(self, what: str, reply_bytes: int, hint: str) -> None:
        """ResourceExhausted when a reply of ``reply_bytes`` could not be sent (above the message limit)."""
        if reply_bytes > self.max_reply_bytes:
            raise ResourceExhausted(
                f"{what}: the reply would be about {reply_bytes} bytes, above the max "
                f"message size of {self.max_reply_bytes} bytes (max_message_mb); {hint}"
            )

    def reserve(self, estimate: Estimate, hint: str = "send fewer rows per call") -> Reservation:
        """Hold ``estimate`` against the budget (release the reservation when the work is done)."""
        self.check_reply(estimate.what, estimate.reply_bytes, hint)
        needed = estimate.memory_bytes
        if needed > self.memory_budget_bytes:
            raise ResourceExhausted(
                f"{estimate.what} needs an estimated {mib(needed)} of memory ({estimate.explain()}), above "
                f"the budget memory_budget_mb={self.memory_budget_bytes // MIB}; {hint}"
            )
        if not self._tracked or needed < UNTRACKED_BYTES:
            return _NOTHING_HELD
        with self._lock:
            if self._in_use + needed > self.memory_budget_bytes:
                in_use = self._in_use
            else:
                self._in_use += needed
                return Reservation(self, needed)
        raise ResourceExhausted(
            f"{estimate.what} needs an estimated {mib(needed)} of memory, but {mib(in_use)} of the budget "
            f"memory_budget_mb={self.memory_budget_bytes // MIB} are held by requests and training jobs "
            "running now; retry when they have finished"
        )

    def _release(self, nbytes: int) -> None:
        with self._lock:
            self._in_use -= nbytes
        if nbytes >= TRIM_AFTER_BYTES:
            memory.release_unused_soon(collect=False)
