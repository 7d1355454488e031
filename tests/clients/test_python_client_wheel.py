"""lstm-stack-client is its own distribution: both wheels build, the client's wheel installs alone in a
fresh virtualenv outside the repo (its dependencies from PyPI), brings none of the services' stack
(TensorFlow, Keras, scikit-learn, service_common), stays small, and runs fit, train, predict, forecast
and export against live services, from Python and through the `lstm-stack` command.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import zipfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.clients.conftest import Stack

REPO_ROOT = Path(__file__).resolve().parents[2]
# Measured with CPython 3.11 manylinux wheels: numpy 2.x alone installs about 73 MiB (45 + 28 MiB of
# bundled OpenBLAS), grpcio about 19, protobuf 2.5, the client and its generated code under 1: about
# 92 MiB in all. A 60 MiB budget cannot hold numpy; this bound catches a heavy dependency creeping in
# (TensorFlow alone is over 500 MiB), and the client's own part has a bound of its own.
MAX_INSTALLED_BYTES = 100 * 1024 * 1024
MAX_CLIENT_OWN_BYTES = 2 * 1024 * 1024


def _run(command: list[str | Path], **kwargs: object) -> subprocess.CompletedProcess[str]:
    result = subprocess.run([str(c) for c in command], capture_output=True, text=True, **kwargs)  # type: ignore[call-overload]
    assert result.returncode == 0, f"{command} failed:\n{result.stdout}\n{result.stderr}"
    return result


def _clean_env() -> dict[str, str]:
    """No PYTHONPATH: the virtualenv must see only what was installed into it."""
    return {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV", "PYTHONHOME")}


@pytest.fixture(scope="module")
def wheels(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    out = tmp_path_factory.mktemp("wheels")
    for source in (REPO_ROOT / "clients" / "python", REPO_ROOT):
        # No build isolation: setuptools from this interpreter's environment, nothing downloaded.
        _run(
            [sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-w", out, source],
            timeout=600,
        )
    found = {p.name.split("-")[0]: p for p in out.glob("*.whl")}
    assert set(found) == {"lstm_stack_client", "lstm_stack"}, sorted(found)
    return found


@pytest.fixture(scope="module")
def venv(wheels: dict[str, Path], tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    root = tmp_path_factory.mktemp("client-venv")
    assert REPO_ROOT not in root.parents
    base = getattr(sys, "_base_executable", sys.executable)
    _run([base, "-m", "venv", root / "venv"], timeout=300, env=_clean_env())
    python = root / "venv" / "bin" / "python"
    _run(
        [python, "-m", "pip", "install", "--disable-pip-version-check", wheels["lstm_stack_client"]],
        timeout=900,
        env=_clean_env(),
        cwd=root,
    )
    yield root / "venv"


def test_the_wheels_split_client_and_services(wheels: dict[str, Path]) -> None:
    client = zipfile.ZipFile(wheels["lstm_stack_client"]).namelist()
    server = zipfile.ZipFile(wheels["lstm_stack"]).namelist()
    assert "protos/lstm_stack/v1/tensor_pb2.py" in client and "protos/lstm_stack/v1/model.proto" in client
    assert "lstm_stack_client/codec.py" in client and "lstm_stack_client/py.typed" in client
    assert not [n for n in client if n.startswith(("service_common/", "model_service/", "scaler_service/"))]
    # The services' wheel packages neither the client nor the contract again: it requires them.
    assert not [n for n in server if n.startswith(("lstm_stack_client/", "protos/"))], server
    metadata = next(n for n in server if n.endswith(".dist-info/METADATA"))
    requires = [
        line
        for line in zipfile.ZipFile(wheels["lstm_stack"]).read(metadata).decode().splitlines()
        if line.startswith("Requires-Dist:")
    ]
    assert any("lstm-stack-client" in line for line in requires), requires
    client_meta = next(n for n in client if n.endswith(".dist-info/METADATA"))
    client_requires = sorted(
        line.split(":", 1)[1].strip().split(" ")[0].split(">")[0].split("=")[0].split("<")[0].split(";")[0]
        for line in zipfile.ZipFile(wheels["lstm_stack_client"]).read(client_meta).decode().splitlines()
        if line.startswith("Requires-Dist:") and "extra ==" not in line
    )
    assert client_requires == ["grpcio", "numpy", "protobuf"], client_requires


def test_the_client_venv_has_none_of_the_services_stack(venv: Path) -> None:
    script = (
        "import importlib.util, json, lstm_stack_client, protos.lstm_stack.v1.model_pb2;"
        "print(json.dumps({m: importlib.util.find_spec(m) is not None"
        " for m in ['tensorflow', 'keras', 'sklearn', 'service_common', 'scaler_service', 'model_service',"
        " 'grpc_health', 'matplotlib']} | {'client': lstm_stack_client.__file__}))"
    )
    result = _run([venv / "bin" / "python", "-c", script], env=_clean_env(), cwd=venv, timeout=120)
    found = json.loads(result.stdout)
    assert Path(found.pop("client")).is_relative_to(venv)
    assert not any(found.values()), found


def _size(path: Path) -> int:
    return (
        path.stat().st_size
        if path.is_file()
        else sum(f.stat().st_size for f in path.rglob("*") if f.is_file())
    )


def test_the_installed_client_is_small(venv: Path) -> None:
    site = next((venv / "lib").glob("python3.*/site-packages"))
    # pip and setuptools come with every virtualenv; what the client brought is the rest.
    skip = (
        "pip",
        "setuptools",
        "pkg_resources",
        "_distutils_hack",
        "distutils-precedence.pth",
        "__pycache__",
    )
    sizes = {entry.name: _size(entry) for entry in site.iterdir() if not entry.name.startswith(skip)}
    total = sum(sizes.values())
    own = sum(size for name, size in sizes.items() if name.startswith(("lstm_stack_client", "protos")))
    biggest = ", ".join(f"{n} {s / 2**20:.1f}" for n, s in sorted(sizes.items(), key=lambda i: -i[1])[:5])
    print(f"installed: {total / 2**20:.1f} MiB in all, the client's own {own / 2**20:.2f} MiB ({biggest})")
    assert own <= MAX_CLIENT_OWN_BYTES, f"{own / 2**20:.2f} MiB"
    assert total <= MAX_INSTALLED_BYTES, f"{total / 2**20:.1f} MiB: {biggest}"


def test_installed_client_round_trip_against_live_services(venv: Path, stack: Stack, tmp_path: Path) -> None:
    script = tmp_path / "roundtrip.py"
    script.write_text(Path(__file__).with_name("python_wheel_roundtrip.py").read_text())
    result = _run(
        [venv / "bin" / "python", script, stack.scaler_address, stack.model_address],
        env=_clean_env(),
        cwd=tmp_path,
        timeout=600,
    )
    out = json.loads(result.stdout.splitlines()[-1])
    assert out["fit"]["version"] == 1 and out["fit"]["data_max"] == [40, 50, 60]
    assert out["train"]["state"] == "READY", out
    assert len(out["predict"]) == 1, out
    assert out["forecast"] == {"horizon": 2, "shape": [1, 2, 1]}, out
    assert out["export"]["size_bytes"] == out["export"]["file_bytes"] > 1000, out

    # The console script of the same install: list what was just trained, then export it again.
    cli = [venv / "bin" / "lstm-stack", *stack.cli_args()]
    listed = _run([*cli, "--json", "model", "list"], env=_clean_env(), cwd=tmp_path, timeout=120)
    assert out["train"]["id"] in listed.stdout, listed.stdout
    target = tmp_path / "cli.onnx"
    _run(
        [*cli, "model", "export", "--id", out["train"]["id"], "-o", target],
        env=_clean_env(),
        cwd=tmp_path,
        timeout=300,
    )
    # Each export converts afresh (sizes differ by a few bytes between runs): an ONNX ModelProto it is.
    data = target.read_bytes()
    assert len(data) > 1000 and data[0] == 0x08, len(data)
