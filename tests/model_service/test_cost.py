"""Cost admission (cost.py): estimates from the plan, refused past the budget or the message limit."""

from __future__ import annotations

import json
import subprocess
import sys
import threading

import pytest

from model_service import cost
from model_service.cost import MIB, Admission, ModelCost
from model_service.spec import Dense, Head, Lstm, ModelSpec, Reshape, Task, plan, with_defaults
from service_common.errors import ResourceExhausted
from tests.system.procs import REPO, child_env

REGRESSION = Head(Task.REGRESSION)
# The shape: a long sequence through a wide Dense (each row holds 2000 x 1024 values twice).
WIDE = ModelSpec(2000, 1, (Lstm(8, return_sequences=True), Dense(1024, "relu"), Lstm(4)), REGRESSION)


def model_cost(spec: ModelSpec) -> ModelCost:
    return ModelCost.of(plan(with_defaults(spec)))


def test_figures_follow_the_plan() -> None:
    seed = model_cost(ModelSpec(3, 1, (Lstm(10, "relu"), Lstm(2, "relu"), Lstm(10, "relu")), REGRESSION))
    assert (seed.input_values, seed.outputs, seed.reply_values, seed.params) == (3, 1, 1, 1115)
    # input 3; lstm 3 + 2*10*3 + 2*30; lstm 30 + 2*2*3 + 2*6; lstm 6 + 2*10*3 + 10; head 3
    assert seed.forward_values == 3 + (3 + 60 + 60) + (30 + 12 + 12) + (6 + 60 + 10) + 3
    assert seed.unrolled_param_steps == 3 * (480 + 104 + 520)  # 3 steps, unrolled
    classifier = model_cost(ModelSpec(3, 1, (Lstm(4),), Head(Task.MULTICLASS, n_classes=5)))
    assert (classifier.outputs, classifier.reply_values) == (5, 6)  # probabilities + a label
    wide = model_cost(WIDE)
    assert wide.forward_values > 2 * 2000 * 1024 and wide.unrolled_param_steps == 0


def test_big_inference_runs_in_power_of_two_chunks_within_a_share_of_the_budget() -> None:
    wide = model_cost(WIDE)
    admission = Admission(2048 * MIB, 64 * MIB)
    chunk = admission.chunk_rows(wide)
    assert chunk & (chunk - 1) == 0 and chunk >= 1
    assert wide.forward_bytes(chunk) <= admission.memory_budget_bytes * cost.CHUNK_SHARE
    assert wide.forward_bytes(2 * chunk) > admission.memory_budget_bytes * cost.CHUNK_SHARE
    # The activations of 64 rows are those of one chunk; only the inputs and outputs grow with rows.
    small, big = (admission.inference(wide, rows, "x", reply=True) for rows in (chunk, 64 * chunk))
    assert big.memory_bytes - small.memory_bytes == wide.in_out_bytes(63 * chunk)
    assert admission.chunk_rows(model_cost(ModelSpec(3, 1, (Lstm(4),), REGRESSION))) >= 2**20


def test_a_reply_past_the_message_limit_is_refused_before_anything_is_computed() -> None:
    many_outputs = model_cost(ModelSpec(3, 1, (Lstm(4),), Head(Task.REGRESSION, outputs=10_000)))
    admission = Admission(2048 * MIB, 64 * MIB)
    estimate = admission.inference(many_outputs, 1000, "1000 row(s) on model 'm' v1", reply=True)
    assert estimate.reply_bytes >= 1000 * 10_000 * 8
    with pytest.raises(ResourceExhausted) as info:
        admission.reserve(estimate)
    message = str(info.value)
    assert message.startswith("1000 row(s) on model 'm' v1: the reply would be about")
    assert f"{estimate.reply_bytes} bytes, above the max message size of {64 * MIB} bytes" in message
    # Evaluate answers with metrics only: the same rows are admitted (their memory fits the budget).
    with admission.reserve(admission.inference(many_outputs, 1000, "e", reply=False)):
        assert admission.in_use > 0
    # 6000 rows of 10 000 outputs (the Predict): refused for its memory even without a reply.
    with pytest.raises(ResourceExhausted, match="above the budget memory_budget_mb=2048"):
        admission.reserve(admission.inference(many_outputs, 6000, "e", reply=False))


def test_memory_past_the_budget_is_refused_naming_estimate_and_budget() -> None:
    admission = Admission(16 * MIB, 64 * MIB)
    estimate = admission.inference(model_cost(WIDE), 1, "1 row(s) on model 'wide' v1", reply=True)
    assert estimate.memory_bytes > 16 * MIB
    with pytest.raises(ResourceExhausted) as info:
        admission.reserve(estimate)
    message = str(info.value)
    assert f"needs an estimated {cost.mib(estimate.memory_bytes)} of memory" in message
    assert "above the budget memory_budget_mb=16" in message and "per forward pass" in message


