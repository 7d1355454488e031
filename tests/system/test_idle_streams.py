"""Idle streams cost no thread on grpc.aio: a thousand of them open leave health and List answering."""

from __future__ import annotations

import asyncio
import time

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

from protos.inference import grpc_service_pb2_grpc as oip_grpc
from protos.lstm_stack.v1 import model_pb2, model_pb2_grpc, scaler_pb2, scaler_pb2_grpc
from tests.system.procs import ServiceProcess

IDLE_EACH = 500


async def _timed(call: object) -> float:
    started = time.perf_counter()
    await call  # type: ignore[misc]
    return time.perf_counter() - started


async def _with_idle_streams(model: ServiceProcess, scaler: ServiceProcess) -> dict[str, float]:
    async with (
        grpc.aio.insecure_channel(model.address) as to_model,
        grpc.aio.insecure_channel(scaler.address) as to_scaler,
    ):
        oip = oip_grpc.GRPCInferenceServiceStub(to_model)
        fits = scaler_pb2_grpc.ScalerServiceStub(to_scaler)
        # Opened and left waiting for their first message: ModelStreamInfer on the model service,
        # FitStream on the scaler service.
        streams = [oip.ModelStreamInfer() for _ in range(IDLE_EACH)]
        streams += [fits.FitStream() for _ in range(IDLE_EACH)]
        for stream in streams:
            await stream.wait_for_connection()
        try:
            timings = {}
            for name, channel in (("model", to_model), ("scaler", to_scaler)):
                health = health_pb2_grpc.HealthStub(channel)
                timings[f"{name} health"] = await _timed(
                    health.Check(health_pb2.HealthCheckRequest(), timeout=5)
                )
            timings["ListModels"] = await _timed(
                model_pb2_grpc.ModelServiceStub(to_model).ListModels(model_pb2.ListModelsRequest(), timeout=5)
            )
            timings["ListScalers"] = await _timed(
                fits.ListScalers(scaler_pb2.ListScalersRequest(), timeout=5)
            )
            # Every stream is still open (none was refused or timed out meanwhile).
            assert not any(stream.done() for stream in streams)
            return timings
        finally:
            for stream in streams:
                stream.cancel()


def test_a_thousand_idle_streams_leave_health_and_list_answering_within_a_second(
    model_stack: tuple[ServiceProcess, ServiceProcess],
) -> None:
    scaler, model = model_stack
    timings = asyncio.run(_with_idle_streams(model, scaler))
    assert set(timings) == {"model health", "scaler health", "ListModels", "ListScalers"}
    slow = {name: seconds for name, seconds in timings.items() if seconds >= 1.0}
    assert slow == {}, f"answered in over a second with {2 * IDLE_EACH} idle streams open: {slow}"
    # And the services are still fine once the streams are gone.
    assert model.health() == "SERVING" and scaler.health() == "SERVING"
