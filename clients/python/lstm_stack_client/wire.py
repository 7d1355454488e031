"""The few pieces of protobuf's wire format that are written by hand where a message class would cost
a dependency (the health check here; the ONNX metadata the model service appends to an export)."""

from __future__ import annotations


def varint(value: int) -> bytes:
    out = bytearray()
    while True:
        byte = value & 0x7F
        value >>= 7
        if value:
            out.append(byte | 0x80)
        else:
            out.append(byte)
            return bytes(out)


def read_varint(data: bytes, pos: int) -> tuple[int, int]:
    """The varint at ``pos`` and the position after it; ValueError when ``data`` ends inside it."""
    value = shift = 0
    while True:
        if pos >= len(data):
            raise ValueError("truncated varint")
        byte = data[pos]
        pos += 1
        value |= (byte & 0x7F) << shift
        if not byte & 0x80:
            return value, pos
        shift += 7


def length_delimited(field: int, payload: bytes) -> bytes:
    """One length-delimited field (a string, bytes or an embedded message) with its key."""
    return varint(field << 3 | 2) + varint(len(payload)) + payload
