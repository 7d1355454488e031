"""Open Inference Protocol (KServe V2) gRPC contract: package ``inference``, service GRPCInferenceService.

``grpc_service_pb2`` is loaded into a descriptor pool of its own instead of protobuf's process-wide default
pool. tritonclient, MLServer and the KServe SDK each register the same ``inference.*`` symbols in the
default pool, so with stock generated code whichever is imported second dies with "duplicate symbol
'inference.ServerLiveRequest'" (triton-inference-server/client#730, kserve/kserve#3099). With a private
pool our code and theirs share a process (our tests drive the model service with tritonclient in-process).
The wire format is unaffected: gRPC routes by method path and protobuf encodes field numbers, not names.

The module is built here, before the import system would execute the generated file: the serialized
descriptor is read out of the generated source (which `make protos` keeps current) and its message classes
are made in the private pool. ``from protos.inference import grpc_service_pb2`` and the generated
``grpc_service_pb2_grpc`` (which imports it that way) then work as usual. Server reflection, which looks
symbols up in the default pool, lists the service but cannot describe it.
"""

from __future__ import annotations

import ast
import sys
import types
from pathlib import Path
from typing import TYPE_CHECKING

from google.protobuf import descriptor_pool, message_factory

GENERATED_SOURCE = Path(__file__).with_name("grpc_service_pb2.py")


def serialized_file_descriptor(source: Path = GENERATED_SOURCE) -> bytes:
    """The serialized FileDescriptorProto a protoc-generated *_pb2.py embeds, found without executing it."""
    for node in ast.walk(ast.parse(source.read_text(encoding="utf-8"))):
        if (
            isinstance(node, ast.Call)
            and isinstance(node.func, ast.Attribute)
            and node.func.attr == "AddSerializedFile"
            and node.args
            and isinstance(node.args[0], ast.Constant)
            and isinstance(node.args[0].value, bytes)
        ):
            return node.args[0].value
    raise ImportError(f"no serialized descriptor in {source}; run `make protos`")


def _private_module(name: str, source: Path) -> types.ModuleType:
    pool = descriptor_pool.DescriptorPool()
    file = pool.AddSerializedFile(serialized_file_descriptor(source))
    module = types.ModuleType(name, f"Generated messages of {file.name}, in a private descriptor pool.")
    module.__file__ = str(source)
    module.DESCRIPTOR = file  # type: ignore[attr-defined]
    for message_name, message in file.message_types_by_name.items():
        setattr(module, message_name, message_factory.GetMessageClass(message))
    return module


if not TYPE_CHECKING:  # type checkers read grpc_service_pb2.pyi
    grpc_service_pb2 = _private_module(f"{__name__}.grpc_service_pb2", GENERATED_SOURCE)
    sys.modules[grpc_service_pb2.__name__] = grpc_service_pb2
