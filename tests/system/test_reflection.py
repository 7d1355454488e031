"""Server reflection describes every service each server lists, and its descriptors alone are enough to call
them, as grpcurl and other reflection-driven clients do: the real services, as processes.

Nothing here uses our generated code: request and response classes are made with message_factory from a
descriptor pool fed by the server's reflection service only.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import grpc
import pytest
from google.protobuf import descriptor_pool, json_format, message_factory
from grpc_reflection.v1alpha.proto_reflection_descriptor_database import ProtoReflectionDescriptorDatabase

from tests.system import workloads
from tests.system.procs import ServiceProcess


@dataclass
class Reflected:
    channel: grpc.Channel
    database: ProtoReflectionDescriptorDatabase
    pool: descriptor_pool.DescriptorPool

    @property
    def services(self) -> list[str]:
        return list(self.database.get_services())

    def call(self, service: str, method: str, request: dict[str, Any]) -> dict[str, Any]:
        """One call made from the reflected descriptors; request and response as proto3 JSON dicts."""
        rpc = self.pool.FindServiceByName(service).methods_by_name[method]
        request_class = message_factory.GetMessageClass(rpc.input_type)
        response_class = message_factory.GetMessageClass(rpc.output_type)
        message = json_format.ParseDict(request, request_class())
        path = f"/{service}/{method}"
        serializers = {
            "request_serializer": request_class.SerializeToString,
            "response_deserializer": response_class.FromString,
        }
        if rpc.client_streaming and rpc.server_streaming:
            (response,) = list(self.channel.stream_stream(path, **serializers)(iter([message]), timeout=30))
        else:
            assert not rpc.client_streaming and not rpc.server_streaming, f"{path}: pick a unary method"
            response = self.channel.unary_unary(path, **serializers)(message, timeout=30)
        assert response.DESCRIPTOR is rpc.output_type
        return json_format.MessageToDict(response, preserving_proto_field_name=True)


@pytest.fixture
def scaler(model_stack: tuple[ServiceProcess, ServiceProcess]) -> Iterator[Reflected]:
    with model_stack[0].channel() as channel:
        database = ProtoReflectionDescriptorDatabase(channel)
        yield Reflected(channel, database, descriptor_pool.DescriptorPool(database))


@pytest.fixture
def model(model_stack: tuple[ServiceProcess, ServiceProcess]) -> Iterator[Reflected]:
    with model_stack[1].channel() as channel:
        database = ProtoReflectionDescriptorDatabase(channel)
        yield Reflected(channel, database, descriptor_pool.DescriptorPool(database))


def describe_every_listed_service(reflected: Reflected) -> None:
    """What `grpcurl describe` needs for each service: its file, its methods and their message types."""
    for name in reflected.services:
        assert reflected.database.FindFileContainingSymbol(name).name.endswith(".proto"), name
        service = reflected.pool.FindServiceByName(name)
        assert service.full_name == name and service.methods, name
        for method in service.methods:
            for message in (method.input_type, method.output_type):
                assert reflected.pool.FindMessageTypeByName(message.full_name) is message, method.full_name
                for field in message.fields:  # nested and enum types resolved too
                    assert field.message_type is not None or field.type != field.TYPE_MESSAGE
                    assert field.enum_type is not None or field.type != field.TYPE_ENUM


def list_services(reflected: Reflected) -> list[str]:
    """ServerReflection itself, called from its reflected descriptor."""
    reply = reflected.call(
        "grpc.reflection.v1alpha.ServerReflection", "ServerReflectionInfo", {"list_services": ""}
    )
    return sorted(s["name"] for s in reply["list_services_response"]["service"])


def test_reflection_describes_and_calls_every_scaler_service(scaler: Reflected) -> None:
    listed = sorted(scaler.services)
    assert listed == [
        "grpc.health.v1.Health",
        "grpc.reflection.v1alpha.ServerReflection",
        "lstm_stack.v1.ScalerService",
    ]
    describe_every_listed_service(scaler)

    assert scaler.call("grpc.health.v1.Health", "Check", {"service": ""}) == {"status": "SERVING"}
    assert list_services(scaler) == listed
    fitted = scaler.call(
        "lstm_stack.v1.ScalerService",
        "Fit",
        {"scaler_id": "reflected", "spec": {"kind": "MINMAX"}, "data": {"shape": [2, 1], "values": [1, 3]}},
    )
    assert fitted["id"] == "reflected" and fitted["spec"]["kind"] == "MINMAX"
    assert (fitted["statistics"]["data_min"], fitted["statistics"]["data_max"]) == ([1.0], [3.0])


def test_reflection_describes_and_calls_every_model_service(model: Reflected) -> None:
    listed = sorted(model.services)
    assert listed == [
        "grpc.health.v1.Health",
        "grpc.reflection.v1alpha.ServerReflection",
        "inference.GRPCInferenceService",
        "lstm_stack.v1.DatasetService",
        "lstm_stack.v1.ModelService",
    ]
    describe_every_listed_service(model)
    inference = model.pool.FindServiceByName("inference.GRPCInferenceService")
    assert inference.methods_by_name["ModelConfig"].output_type.full_name == "inference.ModelConfigResponse"
    assert (
        inference.methods_by_name["ModelStatistics"].input_type.full_name
        == "inference.ModelStatisticsRequest"
    )

    assert model.call("grpc.health.v1.Health", "Check", {"service": "lstm_stack.v1.ModelService"}) == {
        "status": "SERVING"
    }
    assert list_services(model) == listed
    models = model.call("lstm_stack.v1.ModelService", "ListModels", {})["models"]
    assert workloads.BASE_MODEL in {m["id"] for m in models}
    metadata = model.call("inference.GRPCInferenceService", "ServerMetadata", {})
    assert metadata["name"] == "lstm-stack"
    assert metadata["extensions"] == ["model_repository", "statistics"]
