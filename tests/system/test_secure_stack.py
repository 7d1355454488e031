"""Both services with a bearer token and mutual TLS (certificates made at test time), the model -> scaler
channel using them too, driven end to end by the Python client. The scaler reads its token from a file,
the model service from its environment."""

from __future__ import annotations

from pathlib import Path

import grpc
import numpy as np
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from lstm_stack_client import client as stack_client

from protos.lstm_stack.v1 import model_pb2, model_pb2_grpc, scaler_pb2, scaler_pb2_grpc
from service_common.channels import open_channel
from tests.service_common.certs import make_tls_files
from tests.system import workloads
from tests.system.procs import child_env, model_process, running, scaler_process

TOKEN = "e2e-token-9f8e7d6c5b4a39281706"


def test_token_and_mutual_tls_end_to_end(tmp_path: Path) -> None:
    tls = make_tls_files(tmp_path / "tls")
    token_file = tmp_path / "tokens"
    token_file.write_text(f"# lstm-stack tokens\n{TOKEN}\n")
    tls_args = [
        "--tls-cert", str(tls.server_cert),
        "--tls-key", str(tls.server_key),
        "--tls-client-ca", str(tls.ca),
    ]  # fmt: skip
    client_tls = {
        "tls_root_cert": tls.ca,
        "tls_client_cert": tls.client_cert,
        "tls_client_key": tls.client_key,
    }
    scaler = scaler_process(
        tmp_path / "scaler-store",
        tmp_path / "logs",
        "--auth-token-file",
        str(token_file),
        *tls_args,
        channel_kwargs=client_tls,
    )
    model = model_process(
        tmp_path / "model-store",
        tmp_path / "logs",
        scaler,
        *tls_args,
        "--scaler-token-file", str(token_file),
        "--scaler-tls-ca", str(tls.ca),
        "--scaler-tls-cert", str(tls.client_cert),
        "--scaler-tls-key", str(tls.client_key),
        "--warm-on-start", "false",
        env=child_env(LSTM_MODEL_AUTH_TOKEN=TOKEN),
        channel_kwargs=client_tls,
    )  # fmt: skip
    with running(scaler, model):
        # The real client: TLS + client certificate + token.
        with stack_client.connect(
            scaler_address=scaler.address,
            model_address=model.address,
            tls_root_cert=tls.ca,
            tls_client_cert=tls.client_cert,
            tls_client_key=tls.client_key,
            token=TOKEN,
        ) as stack:
            # Training with scaling makes the model service call the scaler service: token + mTLS too.
            with model.channel(token=TOKEN) as channel:
                info = workloads.train(channel, workloads.train_request("secure", epochs=2))
            assert info.x_scaler.scaler_id and info.y_scaler.scaler_id
            x_scaler = stack.scaler.get(info.x_scaler.scaler_id, version=info.x_scaler.version)
            assert x_scaler.n_samples_seen > 0
            prediction = stack.model.predict("secure", np.array([[50.0, 60.0, 70.0]]).reshape(1, 3, 1))
            assert prediction.values.shape == (1, 1)

        for service, call in (
            (scaler, lambda ch: scaler_pb2_grpc.ScalerServiceStub(ch).ListScalers(
                scaler_pb2.ListScalersRequest(), timeout=10)),
            (model, lambda ch: model_pb2_grpc.ModelServiceStub(ch).ListModels(
                model_pb2.ListModelsRequest(), timeout=10)),
        ):  # fmt: skip
            # mTLS but no token: UNAUTHENTICATED; a wrong token too.
            for token in ("", "wrong-token-000000000000"):
                with service.channel(token=token) as channel:
                    with pytest.raises(grpc.RpcError) as info:
                        call(channel)
                    assert info.value.code() == grpc.StatusCode.UNAUTHENTICATED
            # Token but no client certificate, or plaintext: the handshake fails.
            with open_channel(service.address, token=TOKEN, tls_root_cert=tls.ca) as channel:
                with pytest.raises(grpc.RpcError) as info:
                    call(channel)
                assert info.value.code() == grpc.StatusCode.UNAVAILABLE
            with open_channel(service.address, token=TOKEN) as channel:
                with pytest.raises(grpc.RpcError) as info:
                    call(channel)
                assert info.value.code() == grpc.StatusCode.UNAVAILABLE
            # Health needs no token (probes), but still the TLS handshake.
            with service.channel() as channel:
                reply = health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(), timeout=10)
                assert reply.status == health_pb2.HealthCheckResponse.SERVING
    for service in (scaler, model):
        log = service.log_tail(400)
        assert "tls=on (mutual) auth=1 token(s)" in log, log
        assert "UNAUTHENTICATED" in log
