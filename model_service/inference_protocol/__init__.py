"""The model service speaking the Open Inference Protocol (KServe V2) over gRPC: inference.GRPCInferenceService.

Triton, KServe and MLServer clients (tritonclient, perf_analyzer, KServe SDKs) work against it unchanged.
"""

from __future__ import annotations

import grpc

from model_service.inference_protocol.oip_servicer import InferenceProtocolServicer, add_servicer
from model_service.model_registry import ServedModels


def add_inference_protocol(server: grpc.aio.Server, models: ServedModels) -> list[str]:
    """Serve the protocol from ``models`` on ``server``; returns the full service names (health, reflection)."""
    return [add_servicer(InferenceProtocolServicer(models), server)]


__all__ = ["InferenceProtocolServicer", "add_inference_protocol"]
