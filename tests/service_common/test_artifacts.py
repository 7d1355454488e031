"""Signed, atomic artifacts: what verifies comes back, anything altered is refused before use."""

from __future__ import annotations

import json
import os
import re
from pathlib import Path

import pytest

from service_common.artifacts import SIGNATURE_FILE, ArtifactStore, load_signing_key, validate_id
from service_common.errors import FailedPrecondition, IntegrityError, InvalidArgument, echo

KEY = b"k" * 32


@pytest.fixture
def store(tmp_path: Path) -> ArtifactStore:
    return ArtifactStore(tmp_path / "artifacts", KEY)


def test_write_then_read_round_trips(store: ArtifactStore) -> None:
    path = store.write("model-a", 1, {"weights.bin": b"\x00\x01", "meta.json": b"{}"})
    assert path == store.root / "model-a" / "1"
    assert sorted(p.name for p in path.iterdir()) == [SIGNATURE_FILE, "meta.json", "weights.bin"]
    assert store.read("model-a", 1) == {"weights.bin": b"\x00\x01", "meta.json": b"{}"}
    assert not list(store.root.glob(".tmp-*"))


def test_versions_are_immutable(store: ArtifactStore) -> None:
    store.write("a", 1, {"x": b"1"})
    with pytest.raises(FileExistsError, match="immutable"):
        store.write("a", 1, {"x": b"2"})
    assert store.read("a", 1) == {"x": b"1"}


@pytest.mark.parametrize(
    ("tamper", "message"),
    [
        (lambda p: (p / "x").write_bytes(b"changed"), "x does not match its signature"),
        (lambda p: (p / "x").unlink(), "x is missing"),
        (lambda p: (p / SIGNATURE_FILE).unlink(), "missing or malformed signature"),
        (lambda p: (p / SIGNATURE_FILE).write_text("not json"), "missing or malformed signature"),
        (
            lambda p: (p / SIGNATURE_FILE).write_text(
                json.dumps({**json.loads((p / SIGNATURE_FILE).read_text()), "hmac": "0" * 64})
            ),
            "signature does not verify",
        ),
        (
            # Re-hashing the altered file is not enough without the key.
            lambda p: _rewrite_digest(p, "x", b"evil"),
            "signature does not verify",
        ),
    ],
)
def test_tampering_is_detected(store: ArtifactStore, tamper, message: str) -> None:
    path = store.write("a", 1, {"x": b"payload"})
    tamper(path)
    with pytest.raises(IntegrityError) as excinfo:
        store.read("a", 1)
    assert message in str(excinfo.value)


def _rewrite_digest(path: Path, name: str, data: bytes) -> None:
    import hashlib

    (path / name).write_bytes(data)
    signature = json.loads((path / SIGNATURE_FILE).read_text())
    signature["files"][name] = hashlib.sha256(data).hexdigest()
    (path / SIGNATURE_FILE).write_text(json.dumps(signature))


def test_another_key_does_not_verify(store: ArtifactStore) -> None:
    store.write("a", 1, {"x": b"payload"})
    with pytest.raises(IntegrityError, match="signed with another key"):
        ArtifactStore(store.root, b"other-key-0123456789").read("a", 1)


def test_a_failed_write_leaves_nothing(store: ArtifactStore, monkeypatch: pytest.MonkeyPatch) -> None:
    real_rename = os.rename

    def crash(src, dst) -> None:
        raise OSError("disk full")

    monkeypatch.setattr(os, "rename", crash)
    with pytest.raises(OSError, match="disk full"):
        store.write("a", 1, {"x": b"payload"})
    monkeypatch.setattr(os, "rename", real_rename)
    assert not (store.root / "a" / "1").exists()
    assert not list(store.root.glob(".tmp-*"))
    assert list(store.scan()) == []


def test_scan_lists_complete_artifacts_in_order_and_sweeps_leftovers(store: ArtifactStore) -> None:
    for artifact_id, version in [("b", 2), ("a", 10), ("a", 2), ("b", 1)]:
        store.write(artifact_id, version, {"x": b""})
    (store.root / ".tmp-leftover").mkdir()
    (store.root / "a" / "not-a-version").mkdir()
    (store.root / "bad id!").mkdir()
    assert [(r.artifact_id, r.version) for r in store.scan()] == [("a", 2), ("a", 10), ("b", 1), ("b", 2)]
    ArtifactStore(store.root, KEY)  # a restart sweeps what a crashed write left
    assert not (store.root / ".tmp-leftover").exists()


def test_delete(store: ArtifactStore) -> None:
    store.write("a", 1, {"x": b""})
    store.write("a", 2, {"x": b""})
    store.delete("a", 1)
    assert [(r.artifact_id, r.version) for r in store.scan()] == [("a", 2)]
    store.delete("a", 2)
    assert not (store.root / "a").exists()
    store.delete("a", 3)  # absent: nothing to do
    assert not list(store.root.glob(".tmp-*"))


@pytest.mark.parametrize("good", ["a", "scaler-0a1b2c3d", "Model_1.v2", "x" * 128])
def test_validate_id_accepts(good: str) -> None:
    assert validate_id(good, "scaler") == good


@pytest.mark.parametrize(
    "bad",
    ["", ".hidden", "-x", "a/b", "..", "a..b", "x" * 129, "sp ace", "ü", "a\n", "a\r\n", "\na", "a\x00"],
)
def test_validate_id_refuses(bad: str) -> None:
    with pytest.raises(InvalidArgument, match=re.escape(f"scaler id {echo(bad)} is not valid")):
        validate_id(bad, "scaler")


