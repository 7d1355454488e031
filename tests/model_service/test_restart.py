"""Restart keeps every model (same predictions); bad artifacts are skipped, never loaded."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from model_service.model_store import MODEL_FILE
from protos.lstm_stack.v1 import model_pb2, scaler_pb2
from service_common import codec
from tests.model_service.conftest import running_model_server
from tests.model_service.helpers import (
    lstm,
    make_spec,
    predict,
    scaler,
    seed_example,
    tiny_spec,
    train,
    train_request,
    values,
)
from tests.scaler_service.harness import ScalerServerHandle


def test_restart_brings_every_model_back(
    shared_scaler: ScalerServerHandle, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    x, y = seed_example()
    store = tmp_path / "model-store"
    classes = make_spec([lstm(5)], task=model_pb2.MULTICLASS, n_classes=3)
    with running_model_server(store, shared_scaler.address) as first:
        scaled = train_request(
            tiny_spec(), x, y, model_id="kept", x_scaling=scaler(scaler_pb2.ROBUST), y_scaling=scaler()
        )
        kept = [train(first.stub, scaled)[1] for _ in range(2)]
        train(first.stub, train_request(classes, x, np.arange(13) % 3, model_id="labels"))
        train(first.stub, train_request(tiny_spec(), x, y, model_id="broken"))
        before = {
            (model_id, version): predict(first.stub, model_id, x, version)
            for model_id, version in [("kept", 1), ("kept", 2), ("labels", 1)]
        }
        listing = first.stub.ListModels(model_pb2.ListModelsRequest(), timeout=10)
    # One flipped byte in a stored model: its signature no longer verifies.
    model_file = store / "models" / "broken" / "1" / MODEL_FILE
    data = bytearray(model_file.read_bytes())
    data[len(data) // 2] ^= 0x01
    model_file.write_bytes(bytes(data))

    with running_model_server(store, shared_scaler.address, warm_on_start=True) as second:
        after = second.stub.ListModels(model_pb2.ListModelsRequest(), timeout=10)
        assert [(m.id, m.version) for m in after.models] == [("kept", 1), ("kept", 2), ("labels", 1)]
        again = {m.id + str(m.version): m for m in after.models}
        for old in listing.models:
            if old.id != "broken":
                new = again[old.id + str(old.version)]
                assert new.x_scaler == old.x_scaler and list(new.history) == list(old.history)
                assert new.holdout_metrics == old.holdout_metrics and new.created_at == old.created_at
        for (model_id, version), reply in before.items():
            now = predict(second.stub, model_id, x, version)
            if reply.HasField("values"):
                np.testing.assert_allclose(values(now), values(reply), rtol=1e-6)
            else:
                np.testing.assert_allclose(
                    codec.to_numpy(now.probabilities), codec.to_numpy(reply.probabilities), rtol=1e-6
                )
                assert codec.to_numpy(now.labels).tolist() == codec.to_numpy(reply.labels).tolist()
        # The next version of a kept id continues the numbering.
        assert train(second.stub, train_request(tiny_spec(), x, y, model_id="kept"))[1].version == 3
        assert kept[1].version == 2
        # The refused artifact's number is not reused either.
        assert train(second.stub, train_request(tiny_spec(), x, y, model_id="broken"))[1].version == 2
    assert any(
        "skipping model artifact" in r.getMessage() and "broken" in r.getMessage() for r in caplog.records
    )
