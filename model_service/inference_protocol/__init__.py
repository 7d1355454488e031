"""The model service speaking the Open Inference Protocol (KServe V2) over gRPC: inference.GRPCInferenceService.

Triton, KServe and MLServer clients (tritonclient, perf_analyzer, KServe SDKs) work against it unchanged.
"""

from __future__ import annotations

from typing import Any

import grpc

from model_service.inference_protocol.servicer import InferenceProtocolServicer, add_servicer


def add_inference_protocol(server: grpc.aio.Server, runtime: Any) -> list[str]:
    """Serve the protocol from ``runtime`` on ``server``; returns the full service names (health, reflection)."""
    return [add_servicer(InferenceProtocolServicer(runtime), server)]


__all__ = ["InferenceProtocolServicer", "add_inference_protocol"]
