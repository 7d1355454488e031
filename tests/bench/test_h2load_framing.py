"""The bench's hand-made gRPC framing (bench/grpc_h2load.py) and its reading of h2load's summary.

No timing here: the bench itself is `make bench`, not a test.
"""

from __future__ import annotations

import struct
from pathlib import Path

import numpy as np
import pytest

from bench.grpc_h2load import H2loadError, frame, h2load_command, parse_report, unframe, write_request
from protos.inference import grpc_service_pb2 as oip

# h2load 1.52's summary of a timed run (-D 2 --warm-up-time=1), as it prints it.
H2LOAD_SUMMARY = """\
finished in 3.00s, 9961.00 req/s, 642.12KB/s
requests: 19922 total, 19922 started, 19922 done, 19922 succeeded, 0 failed, 0 errored, 0 timeout
status codes: 19922 2xx, 0 3xx, 0 4xx, 0 5xx
traffic: 1.25MB (1315056) total, 81.57KB (83529) headers (space savings 96.28%), 189.65KB (194201) data
                     min         max         mean         sd        +/- sd
time for request:      126us      7.06ms       396us       220us    90.44%
time for connect:        0us         0us         0us         0us     0.00%
time to 1st byte:        0us         0us         0us         0us     0.00%
req/s           :    2487.34     2492.36     2490.11        2.62    75.00%
"""


def model_infer_request() -> oip.ModelInferRequest:
    x = np.arange(48 * 4, dtype="<f4").reshape(1, 48, 4)
    return oip.ModelInferRequest(
        model_name="bench-48x4",
        inputs=[oip.ModelInferRequest.InferInputTensor(name="x", datatype="FP32", shape=[1, 48, 4])],
        raw_input_contents=[x.tobytes()],
    )


def test_a_framed_request_is_a_zero_flag_a_big_endian_length_and_the_message_and_parses_back() -> None:
    message = model_infer_request().SerializeToString()
    framed = frame(message)
    assert framed[0] == 0
    assert struct.unpack(">I", framed[1:5])[0] == len(message)
    assert framed[5:] == message
    (back,) = unframe(framed)
    assert oip.ModelInferRequest.FromString(back) == model_infer_request()


def test_an_empty_message_frames_to_five_zero_bytes() -> None:
    assert frame(oip.ServerLiveRequest().SerializeToString()) == b"\x00\x00\x00\x00\x00"
    assert unframe(b"\x00\x00\x00\x00\x00") == [b""]


def test_a_body_of_several_frames_gives_every_message_in_order() -> None:
    assert unframe(frame(b"first") + frame(b"") + frame(b"x" * 70_000)) == [b"first", b"", b"x" * 70_000]


def test_the_request_file_h2load_sends_holds_exactly_one_frame(tmp_path: Path) -> None:
    message = model_infer_request().SerializeToString()
    path = write_request(tmp_path / "body.bin", message)
    assert path.read_bytes() == frame(message)
    assert unframe(path.read_bytes()) == [message]


@pytest.mark.parametrize(
    ("body", "complaint"),
    [
        (frame(b"hello")[:-1], "declares 5 bytes but only 4 follow"),
        (frame(b"hello") + b"\x00\x00", "2 stray bytes at offset 10"),
        (b"\x01" + frame(b"hello")[1:], "is compressed"),
        (b"\x07" + frame(b"hello")[1:], "compressed flag 7"),
    ],
)
def test_a_body_that_is_not_whole_uncompressed_frames_is_refused_saying_why(
    body: bytes, complaint: str
) -> None:
    with pytest.raises(ValueError, match=complaint):
        unframe(body)


def test_h2load_summary_is_read_into_rate_mean_latency_and_counts() -> None:
    report = parse_report(H2LOAD_SUMMARY)
    assert report.requests_per_second == 9961.0
    assert report.mean_ms == pytest.approx(0.396)
    assert (report.done, report.succeeded, report.failed, report.errored, report.timeout) == (
        19922,
        19922,
        0,
        0,
        0,
    )
    assert report.status_2xx == 19922


def test_a_mean_latency_in_milliseconds_or_seconds_is_converted_to_milliseconds() -> None:
    ms = H2LOAD_SUMMARY.replace("      396us       220us", "    40.17ms     13.12ms")
    assert parse_report(ms).mean_ms == pytest.approx(40.17)
    seconds = H2LOAD_SUMMARY.replace("      396us       220us", "      1.25s     13.12ms")
    assert parse_report(seconds).mean_ms == pytest.approx(1250.0)


def test_a_summary_without_its_status_line_is_refused_naming_the_line() -> None:
    without = "\n".join(line for line in H2LOAD_SUMMARY.splitlines() if not line.startswith("status codes"))
    with pytest.raises(H2loadError, match="no 'status codes' line"):
        parse_report(without)


def test_the_h2load_command_sends_grpc_headers_and_whole_millisecond_durations(tmp_path: Path) -> None:
    command = h2load_command("http://127.0.0.1:1/pkg.Svc/M", tmp_path / "b.bin", 32, 1, 5.0, 0.5)
    assert command[:3] == ["h2load", "-d", str(tmp_path / "b.bin")]
    pairs = list(zip(command, command[1:], strict=False))
    assert ("-H", "content-type: application/grpc") in pairs
    assert ("-H", "te: trailers") in pairs
    assert ("-c", "32") in pairs and ("-m", "1") in pairs
    assert ("-D", "5000ms") in pairs
    assert "--warm-up-time=500ms" in command
    assert command[-1] == "http://127.0.0.1:1/pkg.Svc/M"
