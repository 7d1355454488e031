"""The statistics extension's counters (model_service/inference_protocol/statistics.py), without a server."""

from __future__ import annotations

import gc
import threading

from model_service.inference_protocol.statistics import Duration, InferenceStatistics, SuccessTiming
from model_service.serving import ForwardPass

TIMING = SuccessTiming(total_ns=100, input_ns=10, queue_ns=20, infer_ns=50, output_ns=5)


class Clock:
    def __init__(self, now_ms: int) -> None:
        self.now_ms = now_ms

    def __call__(self) -> int:
        return self.now_ms


def test_a_version_that_served_nothing_reports_zeros() -> None:
    stats = InferenceStatistics().snapshot("m", 1)
    assert (stats.model_id, stats.version) == ("m", 1)
    assert (stats.inference_count, stats.execution_count, stats.last_inference_ms) == (0, 0, 0)
    assert stats.success == stats.fail == stats.queue == stats.compute_infer == Duration(0, 0)
    assert stats.batches == {}


def test_requests_of_one_forward_pass_count_one_execution_and_every_phase_once_each() -> None:
    statistics = InferenceStatistics()
    shared, alone = ForwardPass(rows=5, started_ns=0, duration_ns=50), ForwardPass(4, 0, 70)
    statistics.record_success("m", 1, rows=2, timing=TIMING, execution=shared, execution_rows=5)
    statistics.record_success("m", 1, rows=3, timing=TIMING, execution=shared, execution_rows=5)
    statistics.record_success("m", 1, rows=4, timing=TIMING, execution=alone, execution_rows=4)

    stats = statistics.snapshot("m", 1)
    assert stats.inference_count == 9
    assert stats.execution_count == 2
    assert stats.success == Duration(3, 300)
    assert stats.compute_input == Duration(3, 30)
    assert stats.queue == Duration(3, 60)
    assert stats.compute_infer == Duration(3, 150)
    assert stats.compute_output == Duration(3, 15)
    assert stats.fail == Duration(0, 0)
    assert stats.batches == {5: Duration(1, 50), 4: Duration(1, 50)}


def test_a_failure_counts_as_fail_only_and_versions_count_apart() -> None:
    statistics = InferenceStatistics()
    statistics.record_failure("m", 2, total_ns=40)
    statistics.record_success("m", 1, rows=1, timing=TIMING, execution=ForwardPass(1, 0, 1), execution_rows=1)

    failed = statistics.snapshot("m", 2)
    assert failed.fail == Duration(1, 40)
    assert failed.success == failed.queue == failed.compute_infer == Duration(0, 0)
    assert (failed.inference_count, failed.execution_count) == (0, 0)
    assert statistics.snapshot("m", 1).fail == Duration(0, 0)
    assert statistics.snapshot("other", 1).success == Duration(0, 0)


def test_last_inference_is_the_latest_request_in_epoch_milliseconds() -> None:
    clock = Clock(1_000)
    statistics = InferenceStatistics(clock_ms=clock)
    statistics.record_success("m", 1, rows=1, timing=TIMING, execution=ForwardPass(1, 0, 1), execution_rows=1)
    assert statistics.snapshot("m", 1).last_inference_ms == 1_000
    clock.now_ms = 2_500
    statistics.record_failure("m", 1, total_ns=1)
    assert statistics.snapshot("m", 1).last_inference_ms == 2_500
    assert InferenceStatistics().snapshot("m", 1).last_inference_ms == 0


def test_a_snapshot_is_a_copy() -> None:
    statistics = InferenceStatistics()
    statistics.record_failure("m", 1, total_ns=5)
    snapshot = statistics.snapshot("m", 1)
    snapshot.fail.add(1_000)
    snapshot.batches[1] = Duration(7, 7)
    again = statistics.snapshot("m", 1)
    assert again.fail == Duration(1, 5) and again.batches == {}


def test_concurrent_recording_loses_no_count() -> None:
    statistics = InferenceStatistics()
    threads, per_thread = 8, 500
    passes = [ForwardPass(2, 0, 1) for _ in range(threads * per_thread // 2)]

    def work(index: int) -> None:
        for i in range(per_thread):
            forward = passes[(index * per_thread + i) // 2]  # two requests per pass
            statistics.record_success("m", 1, rows=1, timing=TIMING, execution=forward, execution_rows=2)
            statistics.record_failure("m", 1, total_ns=1)

    workers = [threading.Thread(target=work, args=(i,)) for i in range(threads)]
    for worker in workers:
        worker.start()
    for worker in workers:
        worker.join()
    stats = statistics.snapshot("m", 1)
    assert stats.success.count == stats.fail.count == stats.inference_count == threads * per_thread
    assert stats.execution_count == len(passes)
    assert stats.batches == {2: Duration(len(passes), len(passes) * TIMING.infer_ns)}


def test_passes_are_forgotten_once_no_request_holds_them() -> None:
    statistics = InferenceStatistics()
    for _ in range(100):
        forward = ForwardPass(1, 0, 1)
        statistics.record_success("m", 1, rows=1, timing=TIMING, execution=forward, execution_rows=1)
    del forward
    gc.collect()
    assert len(statistics._counters[("m", 1)].executions) == 0
    assert statistics.snapshot("m", 1).execution_count == 100
