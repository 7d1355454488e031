"""Our Open Inference Protocol contract must be wire-identical to what tritonclient sends and expects.

tritonclient's serialized descriptors are the ground truth: for every message we define (nested ones
included) each field must have the same name, number, type, label, message type and oneof; every RPC we
declare must exist in Triton's GRPCInferenceService with the same request/response types and streaming.
tritonclient cannot be imported next to our contract (both register ``inference.*`` in the default
descriptor pool), so its descriptors and messages come from a child process as serialized bytes.
"""

from __future__ import annotations

import sys
from collections.abc import Iterable
from dataclasses import dataclass, field

import pytest
from google.protobuf import descriptor, descriptor_pb2, descriptor_pool

from protos.inference import grpc_service_pb2 as pb
from tests.tritonclient_process import b64, run_tritonclient, unb64

OURS = pb.DESCRIPTOR
FDP = descriptor_pb2.FieldDescriptorProto

# Messages we declare with fewer fields than Triton (the rest of its model_config.proto and of
# ModelStatistics is of no use to our models). Each is only ever sent by the server (no request reaches
# it, see test_partial_messages_are_never_part_of_a_request), so a field we leave out reads as unset.
PARTIAL_RESPONSES = {
    "inference.ModelConfig",
    "inference.ModelInput",
    "inference.ModelOutput",
    "inference.ModelStatistics",
}

TRITON_DESCRIPTORS = """
import base64
from google.protobuf import descriptor_pool
import tritonclient.grpc.model_config_pb2 as model_config_pb2
import tritonclient.grpc.service_pb2 as service_pb2
result = {
    "files": [base64.b64encode(m.DESCRIPTOR.serialized_pb).decode() for m in (service_pb2, model_config_pb2)],
    "default_pool_file": descriptor_pool.Default().FindMessageTypeByName("inference.ModelInferRequest").file.name,
}
"""


@dataclass
class TritonContract:
    """tritonclient's grpc_service.proto and model_config.proto, as FileDescriptorProtos."""

    files: list[descriptor_pb2.FileDescriptorProto]
    default_pool_file: str
    messages: dict[str, descriptor_pb2.DescriptorProto] = field(default_factory=dict)
    enums: dict[str, descriptor_pb2.EnumDescriptorProto] = field(default_factory=dict)

    def __post_init__(self) -> None:
        for file in self.files:
            assert file.package == "inference"
            self._collect("inference", file.message_type, file.enum_type)

    def _collect(
        self,
        prefix: str,
        messages: Iterable[descriptor_pb2.DescriptorProto],
        enums: Iterable[descriptor_pb2.EnumDescriptorProto],
    ) -> None:
        for enum in enums:
            self.enums[f"{prefix}.{enum.name}"] = enum
        for message in messages:
            name = f"{prefix}.{message.name}"
            self.messages[name] = message
            self._collect(name, message.nested_type, message.enum_type)

    @property
    def service(self) -> descriptor_pb2.ServiceDescriptorProto:
        (service,) = [s for f in self.files for s in f.service if s.name == "GRPCInferenceService"]
        return service


@pytest.fixture(scope="module")
def theirs() -> TritonContract:
    found = run_tritonclient(TRITON_DESCRIPTORS)
    files = [descriptor_pb2.FileDescriptorProto.FromString(unb64(f)) for f in found["files"]]
    return TritonContract(files, found["default_pool_file"])


def _all_messages(messages: list[descriptor.Descriptor]) -> list[descriptor.Descriptor]:
    found = []
    for message in messages:
        found.append(message)
        found.extend(_all_messages(list(message.nested_types)))
    return found


OUR_MESSAGES = _all_messages(list(OURS.message_types_by_name.values()))
OUR_ENUMS = [*OURS.enum_types_by_name.values(), *(e for m in OUR_MESSAGES for e in m.enum_types)]


def _field_signature(field: descriptor.FieldDescriptor) -> dict[str, object]:
    return {
        "name": field.name,
        "number": field.number,
        "type": field.type,
        "repeated": field.is_repeated,
        "message_type": field.message_type.full_name if field.message_type else None,
        "enum_type": field.enum_type.full_name if field.enum_type else None,
        "oneof": field.containing_oneof.name if field.containing_oneof else None,
    }


