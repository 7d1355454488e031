"""Adaptive batching: one worker per served model turns concurrent requests into one forward pass.

Requests queue up; the worker takes whatever is waiting (up to ``max_batch_size`` rows), optionally
waits up to ``max_wait_seconds`` for more, runs a single forward pass and hands each caller its rows.
Under heavy load the requests that arrive while a pass runs form the next batch, so the batch size
follows the load by itself.

Two ways in. ``submit_async`` (the servers' event loop) always hands the rows to the worker thread, so
the forward pass never runs on the loop; the results of a batch come back through one
``call_soon_threadsafe`` per loop.
``submit`` (plain threads: scoring a holdout, Evaluate on the executor) runs an idle request straight
away in the caller's thread, whatever max_wait says, since a thread hop would only add latency there.
"""

from __future__ import annotations

import asyncio
import collections
import logging
import threading
import time
from collections.abc import Callable

import numpy as np

from service_common.errors import FailedPrecondition

log = logging.getLogger(__name__)

Forward = Callable[[np.ndarray], np.ndarray]
# A batcher thread with nothing to do for this long ends; the next request starts a new one.
IDLE_EXIT_SECONDS = 30.0


class _Pending:
    __slots__ = ("x", "rows", "result", "error", "notify", "future")

    def __init__(
        self,
        x: np.ndarray,
        notify: Callable[[], None] | None = None,
        future: asyncio.Future[np.ndarray] | None = None,
    ) -> None:
        self.x = x
        self.rows = int(x.shape[0])
        self.result: np.ndarray | None = None
        self.error: BaseException | None = None
        # A thread's request: called once, from the worker thread, when result or error is set.
        self.notify = notify
        # A coroutine's request: settled on its loop (see _hand_back).
        self.future = future


def _settle_all(batch: list[_Pending]) -> None:
    """On the loop: every coroutine of one batch gets its rows (or the error)."""
    for pending in batch:
        future = pending.future
        assert future is not None
        if future.cancelled():  # the caller went away meanwhile
            continue
        if pending.error is not None:
            future.set_exception(pending.error)
        else:
            future.set_result(pending.result)  # type: ignore[arg-type]


def _hand_back(batch: list[_Pending]) -> None:
    """From the worker thread: wake the threads, and each loop once for all of its callers in the batch
    (one wake-up of the loop per batch rather than one per request)."""
    by_loop: dict[asyncio.AbstractEventLoop, list[_Pending]] = {}
    for pending in batch:
        if pending.future is None:
            assert pending.notify is not None
            pending.notify()
        else:
            by_loop.setdefault(pending.future.get_loop(), []).append(pending)
    for loop, settled in by_loop.items():
        loop.call_soon_threadsafe(_settle_all, settled)


