"""Client transport behaviour against scripted servers: deadlines, retries, metadata, TLS, limits, cancel."""

from __future__ import annotations

import subprocess
import threading
from collections.abc import Iterator
from pathlib import Path

import grpc
import numpy as np
import pytest
from lstm_stack_client import (
    LstmStackError,
    RetryPolicy,
    TrainingCancelled,
    channel_credentials,
    connect,
    model_spec,
)

from tests.clients.fakes import Script, as_array, start_fake

FAST_RETRY = RetryPolicy(max_attempts=4, initial_backoff=0.01, max_backoff=0.05)


@pytest.fixture
def script() -> Script:
    return Script()


@pytest.fixture
def fake(script: Script) -> Iterator[str]:
    server, address = start_fake(script)
    yield address
    script.release.set()
    server.stop(None).wait()


def test_idempotent_call_is_retried_until_the_server_is_available(fake: str, script: Script) -> None:
    script.fail("GetScaler", grpc.StatusCode.UNAVAILABLE, times=2)
    with connect(fake, retry=FAST_RETRY) as client:
        info = client.scaler.get("abc", version=2)
    assert (info.id, info.version) == ("abc", 2)
    assert script.calls["GetScaler"] == 3


def test_retries_stop_after_max_attempts(fake: str, script: Script) -> None:
    script.fail("Transform", grpc.StatusCode.UNAVAILABLE)
    with connect(fake, retry=FAST_RETRY) as client, pytest.raises(LstmStackError) as caught:
        client.scaler.transform("abc", np.ones((2, 2)))
    assert caught.value.code == grpc.StatusCode.UNAVAILABLE
    assert caught.value.attempts == 4
    assert script.calls["Transform"] == 4


@pytest.mark.parametrize("method", ["Fit", "DeleteScaler"])
def test_non_idempotent_calls_are_never_retried(fake: str, script: Script, method: str) -> None:
    script.fail(method, grpc.StatusCode.UNAVAILABLE)
    with connect(fake, retry=FAST_RETRY) as client, pytest.raises(LstmStackError) as caught:
        if method == "Fit":
            client.scaler.fit(np.ones((3, 2)), "minmax")
        else:
            client.scaler.delete("abc")
    assert caught.value.code == grpc.StatusCode.UNAVAILABLE
    assert script.calls[method] == 1


def test_train_is_never_retried(fake: str, script: Script) -> None:
    script.fail("Train", grpc.StatusCode.UNAVAILABLE)
    with connect(fake, retry=FAST_RETRY) as client:
        run = client.model.train(model_spec("lstm:2", timesteps=3), np.ones((4, 3)), np.ones(4), epochs=2)
        with pytest.raises(LstmStackError) as caught:
            run.result()
    assert caught.value.code == grpc.StatusCode.UNAVAILABLE
    assert script.calls["Train"] == 1


@pytest.mark.parametrize(
    ("details", "code"),
    [
        # What grpc says when a proxy (Envoy) resets the stream of a Train whose replica died.
        ("Received RST_STREAM with error code 2", grpc.StatusCode.UNAVAILABLE),
        ("a bug on the server", grpc.StatusCode.INTERNAL),
    ],
)
def test_a_train_stream_reset_on_its_way_is_unavailable(
    fake: str, script: Script, details: str, code: grpc.StatusCode
) -> None:
    script.fail("Train", grpc.StatusCode.INTERNAL, message=details)
    with connect(fake, retry=FAST_RETRY) as client:
        run = client.model.train(model_spec("lstm:2", timesteps=3), np.ones((4, 3)), np.ones(4), epochs=2)
        with pytest.raises(LstmStackError) as caught:
            run.result()
    assert caught.value.code == code and details in caught.value.details
    assert ("nothing was saved" in caught.value.details) == (code == grpc.StatusCode.UNAVAILABLE)
    assert script.calls["Train"] == 1  # still never retried


