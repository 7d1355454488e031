"""The DatasetService gRPC servicer: chunks in, checked and written by upload.py, metadata out."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator

import grpc

from model_service.datasets import dataset_messages
from model_service.datasets.dataset_store import NEEDS_A_DIRECTORY, DatasetStore
from model_service.datasets.upload import DatasetUpload
from protos.lstm_stack.v1 import dataset_pb2, dataset_pb2_grpc
from service_common.errors import FailedPrecondition, InvalidArgument
from service_common.grpc_errors import map_errors
from service_common.handlers import confirm_client_is_there


class DatasetServicer(dataset_pb2_grpc.DatasetServiceServicer):
    def __init__(self, store: DatasetStore | None) -> None:
        self._opened = store

    @property
    def _store(self) -> DatasetStore:
        if self._opened is None:
            raise FailedPrecondition(NEEDS_A_DIRECTORY)
        return self._opened

    @map_errors
    async def Upload(
        self, request_iterator: AsyncIterator[dataset_pb2.DatasetChunk], context: grpc.aio.ServicerContext
    ) -> dataset_pb2.DatasetInfo:
        # One chunk in memory at a time: each is checked and written as a part before the next is read.
        # A client that cancels or goes away cancels this coroutine; the finally removes what was written.
        upload: DatasetUpload | None = None
        finished = False
        # The chunk being written runs on to its end even when the call is cancelled (shielded), and
        # the clean-up waits for it: nothing writes into the draft once it is being removed.
        pending: asyncio.Future[None] | None = None
        index = -1
        try:
            async for chunk in request_iterator:
                index += 1
                if upload is None:
                    if not chunk.HasField("header"):
                        raise InvalidArgument("the first chunk must carry the header (kind, columns)")
                    header = chunk.header
                    upload = await asyncio.to_thread(
                        DatasetUpload,
                        self._store,
                        dataset_messages.kind_from_proto(header.kind),
                        list(header.columns),
                    )
                elif chunk.HasField("header"):
                    raise InvalidArgument(f"chunk {index} carries a header; only the first chunk may")
                pending = asyncio.ensure_future(asyncio.to_thread(self._add, upload, chunk, index))
                await asyncio.shield(pending)
            if upload is None:
                raise InvalidArgument("Upload received no chunks; the first chunk must carry the header")
            # grpc.aio ends a cancelled request stream as if it were complete: commit only once the
            # client is known to be there.
            await confirm_client_is_there(context)
            meta = await asyncio.to_thread(upload.finish)
            finished = True
            return dataset_messages.info_to_proto(meta)
        finally:
            if upload is not None and not finished:
                await asyncio.shield(self._abort(upload, pending))

    @staticmethod
    async def _abort(upload: DatasetUpload, pending: asyncio.Future[None] | None) -> None:
        if pending is not None:
            with contextlib.suppress(BaseException):  # its error, if any, was the call's already
                await pending
        await asyncio.to_thread(upload.abort)

    @staticmethod
    def _add(upload: DatasetUpload, chunk: dataset_pb2.DatasetChunk, index: int) -> None:
        upload.add(dataset_messages.chunk_arrays(chunk, index), index)

    @map_errors
    async def GetDataset(
        self, request: dataset_pb2.GetDatasetRequest, context: grpc.aio.ServicerContext
    ) -> dataset_pb2.DatasetInfo:
        return dataset_messages.info_to_proto(await asyncio.to_thread(self._store.get, request.dataset_id))

    @map_errors
    async def ListDatasets(
        self, request: dataset_pb2.ListDatasetsRequest, context: grpc.aio.ServicerContext
    ) -> dataset_pb2.ListDatasetsResponse:
        page, token = await asyncio.to_thread(self._store.list, request.page_size, request.page_token)
        return dataset_pb2.ListDatasetsResponse(
            datasets=[dataset_messages.info_to_proto(meta) for meta in page], next_page_token=token
        )

    @map_errors
    async def DeleteDataset(
        self, request: dataset_pb2.DeleteDatasetRequest, context: grpc.aio.ServicerContext
    ) -> dataset_pb2.DeleteDatasetResponse:
        await asyncio.to_thread(self._store.delete, request.dataset_id)
        return dataset_pb2.DeleteDatasetResponse(dataset_id=request.dataset_id)