def test_concurrent_work_shares_one_budget() -> None:
    admission = Admission(100 * MIB, 64 * MIB)
    big = cost.Estimate("first", 60 * MIB, lambda: "")
    held = admission.reserve(big)
    assert admission.in_use == 60 * MIB
    with pytest.raises(ResourceExhausted, match="60.0 MiB of the budget memory_budget_mb=100 are held"):
        admission.reserve(cost.Estimate("second", 50 * MIB, lambda: ""))
    held.release()
    held.release()  # idempotent
    assert admission.in_use == 0
    with admission.reserve(cost.Estimate("second", 50 * MIB, lambda: "")):
        assert admission.in_use == 50 * MIB
    assert admission.in_use == 0
    # Untracked: compared with the budget, never counted (work inside another reservation).
    with admission.untracked().reserve(big):
        assert admission.in_use == 0


def test_small_requests_are_not_counted() -> None:
    admission = Admission(100 * MIB, 64 * MIB)
    with admission.reserve(cost.Estimate("tiny", cost.UNTRACKED_BYTES - 1, lambda: "")):
        assert admission.in_use == 0


def test_reservations_balance_under_contention() -> None:
    admission = Admission(64 * MIB, 64 * MIB)
    refused = []

    def worker() -> None:
        for _ in range(200):
            try:
                with admission.reserve(cost.Estimate("w", 20 * MIB, lambda: "")):
                    assert admission.in_use <= 64 * MIB
            except ResourceExhausted:
                refused.append(1)

    threads = [threading.Thread(target=worker) for _ in range(6)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert admission.in_use == 0


def test_training_past_the_budget_names_a_batch_size_that_fits() -> None:
    admission = Admission(2048 * MIB, 64 * MIB)
    wide = model_cost(WIDE)
    estimate = admission.training(wide, 32, 100, 0, "training with batch_size 32")
    assert estimate.memory_bytes > 2048 * MIB
    fits = admission.max_batch_size(wide, 100, 0)
    assert 1 <= fits < 32
    assert admission.training(wide, fits, 100, 0, "t").memory_bytes <= 2048 * MIB
    assert admission.training(wide, fits + 1, 100, 0, "t").memory_bytes > 2048 * MIB
    # Weights, gradients and optimizer slots count even at batch size 1.
    huge = model_cost(ModelSpec(30, 4, (Lstm(1024, return_sequences=True), Lstm(1024)), REGRESSION))
    assert admission.training(huge, 1, 10, 0, "t").memory_bytes > huge.params * cost.TRAIN_BYTES_PER_PARAM


def test_training_counts_the_holdout_scoring() -> None:
    admission = Admission(2048 * MIB, 64 * MIB)
    many_outputs = model_cost(ModelSpec(3, 1, (Lstm(4),), Head(Task.REGRESSION, outputs=10_000)))
    without = admission.training(many_outputs, 1, 10, 0, "t").memory_bytes
    scored = admission.training(many_outputs, 1, 10, 100_000, "t").memory_bytes
    assert scored - without >= many_outputs.in_out_bytes(100_000)


MEASURE = """
import json, sys
import numpy as np
from model_service import builder
from model_service.cost import ModelCost
from model_service.graph_session import GraphSession
from model_service.records import ModelRecord
from model_service.spec import ModelSpec, plan, with_defaults
from model_service.training.graph import serving_graph

def status(field):
    for line in open("/proc/self/status"):
        if line.startswith(field):
            return int(line.split()[1]) * 1024

spec = with_defaults(ModelSpec.from_dict(json.loads(sys.argv[1])))
rows = int(sys.argv[2])
record = ModelRecord("m", 1, spec, 0, "now")
session = GraphSession(serving_graph(record, builder.build(spec, 0)), "values", "m v1")
x = np.ones((rows, spec.timesteps, spec.features), np.float64)
session.run(x[:1])
before = status("VmRSS")
with open("/proc/self/clear_refs", "w") as fh:
    fh.write("5")  # reset the peak (VmHWM) to the current size
session.run(x)
print(json.dumps({"peak": status("VmHWM") - before, "estimate": ModelCost.of(plan(spec)).forward_bytes(rows)}))
"""


@pytest.mark.parametrize(
    ("spec", "rows"),
    [
        (WIDE, 8),
        (ModelSpec(3, 1, (Lstm(8),), Head(Task.REGRESSION, outputs=10_000)), 2048),
        (ModelSpec(200, 2, (Lstm(256, return_sequences=True), Reshape((-1, 8)), Lstm(4)), REGRESSION), 64),
    ],
    ids=["long-and-wide", "many-outputs", "wide-lstm"],
)
def test_the_forward_estimate_is_not_below_what_a_forward_pass_takes(spec: ModelSpec, rows: int) -> None:
    """Measured in a fresh process: the peak resident size a forward pass of ``rows`` adds."""
    done = subprocess.run(
        [sys.executable, "-c", MEASURE, json.dumps(with_defaults(spec).to_dict()), str(rows)],
        cwd=REPO,
        env=child_env(),
        capture_output=True,
        text=True,
        timeout=300,
        check=True,
    )
    figures = json.loads(done.stdout.strip().splitlines()[-1])
    assert figures["peak"] > 0.1 * figures["estimate"], figures  # the measurement saw the pass
    assert figures["estimate"] >= figures["peak"], figures