def test_other_errors_are_not_retried(fake: str, script: Script) -> None:
    script.fail("GetScaler", grpc.StatusCode.NOT_FOUND)
    with connect(fake, retry=FAST_RETRY) as client, pytest.raises(LstmStackError) as caught:
        client.scaler.get("missing")
    assert caught.value.code == grpc.StatusCode.NOT_FOUND
    assert "scripted NOT_FOUND" in caught.value.details
    assert script.calls["GetScaler"] == 1


def test_a_server_that_is_down_gives_unavailable_after_backing_off(unused_address: str) -> None:
    pauses: list[float] = []
    policy = RetryPolicy(max_attempts=3, initial_backoff=0.01, multiplier=2.0, jitter=0.0)
    with connect(unused_address, retry=policy, timeout=5) as client:
        client.model._rpc.sleep = pauses.append
        with pytest.raises(LstmStackError) as caught:
            client.model.predict("m", np.ones((1, 3)))
    assert caught.value.code == grpc.StatusCode.UNAVAILABLE
    assert caught.value.attempts == 3
    assert pauses == [0.01, 0.02]


def test_every_call_carries_the_default_deadline(fake: str, script: Script) -> None:
    with connect(fake, timeout=7.5, train_timeout=90) as client:
        client.scaler.get("abc")
        client.model.predict("m", np.ones(3))
        client.scaler.transform("abc", np.ones((1, 1)), timeout=2.0)
        client.model.train(model_spec("lstm:2", timesteps=3), np.ones((4, 3)), np.ones(4), epochs=1).result()
    # The server sees the deadline as time remaining, give or take clock rounding (hence the slack).
    for method in ("GetScaler", "Predict"):
        (remaining,) = script.deadlines[method]
        assert remaining is not None and 0 < remaining < 8
    (remaining,) = script.deadlines["Transform"]
    assert remaining is not None and 0 < remaining < 2.5
    (remaining,) = script.deadlines["Train"]
    assert remaining is not None and 8 < remaining < 91


def test_a_call_past_its_deadline_fails_with_deadline_exceeded(fake: str, script: Script) -> None:
    with connect(fake, timeout=0.3, retry=FAST_RETRY) as client, pytest.raises(LstmStackError) as caught:
        client.scaler.get("slow")
    assert caught.value.code == grpc.StatusCode.DEADLINE_EXCEEDED
    assert script.calls["GetScaler"] == 1


def test_token_is_sent_as_bearer_metadata(fake: str, script: Script) -> None:
    with connect(fake, token="s3cret") as client:
        client.scaler.get("abc")
        client.model.train(model_spec("lstm:2", timesteps=3), np.ones((4, 3)), np.ones(4), epochs=1).result()
    with connect(fake) as client:
        client.scaler.get("abc")
    with_token, without_token = script.metadata["GetScaler"]
    assert ("authorization", "Bearer s3cret") in with_token
    assert ("authorization", "Bearer s3cret") in script.metadata["Train"][0]
    assert not any(key == "authorization" for key, _ in without_token)


def test_numpy_round_trip_beyond_the_grpc_default_message_limit(fake: str, script: Script) -> None:
    # 8 MB each way: more than gRPC's 4 MB default, within the services' 64 MB.
    data = np.random.default_rng(0).normal(size=(1024 * 1024,)).reshape(-1, 4)
    with connect(fake) as client:
        doubled = client.scaler.transform("abc", data)
    assert doubled.dtype == np.float64
    np.testing.assert_array_equal(doubled, data * 2)


def test_predict_takes_one_window_as_1d_and_returns_numpy(fake: str, script: Script) -> None:
    with connect(fake) as client:
        prediction = client.model.predict("m", [50, 60, 70])
    sent = as_array(script.requests["Predict"][0].x)
    assert sent.shape == (1, 3)
    assert prediction.values is not None and prediction.values.shape == (1, 1)
    assert prediction.values[0, 0] == 180
    assert prediction.labels is None and prediction.probabilities is None


def test_list_follows_page_tokens(fake: str, script: Script) -> None:
    with connect(fake) as client:
        scalers = client.scaler.list()
    assert [s.id for s in scalers] == ["s0", "s1", "s2"]
    assert [r.page_token for r in script.requests["ListScalers"]] == ["", "1", "2"]


