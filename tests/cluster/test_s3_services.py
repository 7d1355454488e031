"""Both services as real processes on ``--store s3://bucket/prefix`` (SeaweedFS): fit, train, predict, a
second model replica on the same bucket serving what the first trained; tampered objects skipped with
the same answers as on a directory store; no start without a signing key."""

from __future__ import annotations

import json
from pathlib import Path

import grpc
import numpy as np
import pytest

from protos.lstm_stack.v1 import scaler_pb2, scaler_pb2_grpc
from service_common import codec
from tests.cluster.seaweed import SeaweedS3
from tests.system import workloads
from tests.system.procs import ServiceProcess, child_env, model_process, running, scaler_process

SIGNING_KEY = "cluster-test-signing-key-0123456789"


@pytest.fixture
def store_url(seaweed: SeaweedS3, s3_prefix: str) -> str:
    return f"s3://{seaweed.bucket}/{s3_prefix}"


@pytest.fixture
def s3_env(seaweed: SeaweedS3) -> dict[str, str]:
    return child_env(**seaweed.env)


def _scaler(store_url: str, env: dict[str, str], logs: Path) -> ServiceProcess:
    return scaler_process(
        store_url, logs, "--signing-key", SIGNING_KEY, "--store-poll-seconds", "0.5", env=env
    )


def _model(store_url: str, env: dict[str, str], logs: Path, scaler: ServiceProcess) -> ServiceProcess:
    return model_process(
        store_url, logs, scaler,
        "--signing-key", SIGNING_KEY, "--store-poll-seconds", "0.5", "--warm-on-start", "false",
        env=env,
    )  # fmt: skip


def _keys(seaweed: SeaweedS3, prefix: str) -> list[str]:
    reply = seaweed.client().list_objects_v2(Bucket=seaweed.bucket, Prefix=prefix)
    return [item["Key"] for item in reply.get("Contents", [])]


def _fit(stub: scaler_pb2_grpc.ScalerServiceStub, scaler_id: str) -> scaler_pb2.ScalerInfo:
    data = codec.from_numpy(np.arange(12, dtype=np.float64).reshape(4, 3))
    spec = scaler_pb2.ScalerSpec(kind=scaler_pb2.STANDARD)
    return stub.Fit(scaler_pb2.FitRequest(scaler_id=scaler_id, spec=spec, data=data), timeout=30)


def test_fit_train_and_predict_on_s3_and_a_second_model_replica_serves_the_model(
    seaweed: SeaweedS3, s3_prefix: str, store_url: str, s3_env: dict[str, str], tmp_path: Path
) -> None:
    scaler = _scaler(store_url, s3_env, tmp_path / "logs")
    model = _model(store_url, s3_env, tmp_path / "logs", scaler)
    replica = _model(store_url, s3_env, tmp_path / "logs", scaler)
    with running(scaler, model):
        with scaler.channel() as channel:
            fitted = _fit(scaler_pb2_grpc.ScalerServiceStub(channel), "direct")
        assert fitted.version == 1
        with model.channel() as channel:
            trained = workloads.train(channel, workloads.train_request("on-s3", epochs=1, scaled=True))
            first = workloads.predict_seed(channel, "on-s3")
        assert trained.version == 1 and first.shape == (1, 1)
        assert f"{s3_prefix}/models/manifests/on-s3/1" in _keys(seaweed, f"{s3_prefix}/models/")
        scaler_manifests = _keys(seaweed, f"{s3_prefix}/scalers/manifests/")
        # The direct fit, plus the x and y scalers the training job fitted through the scaler service.
        assert f"{s3_prefix}/scalers/manifests/direct/1" in scaler_manifests and len(scaler_manifests) == 3
        with running(replica), replica.channel() as channel:
            assert [(m.id, m.version) for m in workloads.list_models(channel)] == [("on-s3", 1)]
            np.testing.assert_allclose(workloads.predict_seed(channel, "on-s3"), first, rtol=1e-5)
            assert replica.health() == "SERVING"


def test_tampered_scaler_objects_in_the_bucket_are_skipped_and_answer_not_found(
    seaweed: SeaweedS3, s3_prefix: str, store_url: str, s3_env: dict[str, str], tmp_path: Path
) -> None:
    scaler = _scaler(store_url, s3_env, tmp_path / "logs")
    with running(scaler), scaler.channel() as channel:
        stub = scaler_pb2_grpc.ScalerServiceStub(channel)
        for name in ("flipped", "forged", "intact"):
            _fit(stub, name)
    client = seaweed.client()
    root = f"{s3_prefix}/scalers"

    def manifest(name: str) -> dict[str, object]:
        key = f"{root}/manifests/{name}/1"
        return dict(json.loads(client.get_object(Bucket=seaweed.bucket, Key=key)["Body"].read()))

    # 1. One flipped bit in the fitted estimator's object.
    part = f"{root}/parts/flipped/1/{manifest('flipped')['upload']}/scaler.joblib"
    data = bytearray(client.get_object(Bucket=seaweed.bucket, Key=part)["Body"].read())
    data[len(data) // 2] ^= 0x01
    client.put_object(Bucket=seaweed.bucket, Key=part, Body=bytes(data))
    # 2. The manifest's digests changed (as one would to slip another payload in), its HMAC kept.
    forged = manifest("forged")
    forged["files"] = {name: "0" * 64 for name in forged["files"]}  # type: ignore[attr-defined]
    client.put_object(
        Bucket=seaweed.bucket, Key=f"{root}/manifests/forged/1", Body=json.dumps(forged).encode()
    )

    with running(scaler), scaler.channel() as channel:
        stub = scaler_pb2_grpc.ScalerServiceStub(channel)
        assert {(s.id, s.version) for s in workloads.list_scalers(channel)} == {("intact", 1)}
        for name in ("flipped", "forged"):
            with pytest.raises(grpc.RpcError) as info:
                stub.GetScaler(scaler_pb2.GetScalerRequest(scaler_id=name), timeout=30)
            assert info.value.code() == grpc.StatusCode.NOT_FOUND
        # A new fit of a refused id takes a fresh version: the refused one is never overwritten or reused.
        assert _fit(stub, "flipped").version == 2
        assert scaler.health() == "SERVING"
    log = scaler.log_tail(400)
    assert "scalers/flipped/1: scaler.joblib does not match its signature" in log, log
    assert "scalers/forged/1: signature does not verify" in log, log


def test_a_service_refuses_to_start_on_s3_without_a_signing_key(
    store_url: str, s3_env: dict[str, str], tmp_path: Path
) -> None:
    scaler = scaler_process(store_url, tmp_path / "logs", env=s3_env)
    scaler.start(wait=False)
    assert scaler.wait_exit(timeout=60) != 0
    assert "needs --signing-key or --signing-key-file" in scaler.log_tail(), scaler.log_tail()


def test_a_service_refuses_to_start_on_a_bucket_that_does_not_exist(
    s3_env: dict[str, str], tmp_path: Path
) -> None:
    scaler = scaler_process(
        "s3://no-such-bucket/x", tmp_path / "logs", "--signing-key", SIGNING_KEY, env=s3_env
    )
    scaler.start(wait=False)
    assert scaler.wait_exit(timeout=60) != 0
    assert "bucket 'no-such-bucket' does not exist" in scaler.log_tail(), scaler.log_tail()
