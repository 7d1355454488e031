"""The Node client as an npm package (clients/node): what `npm pack` puts in it, and its TypeScript
declarations checked by tsc against a typed example (clients/node/test/types/usage.ts).

Both need node and npm and the package's dev dependencies (`make node-deps`); a missing tool fails.
The packed tarball installed outside the repo is exercised live in test_node_package_install.py.
"""

from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parents[2]
NODE_DIR = REPO_ROOT / "clients" / "node"
PROTOS = sorted(p.name for p in (REPO_ROOT / "protos" / "lstm_stack" / "v1").glob("*.proto"))


@pytest.fixture(scope="module")
def npm() -> str:
    npm_path = shutil.which("npm")
    if npm_path is None or shutil.which("node") is None:
        pytest.fail("node and npm must be on PATH (`make node-deps`)", pytrace=False)
    installed = (NODE_DIR / "node_modules" / "typescript").is_dir()
    # npm ci runs the prepare script; when already installed, run it for a current copy of protos/.
    command = [npm_path, "run", "prepare"] if installed else [npm_path, "ci", "--no-audit", "--no-fund"]
    result = subprocess.run(command, cwd=NODE_DIR, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, f"{' '.join(command)} failed:\n{result.stdout}\n{result.stderr}"
    return npm_path


def test_package_json_names_a_public_scoped_package() -> None:
    manifest = json.loads((NODE_DIR / "package.json").read_text())
    assert manifest["name"] == "@lstm-stack/client"
    assert manifest.get("private") is not True
    assert manifest["publishConfig"]["access"] == "public"
    assert manifest["types"] == "index.d.ts"
    assert manifest["version"].count(".") == 2


def test_npm_pack_carries_the_protos_and_the_declarations(npm: str) -> None:
    result = subprocess.run(
        [npm, "pack", "--dry-run", "--json", "--ignore-scripts"],
        cwd=NODE_DIR,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 0, result.stderr
    files = {entry["path"] for entry in json.loads(result.stdout)[0]["files"]}
    assert {f"protos/lstm_stack/v1/{name}" for name in PROTOS} <= files, sorted(files)
    assert {"index.js", "index.d.ts", "package.json", "types/lstm_stack/v1/index.d.ts"} <= files
    assert "types/lstm_stack/v1/TrainRequest.d.ts" in files
    # Nothing of the repo's development side: tests, the prepare script, node_modules.
    assert not [f for f in files if f.startswith(("test/", "scripts/", "node_modules/", ".types-src/"))]
    # The packed copy is byte for byte the contract.
    for name in PROTOS:
        copy = NODE_DIR / "protos" / "lstm_stack" / "v1" / name
        assert copy.read_bytes() == (REPO_ROOT / "protos" / "lstm_stack" / "v1" / name).read_bytes(), name


def test_the_client_reads_no_proto_outside_its_package() -> None:
    source = (NODE_DIR / "index.js").read_text()
    assert "'..'" not in source and '"../' not in source and "'../" not in source


def test_typed_example_compiles_against_the_declarations(npm: str) -> None:
    result = subprocess.run(
        [npm, "run", "--silent", "typecheck"], cwd=NODE_DIR, capture_output=True, text=True, timeout=300
    )
    assert result.returncode == 0, result.stdout + result.stderr
