"""`lstm-stack scaler ...` against a real in-process scaler service."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
from sklearn.preprocessing import RobustScaler

from tests.clients.test_cli_input import run_cli
from tests.scaler_service.harness import ScalerServerHandle

TRAIN = "1,2,3;2,3,4;3,4,5;4,5,6;20000,30000,40000"


def test_fit_transform_inverse_get_list_delete(scaler_server: ScalerServerHandle, tmp_path: Path) -> None:
    address = ["--scaler-address", scaler_server.address]
    code, out, err = run_cli(
        *address, "--json", "scaler", "fit", "--kind", "robust", "--id", "demo", "--data", TRAIN
    )
    assert code == 0, err
    info = json.loads(out)
    assert info["id"] == "demo" and info["version"] == 1 and info["n_samples_seen"] == "5"

    code, out, err = run_cli("scaler", "get", "--id", "demo", *address)
    assert code == 0, err
    assert out.startswith("scaler demo v1: robust, layout per-feature, sample shape [3], 3 columns")
    assert "center" in out and "transform(x) = x *" in out

    train = np.array([[float(v) for v in row.split(",")] for row in TRAIN.split(";")])
    expected = RobustScaler().fit(train).transform([[100, 200, 300]])
    code, out, err = run_cli("scaler", "transform", "--id", "demo", "--data", "100,200,300", *address)
    assert code == 0, err
    assert out.startswith("[[ 48.5")
    code, out, err = run_cli(
        "--json", "scaler", "transform", "--id", "demo", "--data", "100,200,300", *address
    )
    assert code == 0, err
    printed = np.array(json.loads(out)["data"])
    np.testing.assert_allclose(printed, expected, rtol=1e-5)  # '100,200,300' is one row of 3 features

    scaled_path = tmp_path / "scaled.npy"
    code, out, err = run_cli(
        "scaler", "transform", "--id", "demo", "--data", TRAIN, "--output", str(scaled_path), *address
    )
    assert code == 0, err
    assert f"wrote [5, 3] to {scaled_path}" in out
    back_path = tmp_path / "back.csv"
    code, _, err = run_cli("scaler", "inverse", "--id", "demo", "--version", "1", "--data", str(scaled_path), "--output", str(back_path), *address)  # fmt: skip
    assert code == 0, err
    np.testing.assert_allclose(np.loadtxt(back_path, delimiter=","), train, rtol=1e-9)

    code, out, _ = run_cli("scaler", "list", *address)
    assert code == 0
    assert out.splitlines()[0].split() == ["id", "version", "kind", "layout", "sample", "samples", "created"]
    assert out.splitlines()[2].split()[:6] == ["demo", "1", "robust", "per-feature", "3", "5"]

    code, out, _ = run_cli("scaler", "delete", "--id", "demo", *address)
    assert code == 0 and "deleted scaler demo versions 1" in out
    code, _, err = run_cli("scaler", "get", "--id", "demo", *address)
    assert code == 1 and "NOT_FOUND" in err


def test_minmax_options_and_server_side_errors(scaler_server: ScalerServerHandle) -> None:
    address = ["--scaler-address", scaler_server.address]
    code, out, err = run_cli(
        *address, "scaler", "fit", "--kind", "minmax", "--feature-range=-1,1", "--data", "1;2;3"
    )
    assert code == 0, err
    assert "data_min   [1]" in out and "data_max   [3]" in out
    code, _, err = run_cli(
        *address, "scaler", "fit", "--kind", "minmax", "--feature-range", "1,-1", "--data", "1;2;3"
    )
    assert code == 1
    assert err.startswith("error: INVALID_ARGUMENT:")
