"""The compiled forward pass: graph tier at once, XLA per hot batch-size bucket in the background."""

from __future__ import annotations

import gc
import logging
import os
import subprocess
import sys
import time
import weakref
from pathlib import Path

import keras
import numpy as np
import pytest
import tensorflow as tf

from model_service import predictor as predictor_module
from model_service.predictor import CompiledPredictor

TIMESTEPS, FEATURES = 3, 2
REPO_ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def model() -> keras.Model:
    keras.utils.set_random_seed(3)
    inputs = keras.Input((TIMESTEPS, FEATURES))
    hidden = keras.layers.LSTM(6, activation="relu", return_sequences=True)(inputs)
    hidden = keras.layers.LSTM(4)(hidden)
    return keras.Model(inputs, keras.layers.Dense(2)(hidden))


def rows(n: int, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).uniform(-1, 1, (n, TIMESTEPS, FEATURES)).astype(np.float32)


def expected(model: keras.Model, x: np.ndarray) -> np.ndarray:
    return model(x, training=False).numpy()


def wait_compiled(predictor: CompiledPredictor, bucket: int, timeout: float = 120.0) -> None:
    deadline = time.monotonic() + timeout
    while bucket not in predictor.compiled_buckets:
        assert time.monotonic() < deadline, f"bucket {bucket} not compiled within {timeout} s"
        time.sleep(0.05)


def test_a_bucket_is_served_by_the_graph_until_hot_then_by_xla(model: keras.Model) -> None:
    predictor = CompiledPredictor(model, TIMESTEPS, FEATURES, jit_compile=True, hot_after=3)
    predictor.warm()
    assert predictor.graph_calls == 1 and predictor.compiled_buckets == frozenset()
    x = rows(1)
    graph_outputs = [predictor(x) for _ in range(3)]  # the third use makes bucket 1 hot
    assert predictor.graph_calls == 4 and predictor.xla_calls == 0
    wait_compiled(predictor, 1)
    assert predictor.compiled_buckets == frozenset({1})  # only the bucket that was used
    xla_output = predictor(x)
    assert predictor.xla_calls == 1 and predictor.graph_calls == 4
    for got in [*graph_outputs, xla_output]:
        np.testing.assert_allclose(got, expected(model, x), rtol=1e-5, atol=1e-6)


def test_xla_pads_to_the_bucket_and_returns_exactly_the_callers_rows(model: keras.Model) -> None:
    predictor = CompiledPredictor(model, TIMESTEPS, FEATURES, jit_compile=True)
    predictor.compile_now(8)
    x = rows(5, seed=1)
    got = predictor(x)  # 5 rows -> bucket 8, padded with zeros, sliced back
    assert predictor.xla_calls == 1 and got.shape == (5, 2)
    np.testing.assert_allclose(got, expected(model, x), rtol=1e-5, atol=1e-6)


def test_batches_above_the_largest_bucket_are_split(model: keras.Model) -> None:
    predictor = CompiledPredictor(model, TIMESTEPS, FEATURES, jit_compile=True, max_bucket=4)
    predictor.compile_now(4)
    predictor.compile_now(2)
    x = rows(10, seed=2)  # 4 + 4 + 2
    got = predictor(x)
    assert predictor.xla_calls == 3 and predictor.graph_calls == 0
    np.testing.assert_allclose(got, expected(model, x), rtol=1e-5, atol=1e-6)


def test_without_jit_compile_nothing_is_ever_compiled(model: keras.Model) -> None:
    predictor = CompiledPredictor(model, TIMESTEPS, FEATURES, jit_compile=False, hot_after=1)
    x = rows(3, seed=3)
    for _ in range(5):
        np.testing.assert_allclose(predictor(x), expected(model, x), rtol=1e-5, atol=1e-6)
    time.sleep(0.2)
    assert predictor.compiled_buckets == frozenset() and predictor.xla_calls == 0
    assert predictor.graph_calls == 5