def _triton_field_signature(field: FDP, message: descriptor_pb2.DescriptorProto) -> dict[str, object]:
    """The same signature from a FieldDescriptorProto (its type numbers are FieldDescriptor's)."""
    referenced = field.type_name.removeprefix(".")
    return {
        "name": field.name,
        "number": field.number,
        "type": field.type,
        "repeated": field.label == FDP.LABEL_REPEATED,
        "message_type": referenced if field.type == FDP.TYPE_MESSAGE else None,
        "enum_type": referenced if field.type == FDP.TYPE_ENUM else None,
        "oneof": message.oneof_decl[field.oneof_index].name if field.HasField("oneof_index") else None,
    }


def _triton_message(theirs: TritonContract, full_name: str) -> descriptor_pb2.DescriptorProto:
    message = theirs.messages.get(full_name)
    assert message is not None, f"tritonclient has no message {full_name}"
    return message


def test_package_and_service_name_match_triton(theirs: TritonContract) -> None:
    assert OURS.package == "inference"
    assert {f.package for f in theirs.files} == {"inference"}
    assert OURS.services_by_name["GRPCInferenceService"].full_name == "inference.GRPCInferenceService"
    assert theirs.service.name == "GRPCInferenceService"


def test_we_define_the_messages_the_served_rpcs_need() -> None:
    names = {m.full_name for m in OUR_MESSAGES}
    assert "inference.ModelInferRequest.InferInputTensor" in names
    assert "inference.ModelStreamInferResponse" in names
    assert "inference.RepositoryIndexResponse.ModelIndex" in names
    assert {"inference.ModelConfig", "inference.InferStatistics", "inference.InferBatchStatistics"} <= names
    assert len(OUR_MESSAGES) >= 30


@pytest.mark.parametrize("ours", OUR_MESSAGES, ids=lambda m: m.full_name)
def test_message_fields_match_triton(theirs: TritonContract, ours: descriptor.Descriptor) -> None:
    their_message = _triton_message(theirs, ours.full_name)
    our_fields = {f.number: _field_signature(f) for f in ours.fields}
    their_fields = {f.number: _triton_field_signature(f, their_message) for f in their_message.field}
    their_oneofs = [o.name for o in their_message.oneof_decl]
    assert ours.GetOptions().map_entry == their_message.options.map_entry
    if ours.full_name in PARTIAL_RESPONSES:
        # Every field we declare is Triton's, same number and meaning.
        assert our_fields.items() <= their_fields.items()
        assert set(o.name for o in ours.oneofs) <= set(their_oneofs)
        return
    # Same fields with the same meaning; we may not drop any (a client sending it would be misread).
    assert our_fields == their_fields
    assert [o.name for o in ours.oneofs] == their_oneofs


def test_partial_messages_are_never_part_of_a_request() -> None:
    reached: set[str] = set()

    def reach(message: descriptor.Descriptor) -> None:
        if message.full_name in reached:
            return
        reached.add(message.full_name)
        for f in message.fields:
            if f.message_type is not None:
                reach(f.message_type)

    for method in OURS.services_by_name["GRPCInferenceService"].methods:
        reach(method.input_type)
    assert "inference.ModelInferRequest.InferInputTensor" in reached  # the walk does go deep
    assert not reached & PARTIAL_RESPONSES


@pytest.mark.parametrize("ours", OUR_ENUMS, ids=lambda e: e.full_name)
def test_enum_values_match_triton(theirs: TritonContract, ours: descriptor.EnumDescriptor) -> None:
    their_enum = theirs.enums.get(ours.full_name)
    assert their_enum is not None, f"tritonclient has no enum {ours.full_name}"
    assert {v.name: v.number for v in ours.values} == {v.name: v.number for v in their_enum.value}


def test_served_rpcs_match_triton(theirs: TritonContract) -> None:
    ours = OURS.services_by_name["GRPCInferenceService"]
    their_methods = {m.name: m for m in theirs.service.method}
    expected = {
        "ServerLive",
        "ServerReady",
        "ModelReady",
        "ServerMetadata",
        "ModelMetadata",
        "ModelInfer",
        "ModelStreamInfer",
        "ModelConfig",
        "ModelStatistics",
        "RepositoryIndex",
        "RepositoryModelLoad",
        "RepositoryModelUnload",
    }
    assert {m.name for m in ours.methods} == expected
    for method in ours.methods:
        their_method = their_methods[method.name]
        assert method.input_type.full_name == their_method.input_type.removeprefix(".")
        assert method.output_type.full_name == their_method.output_type.removeprefix(".")
        assert method.client_streaming == their_method.client_streaming
        assert method.server_streaming == their_method.server_streaming