def test_non_numeric_input_is_refused_before_any_call(fake: str, script: Script) -> None:
    with connect(fake) as client, pytest.raises(TypeError, match="expected numbers"):
        client.scaler.fit(np.array([["a", "b"]]), "minmax")
    assert script.calls["Fit"] == 0


def test_train_events_are_iterated_and_cancel_stops_the_stream(fake: str, script: Script) -> None:
    with connect(fake) as client:
        run = client.model.train(
            model_spec("lstm:2", timesteps=3), np.ones((4, 3)), np.ones(4), epochs=1000, model_id="slow"
        )
        kinds = []
        for event in run:
            kinds.append(event.WhichOneof("event"))
            if len(run.epochs) == 2:
                run.cancel()
        assert run.cancelled
        assert kinds[:3] == ["started", "epoch", "epoch"]
        assert run.model is None
        with pytest.raises(TrainingCancelled):
            run.result()
    assert script.train_cancelled.wait(5), "the server never saw the cancellation"


def test_train_result_collects_the_history(fake: str) -> None:
    with connect(fake) as client:
        run = client.model.train(model_spec("lstm:2", timesteps=3), np.ones((4, 3)), np.ones(4), epochs=3)
        model = run.result()
    assert model.id == "m"
    assert run.started is not None and run.started.n_train == 3
    assert [e.epoch for e in run.epochs] == [1, 2, 3]


# ---- TLS


