"""buf enforces the contract: `buf lint` passes on protos/ with buf.yaml's listed exceptions, and
scripts/check_protos.sh (what `make lint` runs) fails on a wire-breaking change, naming the field.

The breaking checks run the real script in a throwaway git repository holding a copy of buf.yaml, the
script and protos/, so they never touch this checkout's history. buf is the pinned npm package in
tools/node_modules (`make buf-deps`); a missing buf fails, never skips.
"""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parents[2]
BUF = REPO_ROOT / "tools" / "node_modules" / ".bin" / "buf"
TENSOR = Path("protos/lstm_stack/v1/tensor.proto")


@pytest.fixture(scope="module")
def buf() -> Path:
    if not BUF.exists():
        npm = shutil.which("npm")
        if npm is None:
            pytest.fail("npm is not on PATH: buf comes from npm (`make buf-deps`)", pytrace=False)
        result = subprocess.run(
            [npm, "ci", "--no-audit", "--no-fund"],
            cwd=REPO_ROOT / "tools",
            capture_output=True,
            text=True,
            timeout=300,
        )
        assert result.returncode == 0, f"npm ci in tools/ failed:\n{result.stdout}\n{result.stderr}"
    return BUF


def _git(repo: Path, *args: str) -> str:
    env = {
        **os.environ,
        "GIT_AUTHOR_NAME": "t",
        "GIT_AUTHOR_EMAIL": "t@example.invalid",
        "GIT_COMMITTER_NAME": "t",
        "GIT_COMMITTER_EMAIL": "t@example.invalid",
    }
    result = subprocess.run(["git", *args], cwd=repo, env=env, capture_output=True, text=True, check=True)
    return result.stdout.strip()


@pytest.fixture
def contract_repo(tmp_path: Path) -> Path:
    """A git repo whose `main` has one commit: today's contract, buf.yaml and the check script."""
    repo = tmp_path / "repo"
    shutil.copytree(
        REPO_ROOT / "protos", repo / "protos", ignore=shutil.ignore_patterns("*.py", "*.pyi", "__pycache__")
    )
    shutil.copy2(REPO_ROOT / "buf.yaml", repo / "buf.yaml")
    (repo / "scripts").mkdir()
    shutil.copy2(REPO_ROOT / "scripts" / "check_protos.sh", repo / "scripts" / "check_protos.sh")
    _git(repo, "init", "-q", "-b", "main")
    _git(repo, "add", ".")
    _git(repo, "commit", "-q", "-m", "contract")
    return repo


def _edit(repo: Path, old: str, new: str) -> None:
    path = repo / TENSOR
    text = path.read_text()
    assert old in text, f"{old!r} is no longer in {TENSOR}; update this test"
    path.write_text(text.replace(old, new))


def _check(repo: Path, buf: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        ["bash", "scripts/check_protos.sh"],
        cwd=repo,
        env={**os.environ, "BUF": str(buf)},
        capture_output=True,
        text=True,
        timeout=120,
    )


def _refused(repo: Path, buf: Path) -> str:
    """The check's output, once it has failed (as a breaking change must make it)."""
    result = _check(repo, buf)
    output = result.stdout + result.stderr
    assert result.returncode != 0, output
    return output


def test_buf_lint_passes_on_the_contract(buf: Path) -> None:
    result = subprocess.run([buf, "lint"], cwd=REPO_ROOT, capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stdout + result.stderr


def test_buf_lint_still_checks_what_is_not_excepted(buf: Path, contract_repo: Path) -> None:
    """The exceptions are narrow: a camelCase field is still a lint failure."""
    _edit(contract_repo, "repeated double values = 4;", "repeated double values = 4;\n  int32 badName = 5;")
    result = subprocess.run([buf, "lint"], cwd=contract_repo, capture_output=True, text=True, timeout=120)
    assert result.returncode != 0
    assert "FIELD_LOWER_SNAKE_CASE" in result.stdout or "badName" in result.stdout, result.stdout


def test_renumbered_field_committed_on_main_fails_naming_it(buf: Path, contract_repo: Path) -> None:
    _edit(contract_repo, "bytes raw = 3;", "bytes raw = 5;")
    _git(contract_repo, "commit", "-q", "-am", "renumber raw")
    output = _refused(contract_repo, buf)
    assert 'field "3" with name "raw" on message "Tensor"' in output, output
    assert "tensor.proto" in output, output


def test_a_branch_is_checked_from_where_it_left_main(buf: Path, contract_repo: Path) -> None:
    """The break is in the branch's first commit; its last commit is harmless. HEAD~1 alone would pass."""
    _git(contract_repo, "checkout", "-q", "-b", "feature")
    _edit(contract_repo, "repeated int64 shape = 2;", "repeated int32 shape = 2;")
    _git(contract_repo, "commit", "-q", "-am", "narrow shape")
    (contract_repo / "notes.txt").write_text("unrelated\n")
    _git(contract_repo, "add", "notes.txt")
    _git(contract_repo, "commit", "-q", "-m", "notes")
    output = _refused(contract_repo, buf)
    assert '"shape" on message "Tensor"' in output, output


def test_an_added_field_is_not_breaking(buf: Path, contract_repo: Path) -> None:
    _edit(contract_repo, "repeated double values = 4;", "repeated double values = 4;\n  string unit = 5;")
    _git(contract_repo, "commit", "-q", "-am", "add unit")
    result = _check(contract_repo, buf)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "buf breaking against" in result.stdout


def test_an_uncommitted_break_is_caught_too(buf: Path, contract_repo: Path) -> None:
    (contract_repo / "notes.txt").write_text("second commit\n")
    _git(contract_repo, "add", "notes.txt")
    _git(contract_repo, "commit", "-q", "-m", "notes")
    _edit(contract_repo, "DType dtype = 1;", "DType dtype = 6;")
    output = _refused(contract_repo, buf)
    assert 'field "1" with name "dtype"' in output, output