TRITON_REQUEST = """
import base64
import tritonclient.grpc.service_pb2 as triton_pb2
request = triton_pb2.ModelInferRequest(model_name="m", model_version="2", id="req-1")
request.parameters["priority"].uint64_param = 3
request.parameters["ratio"].double_param = 0.5
tensor = request.inputs.add(name="input", datatype="FP32", shape=[1, 3, 1])
tensor.contents.fp32_contents.extend([1.0, 2.0, 3.0])
request.outputs.add(name="values").parameters["classification"].int64_param = 2
request.raw_input_contents.append(b"\\x00" * 12)
result = {
    "wire": base64.b64encode(request.SerializeToString()).decode(),
    "deterministic": base64.b64encode(request.SerializeToString(deterministic=True)).decode(),
}
"""


def test_tritonclient_request_round_trips_through_our_messages() -> None:
    sent = run_tritonclient(TRITON_REQUEST)

    ours = pb.ModelInferRequest.FromString(unb64(sent["wire"]))
    assert ours.inputs[0].contents.fp32_contents == [1.0, 2.0, 3.0]
    assert ours.parameters["priority"].uint64_param == 3
    assert ours.outputs[0].parameters["classification"].int64_param == 2
    assert ours.SerializeToString(deterministic=True) == unb64(sent["deterministic"])


TRITON_PARSE = """
import base64
import tritonclient.grpc.service_pb2 as triton_pb2
stream = triton_pb2.ModelStreamInferResponse.FromString(base64.b64decode(inputs["stream_response"]))
statistics = triton_pb2.ModelStatisticsResponse.FromString(base64.b64decode(inputs["statistics"]))
config = triton_pb2.ModelConfigResponse.FromString(base64.b64decode(inputs["config"])).config
stats = statistics.model_stats[0]
result = {
    "shape": list(stream.infer_response.outputs[0].shape),
    "raw": base64.b64encode(stream.infer_response.raw_output_contents[0]).decode(),
    "error_message": stream.error_message,
    "statistics": [stats.name, stats.version, stats.inference_count, stats.execution_count,
                   stats.inference_stats.queue.ns, stats.batch_stats[0].batch_size, len(stats.memory_usage)],
    "config": [config.name, config.max_batch_size, config.input[0].data_type, list(config.input[0].dims),
               config.input[0].format, config.runtime],
}
"""


def test_our_responses_parse_in_tritonclient() -> None:
    response = pb.ModelStreamInferResponse(
        infer_response=pb.ModelInferResponse(
            model_name="m",
            model_version="1",
            outputs=[pb.ModelInferResponse.InferOutputTensor(name="values", datatype="FP64", shape=[1, 1])],
            raw_output_contents=[b"\x00" * 8],
        )
    )
    statistics = pb.ModelStatisticsResponse(
        model_stats=[
            pb.ModelStatistics(
                name="m",
                version="1",
                inference_count=64,
                execution_count=2,
                inference_stats=pb.InferStatistics(queue=pb.StatisticDuration(count=3, ns=1500)),
                batch_stats=[pb.InferBatchStatistics(batch_size=32)],
            )
        ]
    )
    config = pb.ModelConfigResponse(
        config=pb.ModelConfig(
            name="m",
            max_batch_size=32,
            input=[pb.ModelInput(name="x", data_type=pb.TYPE_FP32, dims=[3, 1])],
        )
    )
    parsed = run_tritonclient(
        TRITON_PARSE,
        stream_response=b64(response.SerializeToString()),
        statistics=b64(statistics.SerializeToString()),
        config=b64(config.SerializeToString()),
    )
    assert parsed["shape"] == [1, 1]
    assert unb64(parsed["raw"]) == b"\x00" * 8
    assert parsed["error_message"] == ""
    # The fields we leave out of the partial messages read as unset.
    assert parsed["statistics"] == ["m", "1", 64, 2, 1500, 32, 0]
    assert parsed["config"] == ["m", 32, pb.TYPE_FP32, [3, 1], 0, ""]