def test_an_id_ending_in_a_newline_is_refused_and_never_written(store: ArtifactStore) -> None:
    # A "$" anchor with re.match also matches before a final newline; ids must match whole.
    with pytest.raises(InvalidArgument, match="is not valid"):
        validate_id("model\n", "model")
    (store.root / "legit\n").mkdir(parents=True)  # planted on disk: never listed either
    (store.root / "legit\n" / "1").mkdir()
    assert [ref.artifact_id for ref in store.scan()] == []


def test_a_long_id_is_echoed_short() -> None:
    with pytest.raises(InvalidArgument) as info:
        validate_id("x" * 10_000, "model")
    message = str(info.value)
    assert len(message) < 300 and "…(10000 chars)" in message, message


def test_signing_key_from_setting_file_or_generated(tmp_path: Path) -> None:
    assert load_signing_key("explicit-key", "", tmp_path) == b"explicit-key"
    key_file = tmp_path / "key"
    key_file.write_text("from-a-file-0123456789\n")
    assert load_signing_key("", str(key_file), tmp_path) == b"from-a-file-0123456789"
    generated = load_signing_key("", "", tmp_path / "store")
    path = tmp_path / "store" / ".signing-key"
    assert len(generated) == 64 and path.stat().st_mode & 0o777 == 0o600
    assert load_signing_key("", "", tmp_path / "store") == generated  # reused on the next start
    key_file.write_text("short")
    with pytest.raises(ValueError, match="shorter than 16 characters"):
        load_signing_key("", str(key_file), tmp_path)


def test_leftover_temp_files_are_swept_too(store: ArtifactStore) -> None:
    (store.root / ".tmp-half-written-file").write_bytes(b"partial")
    ArtifactStore(store.root, KEY)
    assert not list(store.root.glob(".tmp-*"))


def test_write_survives_the_parent_vanishing_under_it(
    store: ArtifactStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Deleting an id's last version removes its directory; a write racing with that must still land."""
    store.write("a", 1, {"x": b"1"})
    real_rename = os.rename
    raced = []

    def rename_after_delete(src, dst) -> None:
        if not raced and Path(dst).name == "2":
            raced.append(True)
            store.delete("a", 1)  # removes <root>/a between mkdir and rename
        real_rename(src, dst)

    monkeypatch.setattr(os, "rename", rename_after_delete)
    store.write("a", 2, {"x": b"2"})
    assert raced and store.read("a", 2) == {"x": b"2"}
    assert [(r.artifact_id, r.version) for r in store.scan()] == [("a", 2)]


# ---- drafts: artifacts written file by file, named at the end ------------------------------------


def test_a_draft_written_file_by_file_commits_under_a_name_chosen_at_the_end(store: ArtifactStore) -> None:
    draft = store.draft()
    with draft.create("part-0") as fh:
        fh.write(b"ab")
        fh.write(b"cd")
    draft.add("meta.json", b"{}")
    assert not list(store.scan())  # nothing is listed before the commit
    path = draft.commit("ds-1", 1)
    assert store.read("ds-1", 1) == {"part-0": b"abcd", "meta.json": b"{}"}
    assert store.verified_files("ds-1", 1) == {"part-0": path / "part-0", "meta.json": path / "meta.json"}
    assert store.read_file("ds-1", 1, "meta.json") == b"{}"
    assert not list(store.root.glob(".tmp-*"))


def test_a_draft_onto_an_existing_version_is_refused_and_removed(store: ArtifactStore) -> None:
    store.write("ds-1", 1, {"part-0": b"first"})
    draft = store.draft()
    draft.add("part-0", b"second")
    with pytest.raises(FileExistsError):
        draft.commit("ds-1", 1)
    assert store.read("ds-1", 1) == {"part-0": b"first"}
    assert not list(store.root.glob(".tmp-*"))


def test_a_discarded_draft_leaves_nothing(store: ArtifactStore) -> None:
    draft = store.draft()
    draft.add("part-0", b"x" * 100)
    draft.discard()
    draft.discard()  # idempotent
    assert not list(store.root.glob(".tmp-*"))
    assert not list(store.scan())
    with pytest.raises(ValueError, match="committed or discarded"):
        draft.add("part-1", b"y")


def test_streamed_verification_and_single_file_reads_refuse_a_tampered_part(store: ArtifactStore) -> None:
    path = store.write("ds-1", 1, {"part-0": b"payload", "meta.json": b"{}"})
    (path / "part-0").write_bytes(b"changed")
    with pytest.raises(IntegrityError, match="part-0 does not match its signature"):
        store.verified_files("ds-1", 1)
    with pytest.raises(IntegrityError, match="part-0 does not match its signature"):
        store.read_file("ds-1", 1, "part-0")
    assert store.read_file("ds-1", 1, "meta.json") == b"{}"  # the other file still verifies alone


# ---- holds: artifacts in use cannot be deleted ---------------------------------------------------


def test_a_held_id_cannot_be_deleted_until_every_hold_is_released(store: ArtifactStore) -> None:
    store.write("ds-1", 1, {"x": b"1"})
    first, second = store.hold("ds-1"), store.hold("ds-1")
    assert store.live_holds("ds-1") == 2
    with pytest.raises(FailedPrecondition, match="in use by 2 running job"):
        store.delete("ds-1", 1)
    first.release()
    with pytest.raises(FailedPrecondition, match="in use by 1 running job"):
        store.delete("ds-1", 1)
    second.release()
    second.release()  # idempotent
    assert store.live_holds("ds-1") == 0
    assert store.delete("ds-1", 1)


def test_only_a_stored_id_can_be_held(store: ArtifactStore) -> None:
    with pytest.raises(FileNotFoundError, match="not stored"):
        store.hold("ds-missing")
