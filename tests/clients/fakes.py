"""Scripted stand-ins for the two services, for transport behaviour (retries, deadlines, metadata, TLS).

The real services are exercised in test_client_services.py; these fakes make failures happen on cue.
"""

from __future__ import annotations

import threading
from collections import Counter
from concurrent import futures

import grpc
import numpy as np

from protos.lstm_stack.v1 import model_pb2, model_pb2_grpc, scaler_pb2, scaler_pb2_grpc
from service_common import codec
from service_common.channels import message_size_options

MAX_MESSAGE = 64 * 1024 * 1024


class Script:
    """Per-method behaviour: fail with ``code`` for the first ``failures`` calls; record what came in."""

    def __init__(self) -> None:
        self.calls: Counter[str] = Counter()
        self.failures: dict[str, tuple[grpc.StatusCode, int]] = {}
        self.messages: dict[str, str] = {}
        self.deadlines: dict[str, list[float]] = {}
        self.metadata: dict[str, list[tuple[tuple[str, str], ...]]] = {}
        self.requests: dict[str, list[object]] = {}
        self.release = threading.Event()
        self.train_cancelled = threading.Event()

    def fail(self, method: str, code: grpc.StatusCode, times: int = 10**6, message: str = "") -> None:
        self.failures[method] = (code, times)
        if message:
            self.messages[method] = message

    def enter(self, method: str, request: object, context: grpc.ServicerContext) -> None:
        self.calls[method] += 1
        self.deadlines.setdefault(method, []).append(context.time_remaining())
        self.metadata.setdefault(method, []).append(tuple(context.invocation_metadata()))
        self.requests.setdefault(method, []).append(request)
        code, times = self.failures.get(method, (None, 0))
        if code is not None and self.calls[method] <= times:
            context.abort(code, self.messages.get(method) or f"scripted {code.name} #{self.calls[method]}")


class FakeScaler(scaler_pb2_grpc.ScalerServiceServicer):
    def __init__(self, script: Script):
        self.script = script

    def Fit(self, request, context):  # noqa: N802 - gRPC method name
        self.script.enter("Fit", request, context)
        return scaler_pb2.ScalerInfo(id=request.scaler_id or "new", version=1, spec=request.spec)

    def Transform(self, request, context):  # noqa: N802
        self.script.enter("Transform", request, context)
        # Echo x * 2 so a round trip shows the bytes were decoded and re-encoded.
        data = codec.to_numpy(request.data) * 2
        return scaler_pb2.TransformResponse(
            scaler_id=request.scaler_id, version=1, data=codec.from_numpy(data)
        )

    def GetScaler(self, request, context):  # noqa: N802
        self.script.enter("GetScaler", request, context)
        if request.scaler_id == "slow":
            self.script.release.wait(10)
        return scaler_pb2.ScalerInfo(id=request.scaler_id, version=request.version or 3)

    def DeleteScaler(self, request, context):  # noqa: N802
        self.script.enter("DeleteScaler", request, context)
        return scaler_pb2.DeleteScalerResponse(deleted_versions=[1, 2])

    def ListScalers(self, request, context):  # noqa: N802
        self.script.enter("ListScalers", request, context)
        # Three pages of one scaler each, to check the client follows page tokens.
        page = int(request.page_token or "0")
        token = str(page + 1) if page < 2 else ""
        return scaler_pb2.ListScalersResponse(
            scalers=[scaler_pb2.ScalerInfo(id=f"s{page}", version=1)], next_page_token=token
        )


class FakeModel(model_pb2_grpc.ModelServiceServicer):
    def __init__(self, script: Script):
        self.script = script

    def Predict(self, request, context):  # noqa: N802
        self.script.enter("Predict", request, context)
        x = codec.to_numpy(request.x)
        values = x.reshape(len(x), -1).sum(axis=1, keepdims=True)
        return model_pb2.PredictResponse(
            model_id=request.model_id, version=1, values=codec.from_numpy(values)
        )

    def Train(self, request, context):  # noqa: N802
        self.script.enter("Train", request, context)
        try:
            yield model_pb2.TrainEvent(started=model_pb2.TrainStarted(model_id="m", version=1, n_train=3))
            for epoch in range(1, request.epochs + 1):
                if not context.is_active():
                    return
                yield model_pb2.TrainEvent(
                    epoch=model_pb2.EpochEvent(epoch=epoch, epochs=request.epochs, loss=1 / epoch)
                )
                if request.model_id == "slow":
                    # Waits until the client cancels (the callback fires) or the test releases it.
                    self.script.release.wait(0.05)
            if not context.is_active():
                return
            yield model_pb2.TrainEvent(done=model_pb2.ModelInfo(id="m", version=1, state=model_pb2.READY))
        finally:
            # Seen here or, when the cancel lands during a yield, when gRPC closes this generator.
            if not context.is_active():
                self.script.train_cancelled.set()


def start_fake(
    script: Script, *, credentials: grpc.ServerCredentials | None = None
) -> tuple[grpc.Server, str]:
    server = grpc.server(
        futures.ThreadPoolExecutor(max_workers=8),
        options=[
            *message_size_options(MAX_MESSAGE),
        ],
    )
    scaler_pb2_grpc.add_ScalerServiceServicer_to_server(FakeScaler(script), server)
    model_pb2_grpc.add_ModelServiceServicer_to_server(FakeModel(script), server)
    if credentials is None:
        port = server.add_insecure_port("127.0.0.1:0")
    else:
        port = server.add_secure_port("127.0.0.1:0", credentials)
    server.start()
    return server, f"127.0.0.1:{port}"


def as_array(tensor) -> np.ndarray:  # noqa: ANN001 - a proto Tensor
    return codec.to_numpy(tensor)
