"""gRPC over h2load, by hand: framing, running h2load, reading its report, checking a sample's grpc-status.

h2load (Debian's nghttp2-client) is a C HTTP/2 load generator; it knows nothing of gRPC. A unary gRPC
call is an HTTP/2 POST to ``/<package.Service>/<Method>`` with ``content-type: application/grpc`` and
``te: trailers`` whose body is one length-prefixed message: a compressed-flag byte (0), the message's
length as a 4-byte big-endian integer, then the serialized protobuf. h2load sends such a body from a
file (``-d``) and counts every HTTP 200 as a success, but a failed gRPC call is an HTTP 200 too: its
status is in the ``grpc-status`` trailer, which h2load does not read. So every target is checked with
nghttp (same file, same headers) before it is measured: trailers say ``grpc-status: 0`` and the body
unframes into a response message.

No grpc import: this is transport plumbing for the bench, usable from either virtualenv.
"""

from __future__ import annotations

import os
import re
import shutil
import struct
import subprocess
from dataclasses import dataclass
from pathlib import Path

PREFIX = struct.Struct(">BI")  # compressed flag, message length
GRPC_HEADERS = ("content-type: application/grpc", "te: trailers")


class H2loadError(RuntimeError):
    """h2load or nghttp did not run, could not be read, or saw a failed call."""


def frame(message: bytes) -> bytes:
    """One uncompressed gRPC length-prefixed message: 0x00, big-endian uint32 length, the bytes."""
    return PREFIX.pack(0, len(message)) + message


def unframe(body: bytes) -> list[bytes]:
    """Every message of a gRPC body (one per frame, in order); ValueError when the body is not whole
    uncompressed frames."""
    messages = []
    offset = 0
    while offset < len(body):
        if len(body) - offset < PREFIX.size:
            raise ValueError(
                f"{len(body) - offset} stray bytes at offset {offset}: a frame prefix is 5 bytes"
            )
        flag, length = PREFIX.unpack_from(body, offset)
        if flag not in (0, 1):
            raise ValueError(f"frame at offset {offset} has compressed flag {flag}: expected 0 or 1")
        if flag == 1:
            raise ValueError(f"frame at offset {offset} is compressed; the bench sends and expects identity")
        start = offset + PREFIX.size
        if start + length > len(body):
            raise ValueError(
                f"frame at offset {offset} declares {length} bytes but only {len(body) - start} follow"
            )
        messages.append(body[start : start + length])
        offset = start + length
    return messages


def write_request(path: Path, message: bytes) -> Path:
    """The file h2load and nghttp send as the request body (``-d``)."""
    path.write_bytes(frame(message))
    return path


def ensure_nghttp2_client() -> None:
    """h2load and nghttp from Debian's nghttp2-client, installed when missing (as the Makefile does node)."""
    if shutil.which("h2load") and shutil.which("nghttp"):
        return
    print("installing Debian's nghttp2-client (h2load, nghttp) ...", flush=True)
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    subprocess.run(["apt-get", "update", "-qq"], check=True, env=env)
    subprocess.run(["apt-get", "install", "-y", "-qq", "nghttp2-client"], check=True, env=env)
    if not (shutil.which("h2load") and shutil.which("nghttp")):
        raise H2loadError("nghttp2-client installed but h2load/nghttp are not on PATH")


@dataclass(frozen=True)
class H2loadReport:
    """What one h2load run measured (its own figures, over the main duration after warm-up)."""

    requests_per_second: float
    mean_ms: float
    done: int
    succeeded: int
    failed: int
    errored: int
    timeout: int
    status_2xx: int


_UNITS_MS = {"us": 1e-3, "ms": 1.0, "s": 1e3}
_FINISHED = re.compile(r"^finished in [\d.]+s, ([\d.]+) req/s", re.M)
_REQUESTS = re.compile(
    r"^requests: (\d+) total, (\d+) started, (\d+) done, (\d+) succeeded, (\d+) failed, (\d+) errored, "
    r"(\d+) timeout",
    re.M,
)
_STATUS = re.compile(r"^status codes: (\d+) 2xx, (\d+) 3xx, (\d+) 4xx, (\d+) 5xx", re.M)
_TIME_FOR_REQUEST = re.compile(
    r"^time for request:\s+([\d.]+)(us|ms|s)\s+([\d.]+)(us|ms|s)\s+([\d.]+)(us|ms|s)", re.M
)


