"""docs/API.md must be exactly what scripts/api_overview.py renders from protos/, and cover all of it."""

from __future__ import annotations

import importlib.util
import re
import subprocess
import sys
from pathlib import Path
from types import ModuleType

import pytest

REPO_ROOT = Path(__file__).resolve().parents[2]
SCRIPT = REPO_ROOT / "scripts" / "api_overview.py"
API_DOC = REPO_ROOT / "docs" / "API.md"


@pytest.fixture(scope="module")
def api_overview() -> ModuleType:
    spec = importlib.util.spec_from_file_location("api_overview", SCRIPT)
    assert spec and spec.loader
    module = importlib.util.module_from_spec(spec)
    # dataclasses look their module up in sys.modules while the class body runs.
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def rendered(api_overview: ModuleType) -> str:
    return api_overview.render()


def test_committed_api_doc_is_current(rendered: str) -> None:
    assert API_DOC.exists(), "docs/API.md is missing: run `python scripts/api_overview.py`"
    committed = API_DOC.read_text(encoding="utf-8")
    if committed != rendered:
        first = next(
            (
                i
                for i, (a, b) in enumerate(zip(committed.splitlines(), rendered.splitlines(), strict=False))
                if a != b
            ),
            min(len(committed.splitlines()), len(rendered.splitlines())),
        )
        pytest.fail(
            f"docs/API.md is stale (first difference at line {first + 1}); "
            "run `python scripts/api_overview.py` after changing protos/"
        )


def test_every_rpc_message_and_field_of_the_generated_code_is_documented(rendered: str) -> None:
    """Cross-check against the committed generated descriptors, a source independent of the script."""
    from protos.inference import grpc_service_pb2
    from protos.lstm_stack.v1 import model_pb2, scaler_pb2, tensor_pb2

    headings = set(re.findall(r"^### (\S+)$", rendered, flags=re.MULTILINE))
    for module in (tensor_pb2, scaler_pb2, model_pb2, grpc_service_pb2):
        file = module.DESCRIPTOR
        for service in file.services_by_name.values():
            assert service.full_name in headings
            section = rendered.split(f"### {service.full_name}\n", 1)[1].split("\n### ", 1)[0]
            for method in service.methods:
                row = next(
                    (line for line in section.splitlines() if line.startswith(f"| `{method.name}` |")), None
                )
                assert row is not None, f"{service.full_name}.{method.name} is not documented"
                assert f"[`{method.input_type.full_name}`]" in row
                assert f"[`{method.output_type.full_name}`]" in row
                if method.server_streaming:
                    assert f"stream [`{method.output_type.full_name}`]" in row

        def check_message(message) -> None:  # noqa: ANN001 - protobuf Descriptor
            if message.GetOptions().map_entry:
                return
            assert message.full_name in headings, f"message {message.full_name} is not documented"
            section = rendered.split(f"### {message.full_name}\n", 1)[1].split("\n### ", 1)[0]
            for field in message.fields:
                assert f"| `{field.name}` | {field.number} |" in section, f"{message.full_name}.{field.name}"
            for nested in message.nested_types:
                check_message(nested)
            for enum in message.enum_types:
                assert enum.full_name in headings

        for message in file.message_types_by_name.values():
            check_message(message)
        for enum in file.enum_types_by_name.values():
            assert enum.full_name in headings
            section = rendered.split(f"### {enum.full_name}\n", 1)[1].split("\n### ", 1)[0]
            for value in enum.values:
                assert f"| `{value.name}` | {value.number} |" in section


def test_proto_comments_and_field_kinds_are_carried(rendered: str) -> None:
    scaler_section = rendered.split("### lstm_stack.v1.ScalerService\n", 1)[1].split("\n### ", 1)[0]
    assert "Fits a new immutable version of a scaler on training data." in scaler_section
    assert "| `FitStream` | stream [`lstm_stack.v1.FitChunk`]" in scaler_section
    assert "| client stream |" in scaler_section
    assert "| `metrics` | 5 | map<`string`, `double`> | map |" in rendered
    assert "| `val_loss` | 4 | `double` | optional |" in rendered
    assert (
        "| `started` | 1 | [`lstm_stack.v1.TrainStarted`](#lstm_stackv1trainstarted) | oneof `event` |"
        in rendered
    )
    assert "an empty shape with `values` means 1-D" in rendered


def test_check_mode_reports_a_stale_file(tmp_path: Path) -> None:
    stale = tmp_path / "API.md"
    stale.write_text("# outdated\n", encoding="utf-8")
    result = subprocess.run(
        [sys.executable, str(SCRIPT), "--check", "--out", str(stale)], capture_output=True, text=True
    )
    assert result.returncode == 1
    assert "stale" in result.stderr
