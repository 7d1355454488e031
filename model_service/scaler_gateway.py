"""The one place the model service talks to the scaler service: gRPC in here, domain types and errors out.

A scaler service that is down, slow or failing becomes ``Unavailable`` (the model service itself stays
up and answers UNAVAILABLE for that call); what the scaler service rejects as invalid stays
``InvalidArgument`` with its message, prefixed by which scaling it was.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator

import grpc
import numpy as np

from model_service.affine_scalers import PER_COLUMN, PER_FEATURE, AffineScaler, ScalerRef
from model_service.settings import ModelSettings
from protos.lstm_stack.v1 import scaler_pb2, scaler_pb2_grpc
from service_common import codec
from service_common.channels import open_channel
from service_common.errors import (
    FailedPrecondition,
    InvalidArgument,
    NotFound,
    ResourceExhausted,
    ServiceError,
    Unavailable,
)
from service_common.security import load_tokens

log = logging.getLogger(__name__)

_ERRORS: dict[grpc.StatusCode, type[ServiceError]] = {
    grpc.StatusCode.INVALID_ARGUMENT: InvalidArgument,
    grpc.StatusCode.FAILED_PRECONDITION: FailedPrecondition,
    grpc.StatusCode.NOT_FOUND: NotFound,
    grpc.StatusCode.RESOURCE_EXHAUSTED: ResourceExhausted,
}


def to_affine(info: scaler_pb2.ScalerInfo) -> AffineScaler:
    layout = PER_COLUMN if info.layout == scaler_pb2.PER_COLUMN else PER_FEATURE
    clip = None
    if info.spec.WhichOneof("params") == "minmax" and info.spec.minmax.clip:
        minmax = info.spec.minmax
        low = minmax.feature_min if minmax.HasField("feature_min") else 0.0
        high = minmax.feature_max if minmax.HasField("feature_max") else 1.0
        clip = (low, high)
    return AffineScaler(
        ScalerRef(info.id, info.version),
        layout,
        tuple(int(d) for d in info.sample_shape),
        np.asarray(info.affine.scale, dtype=np.float64),
        np.asarray(info.affine.offset, dtype=np.float64),
        clip,
    )


class ScalerGateway:
    """Implements scaling.ScalerFitter over gRPC."""

    def __init__(
        self,
        address: str,
        timeout_seconds: float,
        *,
        token: str = "",
        token_file: str = "",
        tls_ca: str = "",
        tls_cert: str = "",
        tls_key: str = "",
        tls_server_name: str = "",
        max_message_bytes: int = 64 * 1024 * 1024,
    ) -> None:
        if not address:
            raise ValueError("scaler_address is required (host:port of the scaler service)")
        self.address = address
        self.timeout_seconds = timeout_seconds
        tokens = load_tokens(token, token_file)
        self._channel = open_channel(
            address,
            token=tokens[0] if tokens else "",
            tls_root_cert=tls_ca or None,
            tls_client_cert=tls_cert or None,
            tls_client_key=tls_key or None,
            tls_server_name=tls_server_name,
            max_message_bytes=max_message_bytes,
        )
        self._stub = scaler_pb2_grpc.ScalerServiceStub(self._channel)

    @classmethod
    def from_settings(cls, settings: ModelSettings) -> ScalerGateway:
        """The gateway the model service's settings describe (address, timeout, token, TLS, limits)."""
        return cls(
            settings.scaler_address,
            settings.scaler_timeout_seconds,
            token=settings.scaler_token,
            token_file=settings.scaler_token_file,
            tls_ca=settings.scaler_tls_ca,
            tls_cert=settings.scaler_tls_cert,
            tls_key=settings.scaler_tls_key,
            tls_server_name=settings.scaler_tls_server_name,
            max_message_bytes=settings.max_message_bytes,
        )

    def close(self) -> None:
        self._channel.close()

    def _error(self, exc: grpc.RpcError, what: str) -> ServiceError:
        code = exc.code() if hasattr(exc, "code") else None
        details = exc.details() if hasattr(exc, "details") else str(exc)
        kind = _ERRORS.get(code) if code is not None else None
        if kind is not None:
            return kind(f"scaler service rejected {what}: {details}")
        name = code.name if code is not None else "no status"
        return Unavailable(f"scaler service at {self.address} is unavailable for {what} ({name}: {details})")

    def get(self, ref: ScalerRef) -> AffineScaler:
        """A fitted scaler version (0 = the latest) in affine form."""
        request = scaler_pb2.GetScalerRequest(scaler_id=ref.scaler_id, version=ref.version)
        try:
            info = self._stub.GetScaler(request, timeout=self.timeout_seconds)
        except grpc.RpcError as exc:
            raise self._error(exc, f"scaler {ref.scaler_id!r} v{ref.version}") from None
        return to_affine(info)

    def streams(self, spec: scaler_pb2.ScalerSpec) -> bool:
        # The scaler service's StreamingFit takes every kind with partial_fit: all but robust.
        return spec.kind != scaler_pb2.ROBUST

    def fit_stream(
        self, scaler_id: str, spec: scaler_pb2.ScalerSpec, chunks: Iterator[np.ndarray]
    ) -> AffineScaler:
        """FitStream: one message per chunk (the first carries id and spec), never the whole data.

        No deadline: the stream is as long as the training split; the job's cancel stops the chunks.
        """
        what = f"scaler {scaler_id!r} (streamed fit)"

        def requests() -> Iterator[scaler_pb2.FitChunk]:
            first = True
            for chunk in chunks:
                data = codec.from_numpy(np.ascontiguousarray(chunk, dtype=np.float64))
                if first:
                    yield scaler_pb2.FitChunk(scaler_id=scaler_id, spec=spec, data=data)
                    first = False
                else:
                    yield scaler_pb2.FitChunk(data=data)
            if first:
                yield scaler_pb2.FitChunk(scaler_id=scaler_id, spec=spec)

        try:
            info = self._stub.FitStream(requests())
        except grpc.RpcError as exc:
            raise self._error(exc, what) from None
        return to_affine(info)

    def fit(self, scaler_id: str, spec: scaler_pb2.ScalerSpec, data: np.ndarray) -> AffineScaler:
        request = scaler_pb2.FitRequest(
            scaler_id=scaler_id,
            spec=spec,
            data=codec.from_numpy(np.ascontiguousarray(data, dtype=np.float64)),
        )
        try:
            info = self._stub.Fit(request, timeout=self.timeout_seconds)
        except grpc.RpcError as exc:
            raise self._error(exc, f"scaler {scaler_id!r}") from None
        return to_affine(info)

    def delete(self, ref: ScalerRef) -> None:
        request = scaler_pb2.DeleteScalerRequest(scaler_id=ref.scaler_id, version=ref.version)
        try:
            self._stub.DeleteScaler(request, timeout=self.timeout_seconds)
        except grpc.RpcError as exc:
            raise self._error(exc, f"deleting scaler {ref.scaler_id!r} v{ref.version}") from None