def _openssl(*args: str, cwd: Path) -> None:
    subprocess.run(["openssl", *args], cwd=cwd, check=True, capture_output=True)


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A throwaway CA, a server certificate for 127.0.0.1 and a client certificate."""
    root = tmp_path_factory.mktemp("pki")
    ec = ["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes"]
    _openssl("req", "-x509", *ec, "-keyout", "ca.key", "-out", "ca.pem", "-days", "1", "-subj", "/CN=test-ca",
             "-addext", "basicConstraints=critical,CA:TRUE", "-addext", "keyUsage=keyCertSign", cwd=root)  # fmt: skip
    (root / "server.ext").write_text("subjectAltName=IP:127.0.0.1,DNS:localhost\n")
    (root / "client.ext").write_text("extendedKeyUsage=clientAuth\n")
    for name in ("server", "client"):
        _openssl(
            "req", *ec, "-keyout", f"{name}.key", "-out", f"{name}.csr", "-subj", f"/CN={name}", cwd=root
        )
        _openssl("x509", "-req", "-in", f"{name}.csr", "-CA", "ca.pem", "-CAkey", "ca.key", "-CAcreateserial",
                 "-out", f"{name}.pem", "-days", "1", "-extfile", f"{name}.ext", cwd=root)  # fmt: skip
    return root


@pytest.fixture
def tls_fake(pki: Path, script: Script) -> Iterator[str]:
    credentials = grpc.ssl_server_credentials(
        [((pki / "server.key").read_bytes(), (pki / "server.pem").read_bytes())],
        root_certificates=(pki / "ca.pem").read_bytes(),
        require_client_auth=True,
    )
    server, address = start_fake(script, credentials=credentials)
    yield address
    server.stop(None).wait()


def test_mutual_tls_with_token(tls_fake: str, script: Script, pki: Path) -> None:
    with connect(
        tls_fake,
        tls_root_cert=pki / "ca.pem",
        tls_client_cert=pki / "client.pem",
        tls_client_key=(pki / "client.key").read_bytes(),
        token="t0k",
    ) as client:
        info = client.scaler.get("over-tls")
    assert info.id == "over-tls"
    assert ("authorization", "Bearer t0k") in script.metadata["GetScaler"][0]


def test_tls_server_refuses_plaintext_and_unknown_clients(tls_fake: str, script: Script, pki: Path) -> None:
    with connect(tls_fake, retry=RetryPolicy(max_attempts=1), timeout=5) as plain:
        with pytest.raises(LstmStackError) as caught:
            plain.scaler.get("x")
        assert caught.value.code == grpc.StatusCode.UNAVAILABLE
    with connect(
        tls_fake, tls_root_cert=pki / "ca.pem", retry=RetryPolicy(max_attempts=1), timeout=5
    ) as anon:
        with pytest.raises(LstmStackError) as caught:
            anon.scaler.get("x")
        assert caught.value.code == grpc.StatusCode.UNAVAILABLE
    assert script.calls["GetScaler"] == 0


def test_client_certificate_needs_its_key() -> None:
    with pytest.raises(ValueError, match="both"):
        channel_credentials(tls_client_cert=b"cert")
    assert isinstance(channel_credentials(), grpc.ChannelCredentials)


@pytest.fixture
def unused_address() -> str:
    from demo.services import free_port

    return f"127.0.0.1:{free_port()}"


def test_wait_until_serving_times_out_on_a_dead_address(unused_address: str) -> None:
    with connect(unused_address) as client, pytest.raises(LstmStackError) as caught:
        client.scaler.wait_until_serving(timeout=0.5)
    assert caught.value.code == grpc.StatusCode.DEADLINE_EXCEEDED
    assert "not SERVING" in caught.value.details


def test_cancel_callback_is_thread_safe(fake: str) -> None:
    # Ctrl-C handling calls cancel() from the main thread while the stream is read; cancel from another
    # thread must end the iteration too.
    with connect(fake) as client:
        run = client.model.train(
            model_spec("lstm:2", timesteps=3), np.ones((4, 3)), np.ones(4), epochs=1000, model_id="slow"
        )
        timer = threading.Timer(0.3, run.cancel)
        timer.start()
        events = list(run)
        timer.join()
    assert run.cancelled and run.model is None
    assert 1 <= len(events) < 1000


def test_every_method_retries_unavailable_only_if_it_is_idempotent(unused_address: str) -> None:
    """Against a dead address every call is UNAVAILABLE: idempotent ones use every attempt, the rest one."""
    spec = model_spec("lstm:2", timesteps=3)
    x, y = np.ones((4, 3)), np.ones(4)
    policy = RetryPolicy(max_attempts=3, initial_backoff=0.01, jitter=0.0)
    with connect(unused_address, retry=policy, timeout=10) as client:
        for rpc in (client.scaler._rpc, client.model._rpc):
            rpc.sleep = lambda _seconds: None
        calls = {
            "Transform": lambda: client.scaler.transform("s", x),
            "InverseTransform": lambda: client.scaler.inverse_transform("s", x),
            "GetScaler": lambda: client.scaler.get("s"),
            "ListScalers": lambda: client.scaler.list(),
            "ValidateSpec": lambda: client.model.validate(spec),
            "Predict": lambda: client.model.predict("m", x),
            "Evaluate": lambda: client.model.evaluate("m", x, y),
            "GetModel": lambda: client.model.get("m"),
            "ListModels": lambda: client.model.list(),
            "Fit": lambda: client.scaler.fit(x, "minmax"),
            "FitStream": lambda: client.scaler.fit_stream([x, x], "minmax"),
            "FitTransform": lambda: client.scaler.fit_transform(x, "minmax", {"test": x}),
            "DeleteScaler": lambda: client.scaler.delete("s"),
            "DeleteModel": lambda: client.model.delete("m"),
            "Train": lambda: client.model.train(spec, x, y, epochs=1).result(),
        }
        attempts = {}
        for name, call in calls.items():
            with pytest.raises(LstmStackError) as caught:
                call()
            assert caught.value.code == grpc.StatusCode.UNAVAILABLE, name
            attempts[name] = caught.value.attempts
    idempotent = {"Transform", "InverseTransform", "GetScaler", "ListScalers", "ValidateSpec", "Predict"}
    idempotent |= {"Evaluate", "GetModel", "ListModels"}
    assert attempts == {name: 3 if name in idempotent else 1 for name in calls}


def test_a_forecast_needs_exactly_one_of_history_and_dataset(fake: str, script: Script) -> None:
    with connect(fake, retry=FAST_RETRY) as client:
        for kwargs in ({}, {"history": [1.0, 2.0, 3.0], "dataset_id": "ds-" + "0" * 32}):
            with pytest.raises(ValueError, match="history or dataset_id"):
                client.model.forecast("m", **kwargs)
    assert script.calls["Forecast"] == 0