class AdaptiveBatcher:
    def __init__(
        self,
        forward: Forward,
        max_batch_size: int,
        max_wait_seconds: float,
        name: str,
        observe_batch: Callable[[int], None] | None = None,
    ) -> None:
        self._forward = forward
        self.max_batch_size = max(1, max_batch_size)
        self.max_wait_seconds = max(0.0, max_wait_seconds)
        self.name = name
        self._observe = observe_batch
        self._queue: collections.deque[_Pending] = collections.deque()
        self._cond = threading.Condition()
        self._closed_reason: str | None = None
        # Held while a forward pass runs (worker or fast path): one pass per model at a time.
        self._running = threading.Lock()
        # The event loop hands it every forward pass, batching or not. Started by the first request
        # that queues, and gone again after IDLE_EXIT_SECONDS without one: a replica serves thousands
        # of versions, and one thread per version ever called would pile up.
        self._worker = threading.Thread(target=self._loop, name=f"batcher-{name}", daemon=True)
        self._started = False

    @property
    def enabled(self) -> bool:
        """Whether requests are merged into batches (max_batch_size > 1)."""
        return self.max_batch_size > 1

    async def submit_async(self, x: np.ndarray) -> np.ndarray:
        """Like ``submit``, from a coroutine: the pass runs on the worker thread, never on the loop."""
        future: asyncio.Future[np.ndarray] = asyncio.get_running_loop().create_future()
        self._enqueue(_Pending(x, future=future))
        return await future

    def _enqueue(self, pending: _Pending) -> None:
        with self._cond:
            if self._closed_reason is not None:
                raise FailedPrecondition(self._closed_reason)
            if not self._started:
                self._started = True
                self._worker = threading.Thread(target=self._loop, name=f"batcher-{self.name}", daemon=True)
                self._worker.start()
            self._queue.append(pending)
            self._cond.notify()

    def submit(self, x: np.ndarray) -> np.ndarray:
        """Run ``x`` (rows, ...) through the model, batched with whatever else is waiting."""
        if self._closed_reason is not None:
            raise FailedPrecondition(self._closed_reason)
        if not self.enabled or x.shape[0] >= self.max_batch_size:
            # Unbatched, or a full batch already: run in the caller's thread.
            return self._run_direct(x)
        if not self._queue and self._running.acquire(blocking=False):
            # Idle: nothing to batch with, so no reason to wait. Requests arriving meanwhile queue up
            # for the worker, which waits up to max_wait for more: the wait only applies under load.
            try:
                return self._run_direct(x)
            finally:
                self._running.release()
        done = threading.Event()
        pending = _Pending(x, done.set)
        self._enqueue(pending)
        done.wait()
        if pending.error is not None:
            raise pending.error
        assert pending.result is not None
        return pending.result

    def idle(self) -> bool:
        """No request queued and no pass running: a pass run now batches with nothing."""
        return not self._queue and not self._running.locked()

    def run_now(self, x: np.ndarray) -> np.ndarray:
        """One pass in the caller's thread (the event loop's, when the batcher is idle)."""
        if self._closed_reason is not None:
            raise FailedPrecondition(self._closed_reason)
        return self._run_direct(x)

    def _run_direct(self, x: np.ndarray) -> np.ndarray:
        if self._observe:
            self._observe(int(x.shape[0]))
        return self._forward(x)

    def close(self, reason: str) -> None:
        """Refuse new requests with FailedPrecondition(reason); queued ones still finish."""
        with self._cond:
            self._closed_reason = reason
            self._cond.notify_all()
            started = self._started
        if started and self._worker is not threading.current_thread():
            self._worker.join(timeout=10)

    def _take_batch(self) -> list[_Pending]:
        """Everything queued (up to max_batch_size rows), after waiting up to max_wait for more."""
        with self._cond:
            batch: list[_Pending] = []
            rows = 0
            deadline = time.monotonic() + self.max_wait_seconds
            while True:
                while self._queue and (not batch or rows + self._queue[0].rows <= self.max_batch_size):
                    item = self._queue.popleft()
                    batch.append(item)
                    rows += item.rows
                if rows >= self.max_batch_size or self._queue or self._closed_reason is not None:
                    return batch
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    return batch
                self._cond.wait(remaining)

    def _wait_for_work(self) -> bool:
        """True when there is work; False when closed, or idle long enough for this thread to end (the
        next request starts another)."""
        with self._cond:
            while not self._queue:
                if self._closed_reason is not None:
                    return False
                if not self._cond.wait(IDLE_EXIT_SECONDS) and not self._queue:
                    self._started = False
                    return False
            return True

    def _loop(self) -> None:
        while self._wait_for_work():
            # Take the batch only once the previous pass (maybe a fast-path one) is over: whatever
            # queued up meanwhile joins it.
            with self._running:
                batch = self._take_batch()
                try:
                    x = batch[0].x if len(batch) == 1 else np.concatenate([p.x for p in batch])
                    if self._observe:
                        self._observe(int(x.shape[0]))
                    out = self._forward(x)
                    start = 0
                    for pending in batch:
                        pending.result = out[start : start + pending.rows]
                        start += pending.rows
                except BaseException as exc:  # noqa: BLE001 - every waiting caller gets the error
                    log.exception("batch of %d request(s) on %s failed", len(batch), self.name)
                    for pending in batch:
                        pending.error = exc
            _hand_back(batch)
