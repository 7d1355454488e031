"""Opening the store the ``--store`` setting names: a directory (service_common.artifacts.ArtifactStore,
the default) or ``s3://bucket/prefix`` (service_common.s3_artifacts.S3ArtifactStore).

The S3 client is configured from the usual environment variables only: AWS_ENDPOINT_URL_S3 or
AWS_ENDPOINT_URL (an S3-API server such as SeaweedFS or MinIO; path-style addressing then), AWS_REGION
or AWS_DEFAULT_REGION (us-east-1 when neither is set), AWS_ACCESS_KEY_ID / AWS_SECRET_ACCESS_KEY (or
anything else boto3's credential chain finds). boto3 is imported only when an S3 store is opened.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from service_common.artifacts import ArtifactStore, StoredArtifacts, load_signing_key

S3_SCHEME = "s3://"


@dataclass(frozen=True)
class S3Location:
    """``s3://bucket/prefix`` as the store setting holds it."""

    bucket: str
    prefix: str = ""

    def __str__(self) -> str:
        return f"{S3_SCHEME}{self.bucket}/{self.prefix}" if self.prefix else f"{S3_SCHEME}{self.bucket}"

    def joined(self, name: str) -> str:
        """The key prefix of one kind of artifact (``models``, ``scalers``) below this location."""
        return f"{self.prefix.strip('/')}/{name}" if self.prefix.strip("/") else name


def parse_store(text: str) -> Path | S3Location:
    """The store setting: ``s3://bucket[/prefix]`` or a directory path."""
    if not text.startswith(S3_SCHEME):
        return Path(text)
    bucket, _, prefix = text[len(S3_SCHEME) :].partition("/")
    # S3 bucket naming: 3-63 lowercase letters, digits, '-' and '.'.
    if not (3 <= len(bucket) <= 63) or not all(c.islower() or c.isdigit() or c in "-." for c in bucket):
        raise ValueError(
            f"{text!r}: expected s3://bucket/prefix with a bucket of 3-63 lowercase letters, "
            "digits, '-' or '.'"
        )
    return S3Location(bucket, prefix.strip("/"))


def s3_client() -> Any:
    """A boto3 S3 client configured from the AWS_* environment (see the module docstring)."""
    import boto3
    from botocore.config import Config

    endpoint = os.environ.get("AWS_ENDPOINT_URL_S3") or os.environ.get("AWS_ENDPOINT_URL") or None
    region = os.environ.get("AWS_REGION") or os.environ.get("AWS_DEFAULT_REGION") or "us-east-1"
    config = Config(
        retries={"max_attempts": 5, "mode": "standard"},
        connect_timeout=5,
        read_timeout=60,
        # Self-hosted S3 APIs answer on one host name, not <bucket>.<host>.
        s3={"addressing_style": "path"} if endpoint else {},
        max_pool_connections=32,
    )
    return boto3.session.Session().client("s3", endpoint_url=endpoint, region_name=region, config=config)


def open_artifact_store(
    store: Path | S3Location,
    name: str,
    signing_key: str,
    signing_key_file: str,
    lease_seconds: float,
) -> StoredArtifacts:
    """The signed store of one kind of artifact (``name``: models, scalers) at the setting's location.

    A directory store generates ``<store>/.signing-key`` on first start when no key is configured; an
    S3 store refuses to open without a configured key (it is never kept in the bucket).
    """
    if isinstance(store, S3Location):
        if not signing_key and not signing_key_file:
            raise ValueError(
                f"--store {store} needs --signing-key or --signing-key-file (or their LSTM_*_SIGNING_KEY* "
                "variables): the HMAC key of an S3 store is never kept in, or generated into, the bucket"
            )
        from service_common.s3_artifacts import S3ArtifactStore

        key = load_signing_key(signing_key, signing_key_file, Path("."))
        return S3ArtifactStore(
            s3_client(), store.bucket, store.joined(name), key, lease_seconds=lease_seconds
        )
    key = load_signing_key(signing_key, signing_key_file, store)
    return ArtifactStore(store / name, key)
