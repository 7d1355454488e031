"""The shutdown gate: counts running calls; once closed, new ones are refused UNAVAILABLE (health still
answers) while the calls in flight finish."""

from __future__ import annotations

import asyncio
import contextlib
import time

HEALTH_PREFIX = "/grpc.health.v1.Health/"


class ShutdownGate:
    """grpc.aio's stop() cancels every call that has reached the server but is not yet handed to a
    handler, and any that arrives before the client reads the GOAWAY: those clients see CANCELLED,
    which they do not retry. So the port is closed only once in-flight calls are done and no call has
    arrived for QUIET_SECONDS; until then new calls get a clean, retryable UNAVAILABLE (the refusal is
    the call pipeline's, see pipeline.py). Lives on the server's loop: every method is called from it.
    """

    QUIET_SECONDS = 0.1

    def __init__(self) -> None:
        self.closed = False
        self._active = 0
        self._last_arrival = time.monotonic()
        self._changed: asyncio.Event | None = None

    def close(self) -> None:
        self.closed = True

    def arrived(self, counted: bool) -> None:
        """A call started; ``counted`` ones run until ``left`` (health calls are not counted)."""
        self._last_arrival = time.monotonic()
        if counted:
            self._active += 1

    def left(self) -> None:
        self._active -= 1
        if self._active == 0 and self._changed is not None:
            self._changed.set()

    def _event(self) -> asyncio.Event:
        if self._changed is None:
            self._changed = asyncio.Event()
        return self._changed

    async def wait_quiet(self, timeout: float) -> bool:
        """Until nothing runs and nothing arrived for QUIET_SECONDS; False when ``timeout`` ran out first."""
        deadline = time.monotonic() + timeout
        while True:
            now = time.monotonic()
            if now >= deadline:
                return False
            if self._active == 0:
                quiet_for = now - self._last_arrival
                if quiet_for >= self.QUIET_SECONDS:
                    return True
                wait = self.QUIET_SECONDS - quiet_for
            else:
                wait = deadline - now
            event = self._event()
            event.clear()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(event.wait(), min(wait, deadline - now))