def parse_report(text: str) -> H2loadReport:
    """h2load's summary -> figures; H2loadError naming the line that is missing."""
    found = {}
    for name, pattern in (
        ("finished", _FINISHED),
        ("requests", _REQUESTS),
        ("status codes", _STATUS),
        ("time for request", _TIME_FOR_REQUEST),
    ):
        match = pattern.search(text)
        if match is None:
            raise H2loadError(f"h2load output has no '{name}' line:\n{text[-2000:]}")
        found[name] = match.groups()
    _, _, done, succeeded, failed, errored, timeout = (int(v) for v in found["requests"])
    mean, unit = found["time for request"][4:6]
    return H2loadReport(
        requests_per_second=float(found["finished"][0]),
        mean_ms=float(mean) * _UNITS_MS[unit],
        done=done,
        succeeded=succeeded,
        failed=failed,
        errored=errored,
        timeout=timeout,
        status_2xx=int(found["status codes"][0]),
    )


def _duration(seconds: float) -> str:
    """h2load's DURATION: an integer with a unit (it refuses fractions such as 0.5)."""
    return f"{round(seconds * 1000)}ms"


def h2load_command(
    url: str, body: Path, connections: int, streams: int, seconds: float, warmup_seconds: float
) -> list[str]:
    """A timed h2load run: ``connections`` HTTP/2 connections with ``streams`` concurrent streams each,
    one client thread (the load generator's CPU is the server's too on a small machine)."""
    headers = [arg for header in GRPC_HEADERS for arg in ("-H", header)]
    return [
        "h2load",
        "-d",
        str(body),
        *headers,
        "-c",
        str(connections),
        "-m",
        str(streams),
        "-t",
        "1",
        "-D",
        _duration(seconds),
        f"--warm-up-time={_duration(warmup_seconds)}",
        url,
    ]


def run_h2load(
    url: str, body: Path, connections: int, streams: int, seconds: float, warmup_seconds: float = 1.0
) -> tuple[H2loadReport, float]:
    """One measured run -> (report, h2load's own CPU seconds). H2loadError when any request did not
    finish with HTTP 200 (grpc-status is checked separately: see check_sample)."""
    command = h2load_command(url, body, connections, streams, seconds, warmup_seconds)
    process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    assert process.stdout is not None
    output = process.stdout.read().decode(errors="replace")
    _, status, usage = os.wait4(process.pid, 0)
    process.returncode = os.waitstatus_to_exitcode(status)
    if process.returncode != 0:
        raise H2loadError(f"{' '.join(command)} exited with {process.returncode}:\n{output[-2000:]}")
    report = parse_report(output)
    if (
        report.done == 0
        or report.failed
        or report.errored
        or report.timeout
        or report.status_2xx != report.done
    ):
        raise H2loadError(f"h2load saw failures against {url}: {report}\n{output[-2000:]}")
    return report, usage.ru_utime + usage.ru_stime


_TRAILER = re.compile(rb"recv \(stream_id=\d+\) (grpc-status|grpc-message|:status): ?([^\r\n]*)")


def check_sample(url: str, body: Path, timeout: float = 60.0) -> bytes:
    """One call of the measured request through nghttp, as h2load sends it; its response message.
    H2loadError (loudly, with what came back) unless HTTP 200, grpc-status 0 and exactly one frame."""
    headers = [arg for header in GRPC_HEADERS for arg in ("-H", header)]
    base = ["nghttp", "-d", str(body), *headers, f"--timeout={timeout:g}"]
    verbose = subprocess.run([*base, "-v", url], capture_output=True, timeout=timeout + 10)
    fields: dict[str, str] = {}
    for name, value in _TRAILER.findall(verbose.stdout):
        fields.setdefault(name.decode(), value.decode(errors="replace"))
    if verbose.returncode != 0 or fields.get(":status") != "200" or fields.get("grpc-status") != "0":
        raise H2loadError(
            f"sample call to {url} failed: nghttp exit {verbose.returncode}, :status {fields.get(':status')}, "
            f"grpc-status {fields.get('grpc-status')}, grpc-message {fields.get('grpc-message')!r}\n"
            f"{verbose.stderr.decode(errors='replace')[-1000:]}"
        )
    plain = subprocess.run([*base, url], capture_output=True, timeout=timeout + 10)  # the body alone
    try:
        messages = unframe(plain.stdout)
    except ValueError as exc:
        raise H2loadError(f"sample call to {url}: the response body is not gRPC frames ({exc})") from exc
    if plain.returncode != 0 or len(messages) != 1:
        raise H2loadError(
            f"sample call to {url}: expected one response message, got {len(messages)} (nghttp exit "
            f"{plain.returncode})"
        )
    return messages[0]
