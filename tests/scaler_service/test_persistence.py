"""Versions survive a restart; tampered artifacts are refused, logged and skipped; nothing half-written."""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import pytest

from protos.lstm_stack.v1 import scaler_pb2
from tests.scaler_service.harness import running_scaler_server
from tests.scaler_service.helpers import fit, random_data, transform

PROBE = random_data((6, 3), seed=99)


def _fit_several(server) -> dict[tuple[str, int], np.ndarray]:
    """Fit a few versions and return what each transforms PROBE to."""
    outputs = {}
    for index, (kind, scaler_id) in enumerate(
        [
            ("minmax", "alpha"),
            ("standard", "alpha"),
            ("robust", "beta"),
            ("maxabs", ""),
            ("standard", "alpha"),
        ]
    ):
        info = fit(server.stub, random_data((30, 3), seed=index), kind, scaler_id=scaler_id)
        outputs[(info.id, info.version)] = transform(server.stub, info.id, PROBE, version=info.version)
    return outputs


def _listed(server) -> list[scaler_pb2.ScalerInfo]:
    return list(server.stub.ListScalers(scaler_pb2.ListScalersRequest(page_size=1000)).scalers)


def test_restart_keeps_every_version(tmp_path: Path) -> None:
    store = tmp_path / "store"
    with running_scaler_server(store) as first:
        outputs = _fit_several(first)
        before = _listed(first)
    with running_scaler_server(store) as second:
        after = _listed(second)
        assert after == before  # every field, statistics and created_at included
        assert sorted(outputs) == sorted((info.id, info.version) for info in after)
        for (scaler_id, version), expected in outputs.items():
            np.testing.assert_array_equal(transform(second.stub, scaler_id, PROBE, version=version), expected)
        assert fit(second.stub, PROBE, "minmax", scaler_id="alpha").version == 4


def test_tampered_artifact_is_refused_logged_and_skipped(
    tmp_path: Path, caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    store = tmp_path / "store"
    with running_scaler_server(store) as first:
        fit(first.stub, PROBE, "minmax", scaler_id="victim")
        fit(first.stub, PROBE, "standard", scaler_id="bystander")
    payload = store / "scalers" / "victim" / "1" / "scaler.joblib"
    payload.write_bytes(payload.read_bytes() + b"\x00")

    # Prove the tampered bytes are never unpickled, not just that the load fails afterwards.
    import scaler_service.scaler_registry as registry_module

    loaded: list[int] = []
    real_load = registry_module.joblib.load
    monkeypatch.setattr(registry_module.joblib, "load", lambda f: loaded.append(1) or real_load(f))

    with (
        caplog.at_level(logging.ERROR, logger="scaler_service.scaler_registry"),
        running_scaler_server(store) as second,
    ):
        assert [(i.id, i.version) for i in _listed(second)] == [("bystander", 1)]
        assert len(loaded) == 1  # only the bystander was deserialized
        # The skipped artifact keeps its number: the next fit of the id does not collide with it.
        assert fit(second.stub, PROBE, "minmax", scaler_id="victim").version == 2
    refusals = [r.getMessage() for r in caplog.records if "victim" in r.getMessage()]
    assert refusals and "does not match its signature" in refusals[0]


def test_artifact_signed_with_another_key_is_refused(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    store = tmp_path / "store"
    with running_scaler_server(store, signing_key="first-key-0123456789") as first:
        fit(first.stub, PROBE, "minmax", scaler_id="old")
    with (
        caplog.at_level(logging.ERROR),
        running_scaler_server(store, signing_key="other-key-0123456789") as second,
    ):
        assert _listed(second) == []
    assert any("signature does not verify" in r.getMessage() for r in caplog.records)


def test_deleted_versions_stay_deleted_and_numbers_unique_after_restart(tmp_path: Path) -> None:
    store = tmp_path / "store"
    with running_scaler_server(store) as first:
        for _ in range(3):
            fit(first.stub, PROBE, "maxabs", scaler_id="gone")
        first.stub.DeleteScaler(scaler_pb2.DeleteScalerRequest(scaler_id="gone"))
        fit(first.stub, PROBE, "maxabs", scaler_id="kept")
        first.stub.DeleteScaler(scaler_pb2.DeleteScalerRequest(scaler_id="kept", version=1))
    with running_scaler_server(store) as second:
        assert _listed(second) == []
        assert fit(second.stub, PROBE, "maxabs", scaler_id="gone").version == 4
        assert fit(second.stub, PROBE, "maxabs", scaler_id="kept").version == 2


def test_store_layout_is_signed_and_leaves_no_temp_files(tmp_path: Path) -> None:
    store = tmp_path / "store"
    with running_scaler_server(store) as server:
        fit(server.stub, PROBE, "robust", scaler_id="layout")
        # A write cut short by a crash leaves a temp directory; the next start sweeps it.
        (store / "scalers" / ".tmp-crashed").mkdir()
    assert sorted(p.name for p in (store / "scalers" / "layout" / "1").iterdir()) == [
        "SIGNATURE",
        "meta.json",
        "scaler.joblib",
    ]
    assert (store / ".signing-key").stat().st_mode & 0o777 == 0o600
    with running_scaler_server(store) as server:
        assert [i.id for i in _listed(server)] == ["layout"]
    assert not list((store / "scalers").glob(".tmp-*"))