def test_our_contract_is_in_the_default_pool_and_tritonclient_in_another_process(
    theirs: TritonContract,
) -> None:
    # Reflection serves the default pool; tritonclient puts its own copy of the symbols there, which is
    # why it runs in a child process only.
    assert pb.DESCRIPTOR.pool is descriptor_pool.Default()
    assert descriptor_pool.Default().FindMessageTypeByName("inference.ModelInferRequest").file is OURS
    assert theirs.default_pool_file == "grpc_service.proto" != OURS.name
    assert "tritonclient" not in sys.modules


def test_tritonclient_and_our_contract_cannot_share_a_process() -> None:
    with pytest.raises(AssertionError, match="duplicate symbol"):
        run_tritonclient("import tritonclient.grpc\nimport protos.inference.grpc_service_pb2\nresult = None")


# ---- the published specification, independently of tritonclient -------------------------------------
#
# Transcribed by hand from the published texts, as proto declarations: the core messages from KServe's
# open-inference-protocol specification/protocol/open_inference_grpc.proto; ModelStreamInfer and the
# repository extension (which KServe leaves to servers) from Triton's protobuf/grpc_service.proto, the
# layout MLServer copies; ModelConfig and ModelStatistics (the fields we keep) from Triton's
# grpc_service.proto and model_config.proto. Every field: (number, declared type).
PUBLISHED_FIELDS: dict[str, dict[str, tuple[int, str]]] = {
    "ServerLiveRequest": {},
    "ServerLiveResponse": {"live": (1, "bool")},
    "ServerReadyRequest": {},
    "ServerReadyResponse": {"ready": (1, "bool")},
    "ModelReadyRequest": {"name": (1, "string"), "version": (2, "string")},
    "ModelReadyResponse": {"ready": (1, "bool")},
    "ServerMetadataRequest": {},
    "ServerMetadataResponse": {
        "name": (1, "string"),
        "version": (2, "string"),
        "extensions": (3, "repeated string"),
    },
    "ModelMetadataRequest": {"name": (1, "string"), "version": (2, "string")},
    "ModelMetadataResponse": {
        "name": (1, "string"),
        "versions": (2, "repeated string"),
        "platform": (3, "string"),
        "inputs": (4, "repeated TensorMetadata"),
        "outputs": (5, "repeated TensorMetadata"),
    },
    "ModelMetadataResponse.TensorMetadata": {
        "name": (1, "string"),
        "datatype": (2, "string"),
        "shape": (3, "repeated int64"),
    },
    "ModelInferRequest": {
        "model_name": (1, "string"),
        "model_version": (2, "string"),
        "id": (3, "string"),
        "parameters": (4, "map<string, InferParameter>"),
        "inputs": (5, "repeated InferInputTensor"),
        "outputs": (6, "repeated InferRequestedOutputTensor"),
        "raw_input_contents": (7, "repeated bytes"),
    },
    "ModelInferRequest.InferInputTensor": {
        "name": (1, "string"),
        "datatype": (2, "string"),
        "shape": (3, "repeated int64"),
        "parameters": (4, "map<string, InferParameter>"),
        "contents": (5, "InferTensorContents"),
    },
    "ModelInferRequest.InferRequestedOutputTensor": {
        "name": (1, "string"),
        "parameters": (2, "map<string, InferParameter>"),
    },
    "ModelInferResponse": {
        "model_name": (1, "string"),
        "model_version": (2, "string"),
        "id": (3, "string"),
        "parameters": (4, "map<string, InferParameter>"),
        "outputs": (5, "repeated InferOutputTensor"),
        "raw_output_contents": (6, "repeated bytes"),
    },
    "ModelInferResponse.InferOutputTensor": {
        "name": (1, "string"),
        "datatype": (2, "string"),
        "shape": (3, "repeated int64"),
        "parameters": (4, "map<string, InferParameter>"),
        "contents": (5, "InferTensorContents"),
    },
    "InferParameter": {
        "bool_param": (1, "bool"),
        "int64_param": (2, "int64"),
        "string_param": (3, "string"),
        "double_param": (4, "double"),
        "uint64_param": (5, "uint64"),
    },
    "InferTensorContents": {
        "bool_contents": (1, "repeated bool"),
        "int_contents": (2, "repeated int32"),
        "int64_contents": (3, "repeated int64"),
        "uint_contents": (4, "repeated uint32"),
        "uint64_contents": (5, "repeated uint64"),
        "fp32_contents": (6, "repeated float"),
        "fp64_contents": (7, "repeated double"),
        "bytes_contents": (8, "repeated bytes"),
    },
    "ModelStreamInferResponse": {
        "error_message": (1, "string"),
        "infer_response": (2, "ModelInferResponse"),
    },
    "ModelRepositoryParameter": {
        "bool_param": (1, "bool"),
        "int64_param": (2, "int64"),
        "string_param": (3, "string"),
        "bytes_param": (4, "bytes"),
    },
    "RepositoryIndexRequest": {"repository_name": (1, "string"), "ready": (2, "bool")},
    "RepositoryIndexResponse": {"models": (1, "repeated ModelIndex")},
    "RepositoryIndexResponse.ModelIndex": {
        "name": (1, "string"),
        "version": (2, "string"),
        "state": (3, "string"),
        "reason": (4, "string"),
    },
    "RepositoryModelLoadRequest": {
        "repository_name": (1, "string"),
        "model_name": (2, "string"),
        "parameters": (3, "map<string, ModelRepositoryParameter>"),
    },
    "RepositoryModelLoadResponse": {},
    "RepositoryModelUnloadRequest": {
        "repository_name": (1, "string"),
        "model_name": (2, "string"),
        "parameters": (3, "map<string, ModelRepositoryParameter>"),
    },
    "RepositoryModelUnloadResponse": {},
    "ModelConfigRequest": {"name": (1, "string"), "version": (2, "string")},
    "ModelConfigResponse": {"config": (1, "ModelConfig")},
    "ModelConfig": {
        "name": (1, "string"),
        "platform": (2, "string"),
        "backend": (17, "string"),
        "max_batch_size": (4, "int32"),
        "input": (5, "repeated ModelInput"),
        "output": (6, "repeated ModelOutput"),
    },
    "ModelInput": {"name": (1, "string"), "data_type": (2, "DataType"), "dims": (4, "repeated int64")},
    "ModelOutput": {"name": (1, "string"), "data_type": (2, "DataType"), "dims": (3, "repeated int64")},
    "ModelStatisticsRequest": {"name": (1, "string"), "version": (2, "string")},
    "ModelStatisticsResponse": {"model_stats": (1, "repeated ModelStatistics")},
    "ModelStatistics": {
        "name": (1, "string"),
        "version": (2, "string"),
        "last_inference": (3, "uint64"),
        "inference_count": (4, "uint64"),
        "execution_count": (5, "uint64"),
        "inference_stats": (6, "InferStatistics"),
        "batch_stats": (7, "repeated InferBatchStatistics"),
    },
    "InferStatistics": {
        "success": (1, "StatisticDuration"),
        "fail": (2, "StatisticDuration"),
        "queue": (3, "StatisticDuration"),
        "compute_input": (4, "StatisticDuration"),
        "compute_infer": (5, "StatisticDuration"),
        "compute_output": (6, "StatisticDuration"),
        "cache_hit": (7, "StatisticDuration"),
        "cache_miss": (8, "StatisticDuration"),
    },
    "InferBatchStatistics": {
        "batch_size": (1, "uint64"),
        "compute_input": (2, "StatisticDuration"),
        "compute_infer": (3, "StatisticDuration"),
        "compute_output": (4, "StatisticDuration"),
    },
    "StatisticDuration": {"count": (1, "uint64"), "ns": (2, "uint64")},
}
# Enums: value name -> number (model_config.proto's DataType).
PUBLISHED_ENUMS = {
    "DataType": {
        "TYPE_INVALID": 0,
        "TYPE_BOOL": 1,
        "TYPE_UINT8": 2,
        "TYPE_UINT16": 3,
        "TYPE_UINT32": 4,
        "TYPE_UINT64": 5,
        "TYPE_INT8": 6,
        "TYPE_INT16": 7,
        "TYPE_INT32": 8,
        "TYPE_INT64": 9,
        "TYPE_FP16": 10,
        "TYPE_FP32": 11,
        "TYPE_FP64": 12,
        "TYPE_STRING": 13,
        "TYPE_BF16": 14,
    }
}
# Oneofs of the published texts (the parameter value types).
PUBLISHED_ONEOFS = {"InferParameter": "parameter_choice", "ModelRepositoryParameter": "parameter_choice"}
# rpc name: (request, response, client streaming, server streaming).
PUBLISHED_RPCS = {
    "ServerLive": ("ServerLiveRequest", "ServerLiveResponse", False, False),
    "ServerReady": ("ServerReadyRequest", "ServerReadyResponse", False, False),
    "ModelReady": ("ModelReadyRequest", "ModelReadyResponse", False, False),
    "ServerMetadata": ("ServerMetadataRequest", "ServerMetadataResponse", False, False),
    "ModelMetadata": ("ModelMetadataRequest", "ModelMetadataResponse", False, False),
    "ModelInfer": ("ModelInferRequest", "ModelInferResponse", False, False),
    "ModelStreamInfer": ("ModelInferRequest", "ModelStreamInferResponse", True, True),
    "ModelConfig": ("ModelConfigRequest", "ModelConfigResponse", False, False),
    "ModelStatistics": ("ModelStatisticsRequest", "ModelStatisticsResponse", False, False),
    "RepositoryIndex": ("RepositoryIndexRequest", "RepositoryIndexResponse", False, False),
    "RepositoryModelLoad": ("RepositoryModelLoadRequest", "RepositoryModelLoadResponse", False, False),
    "RepositoryModelUnload": ("RepositoryModelUnloadRequest", "RepositoryModelUnloadResponse", False, False),
}
_SCALARS = {
    descriptor.FieldDescriptor.TYPE_BOOL: "bool",
    descriptor.FieldDescriptor.TYPE_STRING: "string",
    descriptor.FieldDescriptor.TYPE_BYTES: "bytes",
    descriptor.FieldDescriptor.TYPE_INT32: "int32",
    descriptor.FieldDescriptor.TYPE_INT64: "int64",
    descriptor.FieldDescriptor.TYPE_UINT32: "uint32",
    descriptor.FieldDescriptor.TYPE_UINT64: "uint64",
    descriptor.FieldDescriptor.TYPE_FLOAT: "float",
    descriptor.FieldDescriptor.TYPE_DOUBLE: "double",
}


