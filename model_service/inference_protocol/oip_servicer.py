"""gRPC servicer for inference.GRPCInferenceService: protocol messages <-> protocol.py, nothing more."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator
from typing import Any

import grpc

from model_service.inference_protocol import protocol
from model_service.inference_protocol.statistics import InferenceStatistics
from model_service.model_registry import ServedModels
from protos.inference import grpc_service_pb2 as pb
from protos.inference import grpc_service_pb2_grpc
from service_common.errors import ServiceError
from service_common.grpc_errors import map_errors

log = logging.getLogger(__name__)


class InferenceProtocolServicer(grpc_service_pb2_grpc.GRPCInferenceServiceServicer):
    def __init__(self, models: ServedModels) -> None:
        self._models = models
        self._statistics = InferenceStatistics()
        self._server_metadata = pb.ServerMetadataResponse(
            name=protocol.SERVER_NAME, version=protocol.server_version(), extensions=protocol.EXTENSIONS
        )

    @map_errors
    async def ServerLive(self, request: Any, context: grpc.aio.ServicerContext) -> Any:
        return pb.ServerLiveResponse(live=True)

    @map_errors
    async def ServerReady(self, request: Any, context: grpc.aio.ServicerContext) -> Any:
        # This service answers only once the server started; readiness of single models is ModelReady.
        return pb.ServerReadyResponse(ready=True)

    @map_errors
    async def ModelReady(self, request: Any, context: grpc.aio.ServicerContext) -> Any:
        return pb.ModelReadyResponse(ready=protocol.is_ready(self._models, request.name, request.version))

    @map_errors
    async def ServerMetadata(self, request: Any, context: grpc.aio.ServicerContext) -> Any:
        return self._server_metadata

    @map_errors
    async def ModelMetadata(self, request: Any, context: grpc.aio.ServicerContext) -> Any:
        return protocol.model_metadata(self._models, request)

    @map_errors
    async def ModelInfer(self, request: Any, context: grpc.aio.ServicerContext) -> Any:
        return await protocol.infer(self._models, request, self._statistics)

    @map_errors
    async def ModelStreamInfer(
        self, requests: AsyncIterator[Any], context: grpc.aio.ServicerContext
    ) -> AsyncIterator[Any]:
        # As Triton does: a failed request is reported in-stream and the stream stays open. A client
        # that cancels ends the loop with CancelledError, which passes through (counted as CANCELLED).
        async for request in requests:
            try:
                yield pb.ModelStreamInferResponse(
                    infer_response=await protocol.infer(self._models, request, self._statistics)
                )
            except ServiceError as exc:
                yield _stream_error(request, str(exc))
            except Exception as exc:  # noqa: BLE001 - one bad request must not end the stream
                log.exception("stream inference failed")
                yield _stream_error(request, f"internal error: {type(exc).__name__}: {exc}")

    @map_errors
    async def ModelConfig(self, request: Any, context: grpc.aio.ServicerContext) -> Any:
        return protocol.model_config(self._models, request)

    @map_errors
    async def ModelStatistics(self, request: Any, context: grpc.aio.ServicerContext) -> Any:
        return protocol.model_statistics(self._models, request, self._statistics)

    @map_errors
    async def RepositoryIndex(self, request: Any, context: grpc.aio.ServicerContext) -> Any:
        return protocol.repository_index(self._models, request)

    @map_errors
    async def RepositoryModelLoad(self, request: Any, context: grpc.aio.ServicerContext) -> Any:
        # Reads, verifies and traces models: blocking work, off the loop.
        return await asyncio.to_thread(protocol.load, self._models, request)

    @map_errors
    async def RepositoryModelUnload(self, request: Any, context: grpc.aio.ServicerContext) -> Any:
        return await asyncio.to_thread(protocol.unload, self._models, request)


def _stream_error(request: Any, message: str) -> Any:
    # Echo name/version/id so a client with several requests in flight can tell which one failed.
    return pb.ModelStreamInferResponse(
        error_message=message,
        infer_response=pb.ModelInferResponse(
            model_name=request.model_name, model_version=request.model_version, id=request.id
        ),
    )


SERVICE_NAME = pb.DESCRIPTOR.services_by_name["GRPCInferenceService"].full_name


def add_servicer(servicer: InferenceProtocolServicer, server: grpc.aio.Server) -> str:
    grpc_service_pb2_grpc.add_GRPCInferenceServiceServicer_to_server(servicer, server)
    return SERVICE_NAME
