"""A tiny raw-bytes service for exercising the shared server bootstrap without either real service."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import AsyncIterator
from typing import Any

import grpc

SERVICE = "lstm_stack.test.Echo"
SAY = f"/{SERVICE}/Say"
REPEAT = f"/{SERVICE}/Repeat"
FAIL = f"/{SERVICE}/Fail"
COLLECT = f"/{SERVICE}/Collect"
SLOW = f"/{SERVICE}/Slow"


class EchoService:
    """Say echoes, Repeat streams the request back three times, Fail aborts with INVALID_ARGUMENT,
    Collect joins a request stream, Slow answers once ``release`` is set. ``calls`` counts how often any
    handler body actually ran."""

    def __init__(self) -> None:
        self.calls = 0
        self._lock = threading.Lock()
        self.release = threading.Event()
        self.slow_started = threading.Event()

    def _ran(self) -> None:
        with self._lock:
            self.calls += 1

    async def say(self, request: bytes, _context: grpc.aio.ServicerContext) -> bytes:
        self._ran()
        return request

    async def repeat(self, request: bytes, _context: grpc.aio.ServicerContext) -> AsyncIterator[bytes]:
        self._ran()
        for _ in range(3):
            yield request

    async def fail(self, request: bytes, context: grpc.aio.ServicerContext) -> bytes:
        self._ran()
        await context.abort(grpc.StatusCode.INVALID_ARGUMENT, f"expected nothing, got {len(request)} bytes")
        return b""

    async def collect(self, requests: AsyncIterator[bytes], _context: grpc.aio.ServicerContext) -> bytes:
        self._ran()
        return b"".join([part async for part in requests])

    async def slow(self, request: bytes, _context: grpc.aio.ServicerContext) -> bytes:
        self._ran()
        self.slow_started.set()
        await asyncio.to_thread(self.release.wait, 30)
        return request

    def register(self, server: grpc.aio.Server) -> list[str]:
        handlers: dict[str, Any] = {
            "Say": grpc.unary_unary_rpc_method_handler(self.say),
            "Repeat": grpc.unary_stream_rpc_method_handler(self.repeat),
            "Fail": grpc.unary_unary_rpc_method_handler(self.fail),
            "Collect": grpc.stream_unary_rpc_method_handler(self.collect),
            "Slow": grpc.unary_unary_rpc_method_handler(self.slow),
        }
        server.add_generic_rpc_handlers((grpc.method_handlers_generic_handler(SERVICE, handlers),))
        return [SERVICE]


def say(channel: grpc.Channel, payload: bytes = b"hi", **kwargs: Any) -> bytes:
    return channel.unary_unary(SAY)(payload, timeout=10, **kwargs)


def repeat(channel: grpc.Channel, payload: bytes = b"hi", **kwargs: Any) -> list[bytes]:
    return list(channel.unary_stream(REPEAT)(payload, timeout=10, **kwargs))


def collect(channel: grpc.Channel, parts: list[bytes], **kwargs: Any) -> bytes:
    return channel.stream_unary(COLLECT)(iter(parts), timeout=10, **kwargs)


def fail(channel: grpc.Channel, payload: bytes = b"x", **kwargs: Any) -> bytes:
    return channel.unary_unary(FAIL)(payload, timeout=10, **kwargs)
