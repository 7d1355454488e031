"""The compiled forward pass: warmed tf.functions with a batch-agnostic input signature.

Never ``model.predict``: it builds a dataset and an iterator on every call, far more work than the
forward pass of one window (docs/performance.md has the figures). Two tiers, like a JIT:

- the graph function (``[None, timesteps, features]``), traced by ``warm()``, serves any batch size
  at once. It takes more CPU than wall: TF's executor runs the LSTM's while-loop op by op on a
  spinning thread pool;
- an XLA-compiled function of the same signature, cheaper per call (CPU = wall), but XLA compiles once
  per distinct batch size. Batches are padded to a power of two (at most ``max_bucket`` rows per call)
  to keep compilations few. A bucket is compiled in the background once it has been used
  ``hot_after`` times; until then the graph function serves it, so no request ever waits for a
  compiler and models that are rarely called never pay for one.

Both tiers compute the same function (they agree to float32 rounding).
"""

from __future__ import annotations

import atexit
import logging
import queue
import threading
from collections.abc import Callable
from typing import Any

import keras
import numpy as np
import tensorflow as tf

from model_service.settings import DEFAULT_MAX_BATCH_SIZE
from service_common.memory import release_unused_soon

log = logging.getLogger(__name__)

# Uses of a batch-size bucket before it is compiled with XLA (a few requests' worth: tests and one-off
# evaluations stay on the graph function; a served model crosses it within its first second of load).
DEFAULT_HOT_AFTER = 16


def _next_power_of_two(n: int) -> int:
    return 1 << (n - 1).bit_length()


Call = Callable[[tf.Tensor], tf.Tensor]


def _flat_call(concrete: tf.types.experimental.ConcreteFunction, flat: bool = True) -> Call:
    """The call of a traced function: the public ``concrete(x)``, or with ``flat`` the private flat form.

    The public call re-binds and re-checks its arguments every time, a cost of the order of an XLA
    forward pass (bench/bench_model.py prints both). Our callers always pass one float32 tensor of the
    traced shape, so the check buys nothing. ``_call_flat`` is private: tests/model_service/
    test_predictor.py fails when TensorFlow changes it, and a TensorFlow without it gets the public
    call (with a warning) rather than a broken server.
    """
    if not flat:
        return concrete
    call_flat = getattr(concrete, "_call_flat", None)
    if call_flat is None:
        log.warning("this TensorFlow has no ConcreteFunction._call_flat; using the public call")
        return concrete
    captured = concrete.captured_inputs
    return lambda x: call_flat([x], captured)


def _forward_function(model: keras.Model, signature: list[tf.TensorSpec], jit_compile: bool) -> Any:
    def forward(x: tf.Tensor) -> tf.Tensor:
        return model(x, training=False)

    # autograph off: the Keras call is already graph code, and converting a closure only logs noise.
    return tf.function(forward, input_signature=signature, jit_compile=jit_compile, autograph=False)


class _BackgroundCompiler:
    """One thread per process compiles XLA buckets one at a time, so compiling never takes both cores."""

    def __init__(self) -> None:
        # A job returns True when memory should go back to the system after it (see CompiledPredictor.close).
        self._jobs: queue.SimpleQueue[Callable[[], bool] | None] = queue.SimpleQueue()
        self._thread: threading.Thread | None = None
        self._lock = threading.Lock()
        self._stopping = threading.Event()

    def submit(self, job: Callable[[], bool]) -> None:
        with self._lock:
            if self._stopping.is_set():
                return
            if self._thread is None:
                self._thread = threading.Thread(target=self._loop, name="xla-compiler", daemon=True)
                self._thread.start()
                atexit.register(self.stop)
        self._jobs.put(job)

    def stop(self, timeout: float = 30.0) -> None:
        """Finish the compile under way (a thread killed inside XLA can crash the exit), skip the rest."""
        self._stopping.set()
        self._jobs.put(None)
        if self._thread is not None:
            self._thread.join(timeout)

    def _loop(self) -> None:
        while True:
            job = self._jobs.get()
            if job is None or self._stopping.is_set():
                return
            release = False
            try:
                release = job()
            except Exception:  # noqa: BLE001 - a failed compile leaves the bucket on the graph tier
                log.exception("XLA compilation failed; the graph function keeps serving")
            # The job holds its predictor and model: drop it now, not when the next job comes.
            del job
            if release:
                release_unused_soon()


