"""The packed npm package works on its own: `npm pack` in clients/node, `npm install <tarball>` in an
empty folder outside the repo, then a live round trip through the installed copy (fit a scaler, train a
tiny series model, predict, forecast, export ONNX) against both services, and the typed example compiled
against the installed declarations. npm fetches the package's dependencies from the registry.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from pathlib import Path

import pytest

from tests.clients.conftest import Stack

REPO_ROOT = Path(__file__).resolve().parents[2]
NODE_DIR = REPO_ROOT / "clients" / "node"
PROTOS = sorted(p.name for p in (REPO_ROOT / "protos" / "lstm_stack" / "v1").glob("*.proto"))


def _tool(name: str) -> str:
    path = shutil.which(name)
    if path is None:
        pytest.fail(f"`{name}` is not on PATH (`make node-deps`)", pytrace=False)
    return path


def _run(command: list[str], cwd: Path, **kwargs: object) -> subprocess.CompletedProcess[str]:
    result = subprocess.run(command, cwd=cwd, capture_output=True, text=True, **kwargs)  # type: ignore[call-overload]
    assert result.returncode == 0, f"{' '.join(command)} failed:\n{result.stdout}\n{result.stderr}"
    return result


@pytest.fixture(scope="module")
def installed(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """An app folder outside the repo with the packed package installed; returns the folder."""
    npm = _tool("npm")
    _tool("node")
    if not (NODE_DIR / "node_modules" / "typescript").is_dir():
        _run([npm, "ci", "--no-audit", "--no-fund"], NODE_DIR, timeout=300)
    packs = tmp_path_factory.mktemp("npm-pack")
    # npm pack runs the prepare script first: the tarball gets a current copy of protos/ and types/.
    result = _run([npm, "pack", "--json", "--pack-destination", str(packs)], NODE_DIR, timeout=300)
    tarball = packs / json.loads(result.stdout)[0]["filename"]
    assert tarball.is_file(), result.stdout
    app = tmp_path_factory.mktemp("app")
    assert REPO_ROOT not in app.parents
    (app / "package.json").write_text(json.dumps({"name": "app", "version": "1.0.0", "private": True}))
    _run([npm, "install", "--no-audit", "--no-fund", str(tarball)], app, timeout=600)
    return app


def test_the_installed_package_holds_its_protos_and_declarations(installed: Path) -> None:
    package = installed / "node_modules" / "@lstm-stack" / "client"
    assert sorted(p.name for p in (package / "protos" / "lstm_stack" / "v1").glob("*.proto")) == PROTOS
    assert (package / "index.d.ts").is_file() and (
        package / "types" / "lstm_stack" / "v1" / "index.d.ts"
    ).is_file()
    assert not (package / "test").exists() and not (package / "scripts").exists()
    manifest = json.loads((installed / "package.json").read_text())
    assert manifest["dependencies"]["@lstm-stack/client"].startswith("file:")


def test_installed_package_round_trip_against_live_services(installed: Path, stack: Stack) -> None:
    shutil.copy2(Path(__file__).with_name("node_install_roundtrip.js"), installed / "roundtrip.js")
    env = {
        **os.environ,
        "LSTM_STACK_SCALER_ADDRESS": stack.scaler_address,
        "LSTM_STACK_MODEL_ADDRESS": stack.model_address,
        "NODE_PATH": "",
    }
    result = _run([_tool("node"), "roundtrip.js"], installed, env=env, timeout=600)
    steps = {line["step"]: line for line in map(json.loads, result.stdout.splitlines())}

    package = steps["package"]
    assert Path(package["main"]).is_relative_to(installed / "node_modules" / "@lstm-stack" / "client")
    assert Path(package["proto_root"]).is_relative_to(installed), package
    assert len(package["protos"]) == len(PROTOS)

    assert steps["fit"]["version"] == 1 and steps["fit"]["data_max"] == [40, 50, 60]
    assert steps["fit"]["scaled"] == [[pytest.approx(1.0)] * 3]
    train = steps["train"]
    assert train["state"] == "READY" and train["epochs"] == [1, 2], train
    values = steps["predict"]["values"]
    assert len(values) == 1 and all(isinstance(v, float | int) for v in values[0]), values
    forecast = steps["forecast"]
    assert forecast["horizon"] == 2
    assert len(forecast["point"]) == 1 and len(forecast["point"][0]) == 2, forecast
    export = steps["export"]
    assert export["size_bytes"] == export["file_bytes"] > 1000, export
    assert len(export["sha256"]) == 64
    assert export["first"][0] == 0x08, export  # ONNX ModelProto: field 1 (ir_version), a varint


def test_typed_example_compiles_against_the_installed_package(installed: Path) -> None:
    """The same usage.ts as in the repo, now resolving `@lstm-stack/client` from node_modules."""
    shutil.copy2(NODE_DIR / "test" / "types" / "usage.ts", installed / "usage.ts")
    config = {
        "compilerOptions": {
            "strict": True,
            "noEmit": True,
            "target": "es2022",
            "module": "commonjs",
            "moduleResolution": "node10",
            "esModuleInterop": True,
            "types": ["node"],
            # @types/node from the repo's dev dependencies: the app itself installed only the client.
            "typeRoots": [str(NODE_DIR / "node_modules" / "@types")],
        },
        "files": ["usage.ts"],
    }
    (installed / "tsconfig.json").write_text(json.dumps(config))
    tsc = NODE_DIR / "node_modules" / ".bin" / "tsc"
    _run([str(tsc), "-p", str(installed)], installed, timeout=300)
