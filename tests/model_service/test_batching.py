"""The adaptive batcher: concurrent requests share forward passes and each gets exactly its rows."""

from __future__ import annotations

import threading
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest

from model_service.batching import AdaptiveBatcher
from service_common.errors import FailedPrecondition


class GatedForward:
    """Doubles its input; the first call blocks until released, so later requests pile up behind it."""

    def __init__(self) -> None:
        self.batches: list[int] = []
        self.first_call = threading.Event()
        self.release = threading.Event()
        self._lock = threading.Lock()

    def __call__(self, x: np.ndarray) -> np.ndarray:
        with self._lock:
            self.batches.append(int(x.shape[0]))
            first = len(self.batches) == 1
        if first:
            self.first_call.set()
            assert self.release.wait(10)
        return x * 2


def test_requests_queued_behind_a_running_pass_form_one_batch() -> None:
    forward = GatedForward()
    batcher = AdaptiveBatcher(forward, max_batch_size=64, max_wait_seconds=0.0, name="t")
    with ThreadPoolExecutor(16) as pool:
        first = pool.submit(batcher.submit, np.full((1, 2), -1.0))
        assert forward.first_call.wait(10)
        futures = [pool.submit(batcher.submit, np.full((1, 2), float(i))) for i in range(12)]
        while len(batcher._queue) < 12:  # all twelve are waiting behind the gated pass
            threading.Event().wait(0.005)
        forward.release.set()
        results = [f.result(10) for f in futures]
        assert first.result(10).tolist() == [[-2.0, -2.0]]
    for i, result in enumerate(results):
        assert result.tolist() == [[2.0 * i, 2.0 * i]]
    assert forward.batches == [1, 12]
    batcher.close("done")


def test_batches_never_exceed_max_rows_and_requests_keep_their_rows() -> None:
    forward = GatedForward()
    batcher = AdaptiveBatcher(forward, max_batch_size=5, max_wait_seconds=0.0, name="t")
    with ThreadPoolExecutor(8) as pool:
        first = pool.submit(batcher.submit, np.zeros((1, 1)))
        assert forward.first_call.wait(10)
        sizes = [2, 3, 1, 2, 2]
        futures = [pool.submit(batcher.submit, np.full((n, 1), float(i))) for i, n in enumerate(sizes)]
        while len(batcher._queue) < len(sizes):
            threading.Event().wait(0.005)
        forward.release.set()
        for i, (future, n) in enumerate(zip(futures, sizes, strict=True)):
            assert future.result(10).tolist() == [[2.0 * i]] * n
        first.result(10)
    assert all(size <= 5 for size in forward.batches)
    assert sum(forward.batches) == 1 + sum(sizes)
    batcher.close("done")


def test_an_idle_request_never_waits_and_the_wait_gathers_requests_under_load() -> None:
    forward = GatedForward()
    # A 5 s wait: an idle request that waited would be visible as a slow test, not as a wrong batch.
    batcher = AdaptiveBatcher(forward, max_batch_size=3, max_wait_seconds=5.0, name="t")
    with ThreadPoolExecutor(4) as pool:
        first = pool.submit(batcher.submit, np.ones((1, 1)))
        assert forward.first_call.wait(10)  # idle: it runs at once, in the caller's thread
        second = pool.submit(batcher.submit, np.ones((1, 1)))
        while len(batcher._queue) < 1:  # under load: queued behind the running pass
            threading.Event().wait(0.005)
        forward.release.set()
        first.result(10)
        # The worker now holds the queued request and waits for more; these two fill the batch.
        later = [pool.submit(batcher.submit, np.ones((1, 1))) for _ in range(2)]
        for future in [second, *later]:
            assert future.result(10).tolist() == [[2.0]]
    assert forward.batches == [1, 3]
    batcher.close("done")


def test_an_error_reaches_every_caller_of_the_batch_and_the_worker_survives() -> None:
    fail = threading.Event()

    def forward(x: np.ndarray) -> np.ndarray:
        if fail.is_set():
            raise ValueError("boom")
        return x

    batcher = AdaptiveBatcher(forward, max_batch_size=8, max_wait_seconds=0.01, name="t")
    fail.set()
    with pytest.raises(ValueError, match="boom"):
        batcher.submit(np.ones((1, 1)))
    fail.clear()
    assert batcher.submit(np.ones((1, 1))).tolist() == [[1.0]]
    batcher.close("done")


def test_closed_batcher_refuses_with_the_reason() -> None:
    batcher = AdaptiveBatcher(lambda x: x, max_batch_size=8, max_wait_seconds=0.0, name="t")
    batcher.close("model m version 1 was unloaded")
    with pytest.raises(FailedPrecondition, match="unloaded"):
        batcher.submit(np.ones((1, 1)))


def test_batch_size_one_runs_every_request_on_its_own() -> None:
    calls: list[int] = []
    batcher = AdaptiveBatcher(
        lambda x: calls.append(len(x)) or x, max_batch_size=1, max_wait_seconds=0.0, name="t"
    )
    assert not batcher.enabled
    with ThreadPoolExecutor(4) as pool:
        list(pool.map(lambda _: batcher.submit(np.ones((1, 1))), range(8)))
    assert calls == [1] * 8


def test_an_idle_worker_thread_ends_and_the_next_request_starts_another(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    import asyncio
    import time

    from model_service import batching

    monkeypatch.setattr(batching, "IDLE_EXIT_SECONDS", 0.2)
    batcher = AdaptiveBatcher(lambda x: x * 2, max_batch_size=8, max_wait_seconds=0.0, name="idle")

    def batcher_threads() -> int:
        return sum(1 for t in threading.enumerate() if t.name == "batcher-idle")

    async def one(value: float) -> np.ndarray:
        return await batcher.submit_async(np.full((1, 2), value))

    assert batcher_threads() == 0  # nothing started before the first request
    np.testing.assert_array_equal(asyncio.run(one(1.0)), np.full((1, 2), 2.0))
    assert batcher_threads() == 1
    deadline = time.monotonic() + 10
    while batcher_threads():
        assert time.monotonic() < deadline, "the idle batcher thread did not end"
        time.sleep(0.05)
    np.testing.assert_array_equal(asyncio.run(one(3.0)), np.full((1, 2), 6.0))  # a new one serves it
    batcher.close("done")
    assert batcher_threads() == 0
