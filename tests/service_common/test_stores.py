"""The store setting: a directory or s3://bucket/prefix; an S3 store never opens without a configured
signing key or on a bucket it cannot use, and an S3 outage during an operation is Unavailable.
(The S3 store against a real server: tests/cluster/test_s3_store.py.)"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import boto3
import pytest
from botocore.config import Config
from botocore.stub import Stubber

from scaler_service.settings import ScalerSettings
from service_common.artifacts import ArtifactStore
from service_common.errors import Unavailable
from service_common.s3_artifacts import S3ArtifactStore
from service_common.settings import load_settings
from service_common.stores import S3Location, open_artifact_store, parse_store

KEY = b"test-signing-key-0123456789"


def _client(endpoint: str = "http://127.0.0.1:9") -> Any:
    return boto3.session.Session().client(
        "s3",
        endpoint_url=endpoint,
        region_name="us-east-1",
        aws_access_key_id="test",
        aws_secret_access_key="test",
        config=Config(retries={"max_attempts": 1}, connect_timeout=2, s3={"addressing_style": "path"}),
    )


def test_the_store_setting_is_a_directory_or_an_s3_bucket_and_prefix(tmp_path: Path) -> None:
    assert parse_store(str(tmp_path)) == tmp_path
    assert parse_store("s3://lstm-bucket/team/prod/") == S3Location("lstm-bucket", "team/prod")
    assert parse_store("s3://lstm-bucket") == S3Location("lstm-bucket", "")
    assert str(S3Location("lstm-bucket", "team/prod")) == "s3://lstm-bucket/team/prod"
    assert S3Location("lstm-bucket", "team").joined("models") == "team/models"
    assert S3Location("lstm-bucket", "").joined("models") == "models"
    for bad in ("s3://", "s3://ab/x", "s3://Upper/x", "s3://bad_bucket/x"):
        with pytest.raises(ValueError, match="expected s3://bucket/prefix"):
            parse_store(bad)


def test_the_flag_and_the_environment_take_an_s3_url(monkeypatch: pytest.MonkeyPatch) -> None:
    settings = load_settings(ScalerSettings, ["--store", "s3://lstm-bucket/scalers-team"])
    assert settings.store == S3Location("lstm-bucket", "scalers-team")
    monkeypatch.setenv("LSTM_SCALER_STORE", "s3://from-env/p")
    assert load_settings(ScalerSettings, []).store == S3Location("from-env", "p")
    monkeypatch.setenv("LSTM_SCALER_STORE", "/data/scalers")
    assert load_settings(ScalerSettings, []).store == Path("/data/scalers")


def test_a_directory_store_is_opened_as_before_with_a_generated_key(tmp_path: Path) -> None:
    store = open_artifact_store(tmp_path, "models", "", "", 30.0)
    assert isinstance(store, ArtifactStore) and store.root == tmp_path / "models"
    assert (tmp_path / ".signing-key").exists()


def test_an_s3_store_without_a_configured_signing_key_refuses_to_open() -> None:
    with pytest.raises(ValueError, match="needs --signing-key or --signing-key-file"):
        open_artifact_store(S3Location("lstm-bucket", "p"), "models", "", "", 30.0)


def test_an_s3_endpoint_that_does_not_answer_is_a_clear_error_at_open() -> None:
    with pytest.raises(ValueError, match="cannot be reached"):
        S3ArtifactStore(_client(), "lstm-bucket", "p/models", KEY)


def test_a_missing_bucket_is_a_clear_error_at_open() -> None:
    client = _client()
    with Stubber(client) as stub:
        stub.add_client_error("head_bucket", service_error_code="404", http_status_code=404)
        with pytest.raises(ValueError, match="bucket 'lstm-bucket' does not exist"):
            S3ArtifactStore(client, "lstm-bucket", "p/models", KEY)


def test_an_s3_failure_during_an_operation_is_unavailable_naming_the_store() -> None:
    client = _client()
    with Stubber(client) as stub:
        stub.add_response("head_bucket", {})
        stub.add_response("list_objects_v2", {"IsTruncated": False})  # the sweep at open: nothing
        store = S3ArtifactStore(client, "lstm-bucket", "p/models", KEY)
        stub.add_client_error("list_objects_v2", service_error_code="SlowDown", http_status_code=503)
        with pytest.raises(
            Unavailable, match=r"S3 store s3://lstm-bucket/p/models/: list_objects_v2 failed: SlowDown"
        ):
            list(store.scan())
        stub.add_client_error("get_object", service_error_code="AccessDenied", http_status_code=403)
        with pytest.raises(Unavailable, match="get_object failed: AccessDenied"):
            store.read("model", 1)