def test_a_failed_compilation_leaves_the_graph_serving(
    model: keras.Model, caplog: pytest.LogCaptureFixture
) -> None:
    predictor = CompiledPredictor(model, TIMESTEPS, FEATURES, jit_compile=True, hot_after=1)

    class Broken:
        def get_concrete_function(self) -> None:
            raise RuntimeError("XLA is broken here")

    predictor._xla = Broken()  # type: ignore[assignment]
    x = rows(2, seed=4)
    with caplog.at_level(logging.ERROR, logger=predictor_module.__name__):
        predictor(x)  # hot at once: a compile is queued and fails
        deadline = time.monotonic() + 60
        while not any("XLA compilation failed" in r.getMessage() for r in caplog.records):
            assert time.monotonic() < deadline, "the failed compilation was not logged"
            time.sleep(0.05)
    np.testing.assert_allclose(predictor(x), expected(model, x), rtol=1e-5, atol=1e-6)
    assert predictor.compiled_buckets == frozenset() and predictor.graph_calls == 2


def test_the_flat_call_computes_what_the_public_call_does(model: keras.Model) -> None:
    # The private API the serving hot path uses (--flat-call, on by default): this fails loudly when a
    # TensorFlow upgrade renames it or changes its arguments (call_flat(args list, captured inputs)).
    signature = [tf.TensorSpec([None, TIMESTEPS, FEATURES], tf.float32)]
    concrete = predictor_module._forward_function(model, signature, jit_compile=False).get_concrete_function()
    assert callable(getattr(concrete, "_call_flat", None)), (
        "TensorFlow no longer has ConcreteFunction._call_flat"
    )
    fast = predictor_module._flat_call(concrete)
    assert fast is not concrete
    assert predictor_module._flat_call(concrete, flat=False) is concrete
    x = tf.constant(rows(7, seed=5))
    np.testing.assert_array_equal(fast(x).numpy(), concrete(x).numpy())


@pytest.mark.parametrize("jit_compile", [False, True])
def test_the_public_call_path_serves_what_the_flat_one_does(model: keras.Model, jit_compile: bool) -> None:
    x = rows(5, seed=9)
    flat = CompiledPredictor(model, TIMESTEPS, FEATURES, jit_compile=jit_compile, hot_after=1)
    public = CompiledPredictor(
        model, TIMESTEPS, FEATURES, jit_compile=jit_compile, hot_after=1, flat_call=False
    )
    if jit_compile:
        flat.compile_now(8)
        public.compile_now(8)
    np.testing.assert_allclose(public(x), flat(x), rtol=1e-6, atol=1e-7)
    np.testing.assert_allclose(public(x), expected(model, x), rtol=1e-5, atol=1e-6)


EXIT_WHILE_COMPILING = """
import os, sys
os.environ["TF_CPP_MIN_LOG_LEVEL"] = "3"
import keras, numpy as np
from model_service.predictor import CompiledPredictor
inputs = keras.Input((3, 2))
model = keras.Model(inputs, keras.layers.Dense(1)(keras.layers.LSTM(4)(inputs)))
predictor = CompiledPredictor(model, 3, 2, jit_compile=True, hot_after=1)
for n in (1, 2, 4, 8):  # four buckets queued for the background compiler
    predictor(np.zeros((n, 3, 2), np.float32))
print("queued", flush=True)
"""  # ...and the interpreter exits at once, with compilations queued or under way


def test_the_process_exits_cleanly_while_buckets_are_compiling(tmp_path: Path) -> None:
    script = tmp_path / "exit_while_compiling.py"
    script.write_text(EXIT_WHILE_COMPILING)
    done = subprocess.run(
        [sys.executable, str(script)],
        cwd=REPO_ROOT,
        env={**os.environ, "PYTHONPATH": str(REPO_ROOT)},
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.strip() == "queued"


def test_a_closed_predictor_is_not_compiled_and_not_kept_alive_by_the_compiler(model: keras.Model) -> None:
    """A deleted model's queued compile is skipped, and the compiler does not hold on to it."""
    blocker = CompiledPredictor(model, TIMESTEPS, FEATURES, jit_compile=True, hot_after=1)
    closed = CompiledPredictor(model, TIMESTEPS, FEATURES, jit_compile=True, hot_after=1)
    blocker(rows(16))  # queues bucket 16 first
    closed(rows(8))  # queued behind it
    closed.close()
    wait_compiled(blocker, 16)
    after = CompiledPredictor(model, TIMESTEPS, FEATURES, jit_compile=True, hot_after=1)
    after(rows(4))  # runs after the closed one's job
    wait_compiled(after, 4)
    assert closed.compiled_buckets == frozenset()
    ref = weakref.ref(closed)
    del closed
    gc.collect()
    assert ref() is None
