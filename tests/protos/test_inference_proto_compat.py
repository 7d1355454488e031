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