def _declared_type(field: descriptor.FieldDescriptor) -> str:
    """The field as a .proto file declares it, e.g. 'repeated int64' or 'map<string, InferParameter>'."""
    message = field.message_type
    if message is not None and message.GetOptions().map_entry:
        key, value = message.fields_by_name["key"], message.fields_by_name["value"]
        return f"map<{_declared_type(key)}, {_declared_type(value)}>"
    if message is not None:
        name = message.name
    elif field.enum_type is not None:
        name = field.enum_type.name
    else:
        name = _SCALARS[field.type]
    return f"repeated {name}" if field.is_repeated else name


def _ours(relative_name: str) -> descriptor.Descriptor:
    top, *nested = relative_name.split(".")
    message = OURS.message_types_by_name[top]
    for part in nested:
        message = message.nested_types_by_name[part]
    return message


def test_every_message_matches_the_published_specification() -> None:
    ours = {m.full_name.removeprefix("inference.") for m in OUR_MESSAGES if not m.GetOptions().map_entry}
    assert ours == set(PUBLISHED_FIELDS)  # no message missing, none invented
    for name, fields in PUBLISHED_FIELDS.items():
        message = _ours(name)
        got = {f.name: (f.number, _declared_type(f)) for f in message.fields}
        assert got == fields, name
        assert [o.name for o in message.oneofs] == (
            [PUBLISHED_ONEOFS[name]] if name in PUBLISHED_ONEOFS else []
        )


def test_every_rpc_matches_the_published_specification() -> None:
    service = OURS.services_by_name["GRPCInferenceService"]
    got = {
        m.name: (m.input_type.name, m.output_type.name, m.client_streaming, m.server_streaming)
        for m in service.methods
    }
    assert got == PUBLISHED_RPCS


def test_every_enum_matches_the_published_specification() -> None:
    got = {e.full_name.removeprefix("inference."): {v.name: v.number for v in e.values} for e in OUR_ENUMS}
    assert got == PUBLISHED_ENUMS
