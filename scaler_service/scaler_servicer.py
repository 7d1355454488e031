"""The ScalerService gRPC servicer: proto in, domain call, proto out. No scaling logic lives here."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable

import grpc

from protos.lstm_stack.v1 import scaler_pb2, scaler_pb2_grpc
from scaler_service import sklearn_scalers
from scaler_service.scaler_messages import (
    check_reply_size,
    decode_data,
    encode_like,
    info_to_proto,
    reply_dtype,
    spec_from_proto,
)
from scaler_service.scaler_registry import ScalerRegistry
from service_common import codec
from service_common.artifacts import validate_id
from service_common.errors import InvalidArgument, echo
from service_common.grpc_errors import map_errors
from service_common.handlers import confirm_client_is_there


def _optional_id(scaler_id: str) -> str:
    return validate_id(scaler_id, "scaler") if scaler_id else ""


class ScalerServicer(scaler_pb2_grpc.ScalerServiceServicer):
    def __init__(
        self,
        registry: ScalerRegistry,
        max_message_bytes: int,
        observe_rows: Callable[[str, int], None] | None = None,
    ) -> None:
        self._registry = registry
        self._max_message_bytes = max_message_bytes
        self._observe_rows = observe_rows or (lambda operation, rows: None)

    # Every method hands its work (decoding, sklearn, the signed write) to the executor: none of it
    # may hold the event loop. The *_sync bodies are the domain calls, unchanged.

    @map_errors
    async def Fit(
        self, request: scaler_pb2.FitRequest, context: grpc.aio.ServicerContext
    ) -> scaler_pb2.ScalerInfo:
        return await asyncio.to_thread(self._fit_sync, request)

    def _fit_sync(self, request: scaler_pb2.FitRequest) -> scaler_pb2.ScalerInfo:
        spec = spec_from_proto(request.spec)
        scaler_id = _optional_id(request.scaler_id)
        data = decode_data(request, "data")
        fitted = sklearn_scalers.fit(spec, data)
        self._observe_rows("fit", len(data))  # counted once the data proved valid
        return info_to_proto(self._registry.add(scaler_id, fitted))

    @map_errors
    async def FitStream(
        self, request_iterator: AsyncIterator[scaler_pb2.FitChunk], context: grpc.aio.ServicerContext
    ) -> scaler_pb2.ScalerInfo:
        # Waiting for the next chunk holds no thread; a client that cancels or goes away cancels this
        # coroutine (CancelledError passes through: nothing was stored, no number was reserved).
        stream: sklearn_scalers.StreamingFit | None = None
        scaler_id = ""
        index = -1
        async for chunk in request_iterator:
            index += 1
            if stream is None:
                spec = spec_from_proto(chunk.spec)
                scaler_id = _optional_id(chunk.scaler_id)
                stream = sklearn_scalers.StreamingFit(spec)
            if chunk.HasField("data"):
                await asyncio.to_thread(self._add_chunk, stream, chunk, f"chunk {index} data")
        if stream is None:
            raise InvalidArgument("FitStream received no chunks; the first chunk must carry the spec")
        fitted = stream.finish()
        # A client that cancels ends the request stream just as one that is done does; only the
        # cancellation that follows tells them apart. Stored only once the client is known to be there.
        await confirm_client_is_there(context)
        return info_to_proto(await asyncio.to_thread(self._registry.add, scaler_id, fitted))

    def _add_chunk(self, stream: sklearn_scalers.StreamingFit, chunk: scaler_pb2.FitChunk, name: str) -> None:
        rows = codec.to_float_array(chunk.data, name)
        stream.add(rows, name)
        self._observe_rows("fit_stream", len(rows))

    @map_errors
    async def FitTransform(
        self, request: scaler_pb2.FitTransformRequest, context: grpc.aio.ServicerContext
    ) -> scaler_pb2.FitTransformResponse:
        return await asyncio.to_thread(self._fit_transform_sync, request)

    def _fit_transform_sync(self, request: scaler_pb2.FitTransformRequest) -> scaler_pb2.FitTransformResponse:
        spec = spec_from_proto(request.spec)
        scaler_id = _optional_id(request.scaler_id)
        train = decode_data(request, "train")
        others = {
            name: codec.to_float_array(t, f"others[{echo(name)}]") for name, t in request.others.items()
        }
        fitted = sklearn_scalers.fit(spec, train, "train")
        # Everything is transformed and size-checked before the version is stored, so a bad
        # `others` entry leaves no orphan version behind.
        train_out = fitted.transform(train, "train")
        self._observe_rows("fit_transform", len(train))
        others_out = {name: fitted.transform(data, f"others[{echo(name)}]") for name, data in others.items()}
        check_reply_size(
            [(train_out, reply_dtype(request.train))]
            + [(others_out[name], reply_dtype(request.others[name])) for name in others_out],
            self._max_message_bytes,
        )
        record = self._registry.add(scaler_id, fitted)
        return scaler_pb2.FitTransformResponse(
            scaler=info_to_proto(record),
            train=encode_like(train_out, request.train),
            others={name: encode_like(out, request.others[name]) for name, out in others_out.items()},
        )

    def _apply(self, request: scaler_pb2.TransformRequest, inverse: bool) -> scaler_pb2.TransformResponse:
        record = self._registry.get(request.scaler_id, request.version)
        data = decode_data(request, "data")
        fitted = record.fitted
        out = fitted.inverse_transform(data) if inverse else fitted.transform(data)
        self._observe_rows("inverse_transform" if inverse else "transform", len(data))
        check_reply_size([(out, reply_dtype(request.data))], self._max_message_bytes)
        return scaler_pb2.TransformResponse(
            scaler_id=record.scaler_id, version=record.version, data=encode_like(out, request.data)
        )

    @map_errors
    async def Transform(
        self, request: scaler_pb2.TransformRequest, context: grpc.aio.ServicerContext
    ) -> scaler_pb2.TransformResponse:
        return await asyncio.to_thread(self._apply, request, False)

    @map_errors
    async def InverseTransform(
        self, request: scaler_pb2.TransformRequest, context: grpc.aio.ServicerContext
    ) -> scaler_pb2.TransformResponse:
        return await asyncio.to_thread(self._apply, request, True)

    @map_errors
    async def GetScaler(
        self, request: scaler_pb2.GetScalerRequest, context: grpc.aio.ServicerContext
    ) -> scaler_pb2.ScalerInfo:
        return info_to_proto(self._registry.get(request.scaler_id, request.version))

    @map_errors
    async def ListScalers(
        self, request: scaler_pb2.ListScalersRequest, context: grpc.aio.ServicerContext
    ) -> scaler_pb2.ListScalersResponse:
        page, next_token = self._registry.list(request.scaler_id, request.page_size, request.page_token)
        return scaler_pb2.ListScalersResponse(
            scalers=[info_to_proto(record) for record in page], next_page_token=next_token
        )

    @map_errors
    async def DeleteScaler(
        self, request: scaler_pb2.DeleteScalerRequest, context: grpc.aio.ServicerContext
    ) -> scaler_pb2.DeleteScalerResponse:
        deleted = await asyncio.to_thread(self._registry.delete, request.scaler_id, request.version)
        return scaler_pb2.DeleteScalerResponse(deleted_versions=deleted)
