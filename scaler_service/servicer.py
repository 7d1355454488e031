"""The ScalerService gRPC servicer: proto in, domain call, proto out. No scaling logic lives here."""

from __future__ import annotations

import itertools
from collections.abc import Callable, Iterator

import grpc

from protos.lstm_stack.v1 import scaler_pb2, scaler_pb2_grpc
from scaler_service import scaling
from scaler_service.convert import (
    check_reply_size,
    decode_data,
    encode_like,
    info_to_proto,
    reply_dtype,
    spec_from_proto,
)
from scaler_service.registry import ScalerRegistry
from service_common import codec
from service_common.artifacts import validate_id
from service_common.errors import Cancelled, InvalidArgument, echo
from service_common.grpc_errors import map_errors


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

    @map_errors
    def Fit(self, request: scaler_pb2.FitRequest, context: grpc.ServicerContext) -> scaler_pb2.ScalerInfo:
        spec = spec_from_proto(request.spec)
        scaler_id = _optional_id(request.scaler_id)
        data = decode_data(request, "data")
        fitted = scaling.fit(spec, data)
        self._observe_rows("fit", len(data))  # counted once the data proved valid
        return info_to_proto(self._registry.add(scaler_id, fitted))

    @map_errors
    def FitStream(
        self, request_iterator: Iterator[scaler_pb2.FitChunk], context: grpc.ServicerContext
    ) -> scaler_pb2.ScalerInfo:
        chunks = iter(request_iterator)
        try:
            first = next(chunks, None)
            if first is None:
                raise InvalidArgument("FitStream received no chunks; the first chunk must carry the spec")
            spec = spec_from_proto(first.spec)
            scaler_id = _optional_id(first.scaler_id)
            stream = scaling.StreamingFit(spec)
            for index, chunk in enumerate(itertools.chain([first], chunks)):
                if chunk.HasField("data"):
                    name = f"chunk {index} data"
                    rows = codec.to_float_array(chunk.data, name)
                    stream.add(rows, name)
                    self._observe_rows("fit_stream", len(rows))
        except grpc.RpcError as exc:
            # Reading the request stream fails this way when the client cancels or goes away.
            raise Cancelled("the client ended the stream before it was complete") from exc
        return info_to_proto(self._registry.add(scaler_id, stream.finish()))

    @map_errors
    def FitTransform(
        self, request: scaler_pb2.FitTransformRequest, context: grpc.ServicerContext
    ) -> scaler_pb2.FitTransformResponse:
        spec = spec_from_proto(request.spec)
        scaler_id = _optional_id(request.scaler_id)
        train = decode_data(request, "train")
        others = {
            name: codec.to_float_array(t, f"others[{echo(name)}]") for name, t in request.others.items()
        }
        fitted = scaling.fit(spec, train, "train")
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
    def Transform(
        self, request: scaler_pb2.TransformRequest, context: grpc.ServicerContext
    ) -> scaler_pb2.TransformResponse:
        return self._apply(request, inverse=False)

    @map_errors
    def InverseTransform(
        self, request: scaler_pb2.TransformRequest, context: grpc.ServicerContext
    ) -> scaler_pb2.TransformResponse:
        return self._apply(request, inverse=True)

    @map_errors
    def GetScaler(
        self, request: scaler_pb2.GetScalerRequest, context: grpc.ServicerContext
    ) -> scaler_pb2.ScalerInfo:
        return info_to_proto(self._registry.get(request.scaler_id, request.version))

    @map_errors
    def ListScalers(
        self, request: scaler_pb2.ListScalersRequest, context: grpc.ServicerContext
    ) -> scaler_pb2.ListScalersResponse:
        page, next_token = self._registry.list(request.scaler_id, request.page_size, request.page_token)
        return scaler_pb2.ListScalersResponse(
            scalers=[info_to_proto(record) for record in page], next_page_token=next_token
        )

    @map_errors
    def DeleteScaler(
        self, request: scaler_pb2.DeleteScalerRequest, context: grpc.ServicerContext
    ) -> scaler_pb2.DeleteScalerResponse:
        deleted = self._registry.delete(request.scaler_id, request.version)
        return scaler_pb2.DeleteScalerResponse(deleted_versions=deleted)
