"""The committed generated code must be exactly what `make protos` produces from protos/."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[2]


def _generated_files(root: Path) -> dict[str, bytes]:
    found = {}
    for pattern in ("*_pb2.py", "*_pb2.pyi", "*_pb2_grpc.py", "*_pb2_grpc.pyi"):
        for path in (root / "protos").rglob(pattern):
            found[str(path.relative_to(root))] = path.read_bytes()
    return found


def test_generated_code_is_current(tmp_path: Path) -> None:
    subprocess.run(
        [sys.executable, str(REPO_ROOT / "scripts" / "gen_protos.py"), "--out", str(tmp_path)],
        check=True,
        capture_output=True,
    )
    fresh = _generated_files(tmp_path)
    committed = _generated_files(REPO_ROOT)
    assert fresh, "protoc generated nothing"
    stale = sorted(name for name in fresh if committed.get(name) != fresh[name])
    orphans = sorted(set(committed) - set(fresh))
    assert not stale, f"generated code is stale, run `make protos`: {stale}"
    assert not orphans, f"generated files without a .proto: {orphans}"


def test_generated_packages_import_by_folder_layout() -> None:
    from protos.lstm_stack.v1 import model_pb2, model_pb2_grpc, scaler_pb2_grpc

    assert model_pb2.DESCRIPTOR.package == "lstm_stack.v1"
    assert hasattr(model_pb2_grpc, "ModelServiceStub")
    assert hasattr(scaler_pb2_grpc, "ScalerServiceServicer")