_compiler = _BackgroundCompiler()


class CompiledPredictor:
    def __init__(
        self,
        model: keras.Model,
        timesteps: int,
        features: int,
        jit_compile: bool = True,
        max_bucket: int = DEFAULT_MAX_BATCH_SIZE,
        hot_after: int = DEFAULT_HOT_AFTER,
        flat_call: bool = True,
    ) -> None:
        self.model = model
        self.timesteps = timesteps
        self.features = features
        self.max_bucket = _next_power_of_two(max(1, max_bucket))
        self.hot_after = max(1, hot_after)
        signature = [tf.TensorSpec([None, timesteps, features], tf.float32, name="x")]
        self._call = _forward_function(model, signature, jit_compile=False).get_concrete_function()
        self._flat = flat_call
        self._graph_call = _flat_call(self._call, flat_call)
        self._xla = _forward_function(model, signature, jit_compile=True) if jit_compile else None
        self._xla_call: Call | None = None
        # bucket -> uses so far; compiled buckets sit in _compiled. Plain dict/set updates under the GIL.
        self._uses: dict[int, int] = {}
        self._compiled: set[int] = set()
        self._requested: set[int] = set()
        self.graph_calls = 0
        self.xla_calls = 0
        self._warm_lock = threading.Lock()
        self._warm = False
        self._closed = False

    def warm(self) -> None:
        """Run the graph function once so no request pays for tracing (XLA buckets warm themselves)."""
        if self._warm:  # the common case, without taking the lock
            return
        with self._warm_lock:
            if self._warm:
                return
            self._run_graph(np.zeros((1, self.timesteps, self.features), np.float32))
            self._warm = True

    @property
    def compiled_buckets(self) -> frozenset[int]:
        return frozenset(self._compiled)

    def compile_now(self, bucket: int) -> None:
        """Compile one bucket in the calling thread (tests and the background compiler)."""
        assert self._xla is not None
        zeros = tf.zeros((bucket, self.timesteps, self.features), tf.float32)
        if self._xla_call is None:
            self._xla_call = _flat_call(self._xla.get_concrete_function(), self._flat)
        self._xla_call(zeros).numpy()
        self._compiled.add(bucket)

    def _run_graph(self, x: np.ndarray) -> np.ndarray:
        self.graph_calls += 1
        return self._graph_call(tf.constant(x)).numpy()

    def _run_xla(self, x: np.ndarray) -> np.ndarray:
        assert self._xla_call is not None
        self.xla_calls += 1
        return self._xla_call(tf.constant(x)).numpy()

    def _note_use(self, bucket: int) -> None:
        uses = self._uses.get(bucket, 0) + 1
        self._uses[bucket] = uses
        if uses >= self.hot_after and bucket not in self._requested:
            self._requested.add(bucket)
            _compiler.submit(lambda: self._compile_unless_closed(bucket))

    def _compile_unless_closed(self, bucket: int) -> bool:
        """A background compile; skipped for a model that was deleted or unloaded meanwhile. True when
        the model was closed by the time it ends: its memory can go back to the system."""
        if not self._closed:
            self.compile_now(bucket)
        return self._closed

    def close(self) -> None:
        """No more compiles for this model (it is being deleted or unloaded)."""
        self._closed = True

    def __call__(self, x: np.ndarray) -> np.ndarray:
        """x: float32 (n, timesteps, features), already scaled. Returns the model's raw outputs."""
        n = x.shape[0]
        if self._xla is None:
            return self._run_graph(x)
        if n > self.max_bucket:
            parts = [self(x[i : i + self.max_bucket]) for i in range(0, n, self.max_bucket)]
            return np.concatenate(parts)
        bucket = _next_power_of_two(n)
        if bucket not in self._compiled:
            self._note_use(bucket)
            return self._run_graph(x)
        if bucket != n:
            x = np.concatenate([x, np.zeros((bucket - n, *x.shape[1:]), x.dtype)])
        return self._run_xla(x)[:n]
