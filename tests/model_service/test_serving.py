"""The serving path (serving.py) under the cost admission: chunked big requests, refusals before any
work, inputs taken only when they fit the model's float32; sessions built on first use, within a budget."""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np
import pytest

from model_service import builder
from model_service.affine_scalers import AffineScaler, ScalerRef
from model_service.cost import MIB, Admission
from model_service.records import ModelRecord
from model_service.serving import ServedModel, ServingOptions, SessionBudget, serving_options
from model_service.settings import ModelSettings
from model_service.spec import Dense, Head, Lstm, ModelSpec, Task, with_defaults
from model_service.training.graph import serving_graph
from service_common.errors import InvalidArgument, ResourceExhausted

SPEC = with_defaults(
    ModelSpec(50, 2, (Lstm(16, return_sequences=True), Dense(64, "relu"), Lstm(4)), Head(Task.REGRESSION))
)


@pytest.fixture(scope="module")
def keras_model() -> object:
    return builder.build(SPEC, seed=4, compile_model=False)


def served(
    keras_model: object, admission: Admission | None, batches: list[int] | None = None, x_scaler=None
) -> ServedModel:
    record = ModelRecord("m", 1, SPEC, 4, "now", x_scaler=x_scaler)
    graph = serving_graph(record, keras_model)
    options = ServingOptions(max_batch_size=8, admission=admission)
    return ServedModel(record, lambda: graph, options, None if batches is None else batches.append)


@pytest.fixture
def rows() -> Iterator[np.ndarray]:
    yield np.random.default_rng(3).normal(size=(300, SPEC.timesteps, SPEC.features))


def test_a_big_request_is_computed_in_chunks_with_the_same_answer(
    keras_model: object, rows: np.ndarray
) -> None:
    # A budget small enough that 300 rows take several forward passes.
    admission = Admission(8 * MIB, 64 * MIB)
    batches: list[int] = []
    chunked = served(keras_model, admission, batches)
    chunk = admission.chunk_rows(chunked.cost)
    assert 1 < chunk < 300
    got = chunked.infer(rows).values
    assert batches and max(batches) <= chunk and sum(batches) == 300
    whole = served(keras_model, None).infer(rows).values
    np.testing.assert_allclose(got, whole, rtol=1e-5, atol=1e-6)
    assert admission.in_use == 0
    chunked.close("done")


def test_a_request_over_the_budget_is_refused_before_the_model_runs(
    keras_model: object, rows: np.ndarray
) -> None:
    model = served(keras_model, Admission(MIB, 64 * MIB))
    with pytest.raises(ResourceExhausted) as info:
        model.infer(np.repeat(rows, 10, axis=0))
    assert "3000 row(s) on model 'm' v1 needs an estimated" in str(info.value)
    assert "memory_budget_mb=1" in str(info.value)
    assert not model.loaded  # refused before its session was even built


def test_a_reply_over_the_message_limit_is_refused_before_the_model_runs(
    keras_model: object, rows: np.ndarray
) -> None:
    model = served(keras_model, Admission(2048 * MIB, 64 * 1024))  # replies up to 64 KiB
    with pytest.raises(ResourceExhausted, match="the reply would be about"):
        model.infer(np.repeat(rows, 40, axis=0))
    assert not model.loaded  # refused before its session was even built
    # Evaluate replies with metrics only: the same rows are fine.
    metrics = model.evaluate(rows, np.zeros(len(rows)))
    assert set(metrics) == {"mse", "mae", "rmse"}


def test_a_refused_input_releases_its_reservation(keras_model: object, rows: np.ndarray) -> None:
    admission = Admission(64 * MIB, 64 * MIB)
    model = served(keras_model, admission)
    bad = rows.copy()
    bad[7, 3, 1] = 1e300
    with pytest.raises(InvalidArgument):
        model.infer(bad)
    assert admission.in_use == 0


def test_a_finite_input_beyond_float32_is_refused_not_answered_with_nan(
    keras_model: object, rows: np.ndarray
) -> None:
    model = served(keras_model, None)
    x = rows[:2].copy()
    x[1, 4, 0] = 1e300
    with pytest.raises(InvalidArgument) as info:
        model.infer(x)
    assert (
        "x: the model's float32 holds only values within ±3.403e+38; found 1e+300 at index [1, 4, 0]"
        in str(info.value)
    )
    x[1, 4, 0] = 3e38  # within float32: answered
    assert model.infer(x).values.shape == (2, 1)


def test_values_the_x_scaler_pushes_beyond_float32_are_refused(keras_model: object, rows: np.ndarray) -> None:
    scaler = AffineScaler(ScalerRef("m-x", 1), "per_feature", (50, 2), np.array([1e10, 1.0]), np.zeros(2))
    model = served(keras_model, None, x_scaler=scaler)
    x = rows[:1].copy()
    x[0, 0, 0] = 1e30  # fits float32, but 1e40 once scaled
    with pytest.raises(InvalidArgument, match=r"x \(scaled by the model's x scaler\): .* found 1e\+40"):
        model.infer(x)


def test_the_settings_reach_the_serving_options_in_their_units() -> None:
    settings = ModelSettings(max_batch_size=16, max_batch_wait_ms=2.0)
    options = serving_options(settings)
    assert (options.max_batch_size, options.max_batch_wait_seconds) == (16, 0.002)


def test_a_session_is_built_on_the_first_call_and_dropped_past_the_budget(
    keras_model: object, rows: np.ndarray
) -> None:
    record = ModelRecord("m", 1, SPEC, 4, "now")
    graph = serving_graph(record, keras_model)
    reads: list[int] = []

    def source() -> bytes:
        reads.append(1)
        return graph

    budget = SessionBudget(2)
    models = [ServedModel(record, source, ServingOptions(max_batch_size=1), budget=budget) for _ in range(3)]
    assert not any(m.loaded for m in models) and not reads  # listing builds nothing
    first = models[0].infer(rows[:2]).values
    assert models[0].loaded and len(reads) == 1
    models[1].infer(rows[:2])
    models[0].infer(rows[:2])  # the most recently used now: models[1] is the oldest
    models[2].infer(rows[:2])
    assert [m.loaded for m in models] == [True, False, True] and len(budget) == 2
    assert budget.evictions == 1
    again = models[1].infer(rows[:2]).values  # built again on its next call
    assert models[1].loaded and len(reads) == 4
    np.testing.assert_array_equal(first, again)
    pinned = ServedModel(record, source, ServingOptions(max_batch_size=1), budget=budget, pinned=True)
    pinned.load()
    for m in models:
        m.infer(rows[:1])
    assert pinned.loaded  # never dropped, whatever else is used
    for m in (*models, pinned):
        m.close("done")


def test_with_inline_passes_a_lone_call_runs_on_the_loop_and_answers_the_same(
    keras_model: object, rows: np.ndarray
) -> None:
    import asyncio

    record = ModelRecord("m", 1, SPEC, 4, "now")
    graph = serving_graph(record, keras_model)
    batched = ServedModel(record, lambda: graph, ServingOptions(max_batch_size=8))
    inline = ServedModel(record, lambda: graph, ServingOptions(max_batch_size=8, inline_passes=True))

    async def both() -> tuple[np.ndarray, np.ndarray]:
        a = (await batched.infer_async(rows[:3])).values
        b = (await inline.infer_async(rows[:3])).values
        return a, b

    a, b = asyncio.run(both())
    np.testing.assert_array_equal(a, b)
    assert batched._batcher._started and not inline._batcher._started  # no thread hop for the lone call
    for m in (batched, inline):
        m.close("done")
