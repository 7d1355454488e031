"""A serving process's way to its instance's trainer process over a unix socket: it forwards Train
streams, imports, SavedModel exports, and asks for the serving graph of a version stored without one.

Under a supervisor, every worker connects to the trainer the supervisor runs (``trainer_address``). A
single-process server owns a trainer of its own: started on the first Train (servers that never train
never pay for a second TensorFlow process), started again if it died or recycled itself, stopped with
the server. The trainer's statuses reach the client unchanged; a trainer that dies mid-job ends the
stream UNAVAILABLE, and the scalers that job had fitted are deleted from here (the trainer could not).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import shutil
import signal
import tempfile
import threading
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path
from typing import Any

import grpc

from model_service import model_messages
from model_service.settings import TRAINER_FACTORY, TRAINER_SOCKET_NAME, ModelSettings, trainer_settings
from protos.lstm_stack.v1 import model_pb2, model_pb2_grpc
from service_common.errors import ServiceError, Unavailable
from service_common.grpc_errors import ERROR_BY_STATUS
from service_common.server import server_options
from service_common.supervisor import child_main, spawn_context

log = logging.getLogger(__name__)


class TrainerProcess:
    """One trainer child process on a unix socket in a private directory; started on demand."""

    def __init__(self, settings: ModelSettings) -> None:
        self._dir = Path(tempfile.mkdtemp(prefix="lstm-trainer-"))  # 0700: only this user reaches it
        self.address = f"unix:{self._dir / TRAINER_SOCKET_NAME}"
        self._settings = trainer_settings(settings, str(self._dir / TRAINER_SOCKET_NAME))
        self._process: Any = None
        self._lock = threading.Lock()

    @property
    def pid(self) -> int | None:
        return self._process.pid if self._process is not None and self._process.is_alive() else None

    def ensure_running(self) -> None:
        with self._lock:
            if self._process is not None and self._process.is_alive():
                return
            if self._process is not None:
                log.warning(
                    "trainer process %d exited (%s); starting a new one",
                    self._process.pid,
                    self._process.exitcode,
                )
            parent, child = spawn_context.Pipe(duplex=False)
            self._process = spawn_context.Process(
                target=child_main,
                args=(TRAINER_FACTORY, self._settings, child, "model service trainer"),
                name="model-service-trainer",
            )
            self._process.start()
            child.close()
            parent.close()  # readiness is seen through the channel, not the pipe

    def stop(self, timeout: float = 30.0) -> None:
        with self._lock:
            process, self._process = self._process, None
        if process is not None and process.is_alive():
            with contextlib.suppress(ProcessLookupError):
                os.kill(process.pid, signal.SIGTERM)
            process.join(timeout)
            if process.is_alive():
                process.kill()
                process.join(5)
        shutil.rmtree(self._dir, ignore_errors=True)


class TrainerLink:
    def __init__(
        self, settings: ModelSettings, on_abandoned: Callable[[model_pb2.TrainStarted], None]
    ) -> None:
        self._owned = None if settings.trainer_address else TrainerProcess(settings)
        self.address = settings.trainer_address or self._owned.address  # type: ignore[union-attr]
        self._start_timeout = settings.trainer_start_timeout_seconds
        self._options = server_options(settings)[:2]  # the message size limits
        self._on_abandoned = on_abandoned
        self._channel: grpc.aio.Channel | None = None
        self._loop: asyncio.AbstractEventLoop | None = None

    @property
    def trainer_pid(self) -> int | None:
        """The owned trainer's pid while it runs (None under a supervisor or when not started)."""
        return self._owned.pid if self._owned is not None else None

    async def _ready_stub(self) -> model_pb2_grpc.ModelServiceStub:
        if self._owned is not None:
            await asyncio.to_thread(self._owned.ensure_running)
        if self._channel is None:
            self._loop = asyncio.get_running_loop()
            self._channel = grpc.aio.insecure_channel(self.address, options=self._options)
        try:
            await asyncio.wait_for(self._channel.channel_ready(), self._start_timeout)
        except TimeoutError:
            raise Unavailable(
                f"the trainer process at {self.address} did not come up within {self._start_timeout:.0f}s; "
                "retry later"
            ) from None
        return model_pb2_grpc.ModelServiceStub(self._channel)

    async def train(
        self, request: model_pb2.TrainRequest, timeout: float | None
    ) -> AsyncIterator[model_pb2.TrainEvent]:
        """The trainer's events for ``request``; its error statuses as the matching ServiceError."""
        stub = await self._ready_stub()
        call = stub.Train(request, timeout=timeout)
        started: model_pb2.TrainStarted | None = None
        try:
            async for event in call:
                if event.HasField("started"):
                    started = event.started
                yield event
        except grpc.aio.AioRpcError as exc:
            raise self._error(exc, started) from None
        finally:
            call.cancel()  # a no-op once the call ended; stops the job when the client went away

    async def import_model(
        self, header: model_pb2.ImportHeader, data: bytes, timeout: float | None
    ) -> model_pb2.ModelInfo:
        """The archive checked, converted and committed by the trainer; its ModelInfo."""
        stub = await self._ready_stub()

        def chunks() -> Iterator[model_pb2.ImportModelChunk]:
            yield model_pb2.ImportModelChunk(header=header)
            view = memoryview(data)
            for start in range(0, len(view), model_messages.EXPORT_CHUNK_BYTES):
                yield model_pb2.ImportModelChunk(
                    data=bytes(view[start : start + model_messages.EXPORT_CHUNK_BYTES])
                )

        try:
            info: model_pb2.ModelInfo = await stub.ImportModel(chunks(), timeout=timeout)
        except grpc.aio.AioRpcError as exc:
            raise self._error(exc, None) from None
        return info

    async def export(
        self, request: model_pb2.ExportModelRequest, timeout: float | None
    ) -> AsyncIterator[model_pb2.ExportModelChunk]:
        """The trainer's ExportModel stream for a stored version (its number resolved)."""
        stub = await self._ready_stub()
        call = stub.ExportModel(request, timeout=timeout)
        try:
            async for chunk in call:
                yield chunk
        except grpc.aio.AioRpcError as exc:
            raise self._error(exc, None) from None
        finally:
            call.cancel()

    def make_graph(self, model_id: str, version: int) -> None:
        """Blocking (from a worker thread): the trainer makes and stores the serving graph of a version
        stored without one. A channel of its own: this runs off the event loop, once per such version."""
        if self._owned is not None:
            self._owned.ensure_running()
        request = model_pb2.ExportModelRequest(
            model_id=model_id, version=version, format=model_pb2.EXPORT_ONNX
        )
        with grpc.insecure_channel(self.address, options=self._options) as channel:
            try:
                grpc.channel_ready_future(channel).result(timeout=self._start_timeout)
            except grpc.FutureTimeoutError:
                raise Unavailable(
                    f"the trainer process at {self.address} did not come up within "
                    f"{self._start_timeout:.0f}s to make the serving graph of {model_id} v{version}; retry"
                ) from None
            try:
                for _ in model_pb2_grpc.ModelServiceStub(channel).ExportModel(
                    request, timeout=self._start_timeout
                ):
                    pass
            except grpc.RpcError as exc:
                kind = ERROR_BY_STATUS.get(exc.code(), Unavailable)
                raise kind(f"making the serving graph of {model_id} v{version}: {exc.details()}") from None

    def _error(self, exc: grpc.aio.AioRpcError, started: model_pb2.TrainStarted | None) -> ServiceError:
        code, details = exc.code(), exc.details() or ""
        if code == grpc.StatusCode.UNAVAILABLE:
            # The trainer went away (killed, or the machine ran out of memory): it cleaned nothing up.
            if started is not None:
                self._on_abandoned(started)
            return Unavailable(
                f"the trainer process ended before the job finished ({details}); nothing was saved, retry"
            )
        if code == grpc.StatusCode.DEADLINE_EXCEEDED:
            return ERROR_BY_STATUS[code](f"the Train deadline passed; nothing was saved ({details})")
        kind = ERROR_BY_STATUS.get(code, Unavailable)
        return kind(details)

    def close(self) -> None:
        if self._channel is not None and self._loop is not None and self._loop.is_running():
            with contextlib.suppress(Exception):
                asyncio.run_coroutine_threadsafe(self._channel.close(), self._loop).result(5)
        if self._owned is not None:
            self._owned.stop()
