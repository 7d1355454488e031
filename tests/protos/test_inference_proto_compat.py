"""Our Open Inference Protocol contract must be wire-identical to what tritonclient sends and expects.

tritonclient's serialized descriptor is the ground truth: for every message we define (nested ones
included) each field must have the same name, number, type, label, message type and oneof; every RPC we
declare must exist in Triton's GRPCInferenceService with the same request/response types and streaming.
"""

from __future__ import annotations

import pytest
import tritonclient.grpc.service_pb2 as triton_pb2
from google.protobuf import descriptor, descriptor_pool

from protos.inference import grpc_service_pb2 as pb

OURS = pb.DESCRIPTOR
THEIRS = triton_pb2.DESCRIPTOR


def _all_messages(messages: list[descriptor.Descriptor]) -> list[descriptor.Descriptor]:
    found = []
    for message in messages:
        found.append(message)
        found.extend(_all_messages(list(message.nested_types)))
    return found


OUR_MESSAGES = _all_messages(list(OURS.message_types_by_name.values()))


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


def _triton_message(full_name: str) -> descriptor.Descriptor:
    path = full_name.split(".")
    assert path[0] == THEIRS.package
    message = THEIRS.message_types_by_name.get(path[1])
    for part in path[2:]:
        assert message is not None
        message = message.nested_types_by_name.get(part)
    assert message is not None, f"tritonclient has no message {full_name}"
    return message


def test_package_and_service_name_match_triton() -> None:
    assert OURS.package == THEIRS.package == "inference"
    assert OURS.services_by_name["GRPCInferenceService"].full_name == "inference.GRPCInferenceService"
    assert THEIRS.services_by_name["GRPCInferenceService"].full_name == "inference.GRPCInferenceService"


def test_we_define_the_messages_the_served_rpcs_need() -> None:
    names = {m.full_name for m in OUR_MESSAGES}
    assert "inference.ModelInferRequest.InferInputTensor" in names
    assert "inference.ModelStreamInferResponse" in names
    assert "inference.RepositoryIndexResponse.ModelIndex" in names
    assert len(OUR_MESSAGES) >= 30


@pytest.mark.parametrize("ours", OUR_MESSAGES, ids=lambda m: m.full_name)
def test_message_fields_match_triton(ours: descriptor.Descriptor) -> None:
    theirs = _triton_message(ours.full_name)
    our_fields = {f.number: _field_signature(f) for f in ours.fields}
    their_fields = {f.number: _field_signature(f) for f in theirs.fields}
    # Same fields with the same meaning; we may not drop any (a client sending it would be misread).
    assert our_fields == their_fields
    assert ours.GetOptions().map_entry == theirs.GetOptions().map_entry
    assert [o.name for o in ours.oneofs] == [o.name for o in theirs.oneofs]


def test_served_rpcs_match_triton() -> None:
    ours = OURS.services_by_name["GRPCInferenceService"]
    theirs = THEIRS.services_by_name["GRPCInferenceService"]
    expected = {
        "ServerLive",
        "ServerReady",
        "ModelReady",
        "ServerMetadata",
        "ModelMetadata",
        "ModelInfer",
        "ModelStreamInfer",
        "RepositoryIndex",
        "RepositoryModelLoad",
        "RepositoryModelUnload",
    }
    assert {m.name for m in ours.methods} == expected
    for method in ours.methods:
        their_method = theirs.methods_by_name[method.name]
        assert method.input_type.full_name == their_method.input_type.full_name
        assert method.output_type.full_name == their_method.output_type.full_name
        assert method.client_streaming == their_method.client_streaming
        assert method.server_streaming == their_method.server_streaming


def test_tritonclient_request_round_trips_through_our_messages() -> None:
    request = triton_pb2.ModelInferRequest(model_name="m", model_version="2", id="req-1")
    request.parameters["priority"].uint64_param = 3
    request.parameters["ratio"].double_param = 0.5
    tensor = request.inputs.add(name="input", datatype="FP32", shape=[1, 3, 1])
    tensor.contents.fp32_contents.extend([1.0, 2.0, 3.0])
    request.outputs.add(name="values").parameters["classification"].int64_param = 2
    request.raw_input_contents.append(b"\x00" * 12)
    wire = request.SerializeToString()

    ours = pb.ModelInferRequest.FromString(wire)
    assert ours.inputs[0].contents.fp32_contents == [1.0, 2.0, 3.0]
    assert ours.parameters["priority"].uint64_param == 3
    assert ours.outputs[0].parameters["classification"].int64_param == 2
    assert ours.SerializeToString(deterministic=True) == request.SerializeToString(deterministic=True)


def test_our_response_parses_in_tritonclient() -> None:
    response = pb.ModelStreamInferResponse(
        infer_response=pb.ModelInferResponse(
            model_name="m",
            model_version="1",
            outputs=[pb.ModelInferResponse.InferOutputTensor(name="values", datatype="FP64", shape=[1, 1])],
            raw_output_contents=[b"\x00" * 8],
        )
    )
    theirs = triton_pb2.ModelStreamInferResponse.FromString(response.SerializeToString())
    assert theirs.infer_response.outputs[0].shape == [1, 1]
    assert theirs.infer_response.raw_output_contents[0] == b"\x00" * 8
    assert theirs.error_message == ""


def test_our_contract_lives_in_a_private_pool_next_to_tritonclient() -> None:
    # Both are imported in this process; that works only because ours stays out of the default pool.
    assert pb.DESCRIPTOR.pool is not descriptor_pool.Default()
    assert descriptor_pool.Default().FindMessageTypeByName("inference.ModelInferRequest").file is THEIRS
    assert pb.ModelInferRequest.DESCRIPTOR.file is OURS


# ---- the published specification, independently of tritonclient -------------------------------------
#
# Transcribed by hand from the published texts, as proto declarations: the core messages from KServe's
# open-inference-protocol specification/protocol/open_inference_grpc.proto; ModelStreamInfer and the
# repository extension (which KServe leaves to servers) from Triton's protobuf/grpc_service.proto, the
# layout MLServer copies. Every field: (number, declared type).
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
    name = message.name if message is not None else _SCALARS[field.type]
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
