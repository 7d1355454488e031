"""`lstm-stack dataset ...` and `model train --dataset` against real in-process services."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from tests.clients.conftest import Stack
from tests.clients.test_cli_input import run_cli


def _write_csv(path: Path, rows: int) -> np.ndarray:
    t = np.arange(rows, dtype=np.float64)
    series = np.stack([t % 10, (t % 7) * 2], axis=1)
    path.write_text("load,temp\n" + "\n".join(f"{a},{b}" for a, b in series) + "\n")
    return series


def test_upload_a_csv_series_list_get_train_on_it_and_delete_it(stack: Stack, tmp_path: Path) -> None:
    series = _write_csv(tmp_path / "series.csv", 120)
    code, out, err = run_cli(
        *stack.cli_args(),
        "dataset",
        "upload",
        "--series",
        str(tmp_path / "series.csv"),
        "--rows-per-chunk",
        "50",
        "--json",
    )
    assert code == 0, err
    info = json.loads(out)
    # 3 chunks, stored as one part.
    assert (info["rows"], info["chunks"], info["columns"]) == ("120", 1, ["load", "temp"])
    dataset_id = info["id"]
    # The same series as a memory-mapped .npy with --columns: the same dataset.
    np.save(tmp_path / "series.npy", series)
    code, out, err = run_cli(
        *stack.cli_args(),
        "dataset",
        "upload",
        "--series",
        str(tmp_path / "series.npy"),
        "--columns",
        "load,temp",
    )
    assert code == 0, err
    assert out.startswith(f"dataset {dataset_id}: series, 120 rows in 1 part(s)")  # the CSV upload's parts
    code, out, err = run_cli(*stack.cli_args(), "dataset", "list")
    assert code == 0 and dataset_id in out and "load,temp" in out
    code, out, err = run_cli(*stack.cli_args(), "dataset", "get", "--id", dataset_id)
    assert code == 0 and "columns: load, temp" in out
    code, out, err = run_cli(
        *stack.cli_args(),
        "model", "train", "--layers", "lstm:3", "--timesteps", "3", "--features", "2",
        "--dataset", dataset_id, "--target-columns", "temp", "--epochs", "1", "--json",
    )  # fmt: skip
    assert code == 0, err
    assert json.loads(out)["dataset_id"] == dataset_id
    code, out, err = run_cli(*stack.cli_args(), "dataset", "delete", "--id", dataset_id)
    assert code == 0 and out.strip() == f"deleted dataset {dataset_id}"
    code, out, err = run_cli(*stack.cli_args(), "dataset", "get", "--id", dataset_id)
    assert code == 1 and "NOT_FOUND" in err


def test_usage_errors_say_what_is_needed(stack: Stack, tmp_path: Path) -> None:
    np.save(tmp_path / "s.npy", np.ones((5, 2)))
    code, _, err = run_cli(*stack.cli_args(), "dataset", "upload", "--series", str(tmp_path / "s.npy"))
    assert code == 2 and "needs --columns" in err
    code, _, err = run_cli(*stack.cli_args(), "dataset", "upload", "--series", "data.txt")
    assert code == 2 and "expected a .npy or .csv file" in err
    code, _, err = run_cli(*stack.cli_args(), "dataset", "upload", "--x", "x.csv", "--y", "y.csv")
    assert code == 2 and "--x and --y as .npy files" in err
    (tmp_path / "bad.csv").write_text("a,b\n1,nan\n")
    code, _, err = run_cli(*stack.cli_args(), "dataset", "upload", "--series", str(tmp_path / "bad.csv"))
    assert code == 1 and "INVALID_ARGUMENT" in err and "finite" in err
