"""The store contract on both backends (a directory, an S3 prefix on a real SeaweedFS), and what only the
S3 store has to show: conditional claims racing across processes, leases of dead owners going stale,
uploads killed half way never listed and swept, and deletes seen by another replica within a poll."""

from __future__ import annotations

import json
import multiprocessing
import subprocess
import sys
import textwrap
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from scaler_service.scaler_registry import ScalerRegistry
from scaler_service.sklearn_scalers import fit, make_spec
from service_common.artifacts import SIGNATURE_FILE, ArtifactStore, StoredArtifacts
from service_common.errors import IntegrityError
from service_common.s3_artifacts import S3ArtifactStore
from tests.cluster.seaweed import SeaweedS3
from tests.system.procs import REPO, child_env

KEY = b"test-signing-key-0123456789"
OTHER_KEY = b"another-signing-key-987654321"


def _wait_until(condition: Callable[[], bool], timeout: float, what: str) -> float:
    """Seconds until ``condition()`` held; fails after ``timeout``."""
    start = time.monotonic()
    while not condition():
        if time.monotonic() - start > timeout:
            raise AssertionError(f"not within {timeout}s: {what}")
        time.sleep(0.05)  # another process's change: nothing in this process to await
    return time.monotonic() - start


@dataclass
class Backend:
    """Opens stores on one location (a second call = a second replica) and tampers with what is stored."""

    name: str
    open: Callable[..., StoredArtifacts]
    replace_part: Callable[[str, int, str, bytes], None]
    edit_signature: Callable[[str, int, Callable[[dict[str, Any]], None]], None]


def _dir_backend(root: Path) -> Backend:
    def replace_part(artifact_id: str, version: int, name: str, data: bytes) -> None:
        (root / artifact_id / str(version) / name).write_bytes(data)

    def edit_signature(artifact_id: str, version: int, edit: Callable[[dict[str, Any]], None]) -> None:
        path = root / artifact_id / str(version) / SIGNATURE_FILE
        signature = json.loads(path.read_text())
        edit(signature)
        path.write_text(json.dumps(signature))

    return Backend("dir", lambda key=KEY, **_: ArtifactStore(root, key), replace_part, edit_signature)


def _s3_backend(s3: SeaweedS3, prefix: str) -> Backend:
    client = s3.client()

    def open_store(key: bytes = KEY, **options: Any) -> StoredArtifacts:
        return S3ArtifactStore(client, s3.bucket, prefix, key, **options)

    def manifest(artifact_id: str, version: int) -> tuple[str, dict[str, Any]]:
        key = f"{prefix}/manifests/{artifact_id}/{version}"
        return key, json.loads(client.get_object(Bucket=s3.bucket, Key=key)["Body"].read())

    def replace_part(artifact_id: str, version: int, name: str, data: bytes) -> None:
        upload = manifest(artifact_id, version)[1]["upload"]
        part = f"{prefix}/parts/{artifact_id}/{version}/{upload}/{name}"
        client.put_object(Bucket=s3.bucket, Key=part, Body=data)

    def edit_signature(artifact_id: str, version: int, edit: Callable[[dict[str, Any]], None]) -> None:
        key, body = manifest(artifact_id, version)
        edit(body)
        client.put_object(Bucket=s3.bucket, Key=key, Body=json.dumps(body).encode())

    return Backend("s3", open_store, replace_part, edit_signature)


@pytest.fixture(params=["dir", "s3"])
def backend(request: pytest.FixtureRequest, tmp_path: Path) -> Backend:
    if request.param == "dir":
        return _dir_backend(tmp_path / "store")
    return _s3_backend(request.getfixturevalue("seaweed"), request.getfixturevalue("s3_prefix"))


# ---- the contract, on both backends ------------------------------------------------------------


def test_a_written_version_reads_back_is_listed_in_order_and_is_immutable(backend: Backend) -> None:
    store = backend.open()
    store.write("b-model", 2, {"model.bin": b"\x00\x01", "meta.json": b"{}"})
    store.write("b-model", 10, {"model.bin": b"ten"})
    store.write("a-model", 1, {"model.bin": b"a"})
    assert store.read("b-model", 2) == {"model.bin": b"\x00\x01", "meta.json": b"{}"}
    assert [(r.artifact_id, r.version) for r in store.scan()] == [
        ("a-model", 1),
        ("b-model", 2),
        ("b-model", 10),
    ]
    assert [r.version for r in store.scan("b-model")] == [2, 10]
    assert "b-model/10" in next(r for r in store.scan() if r.version == 10).location
    with pytest.raises(FileExistsError, match="immutable"):
        store.write("b-model", 2, {"model.bin": b"other"})
    assert store.read("b-model", 2)["model.bin"] == b"\x00\x01"


@pytest.mark.parametrize(
    ("tamper", "message"),
    [
        ("flip-a-payload-byte", "does not match its signature"),
        ("truncate-a-payload", "does not match its signature"),
        ("forge-a-digest", "signature does not verify"),
        ("drop-the-hmac", "malformed signature"),
    ],
)
def test_a_tampered_version_is_refused_before_anything_is_returned(
    backend: Backend, tamper: str, message: str
) -> None:
    store = backend.open()
    store.write("victim", 1, {"payload": b"0123456789", "meta.json": b"{}"})
    if tamper == "flip-a-payload-byte":
        backend.replace_part("victim", 1, "payload", b"0123456788")
    elif tamper == "truncate-a-payload":
        backend.replace_part("victim", 1, "payload", b"01234")
    elif tamper == "forge-a-digest":
        backend.edit_signature("victim", 1, lambda sig: sig["files"].update(payload="0" * 64))
    else:
        backend.edit_signature("victim", 1, lambda sig: sig.pop("hmac"))
    with pytest.raises(IntegrityError, match=message) as info:
        store.read("victim", 1)
    assert "victim/1" in str(info.value)


def test_a_version_signed_with_another_key_is_refused(backend: Backend) -> None:
    backend.open(OTHER_KEY).write("foreign", 1, {"payload": b"x"})
    with pytest.raises(IntegrityError, match="signature does not verify"):
        backend.open().read("foreign", 1)


def test_allocated_numbers_grow_and_a_deleted_number_is_never_handed_out_again(backend: Backend) -> None:
    store = backend.open()
    first = store.allocate("model")
    second = store.allocate("model")
    assert (first.version, second.version) == (1, 2)
    store.commit(first, {"payload": b"1"})
    second.release()
    assert store.delete("model", 1) is True
    assert store.delete("model", 1) is False
    assert list(store.scan("model")) == []
    assert backend.open().allocate("model").version == 3  # a fresh replica too
    ids = {store.new_id("scaler") for _ in range(5)}
    assert len(ids) == 5 and all(i.startswith("scaler-") for i in ids)
    assert store.allocate(ids.pop()).version == 1


def test_reservations_are_listed_with_their_note_until_committed_or_released(backend: Backend) -> None:
    store, other = backend.open(), backend.open()
    training = store.allocate("model", lambda version: f"training v{version}".encode())
    abandoned = store.allocate("model")
    assert other.live_reservations() == [("model", 1), ("model", 2)]
    assert other.live_reservations("model") == [("model", 1), ("model", 2)]
    assert other.reservation_note("model", 1) == b"training v1"
    abandoned.release()
    store.commit(training, {"payload": b"done"})
    assert training.released and abandoned.released
    assert other.live_reservations() == []
    assert other.reservation_note("model", 1) is None
    assert [(r.artifact_id, r.version) for r in other.scan()] == [("model", 1)]
    with pytest.raises(ValueError, match="released"):
        store.commit(abandoned, {"payload": b"late"})


def test_unload_marks_cover_the_versions_stored_when_set_and_go_with_the_id(backend: Backend) -> None:
    store, other = backend.open(), backend.open()
    store.write("model", 1, {"p": b"1"})
    store.write("model", 2, {"p": b"2"})
    store.set_unloaded("model", True)
    assert other.unloaded_ids() == {"model": 2}
    store.set_unloaded("model", False)
    assert other.unloaded_ids() == {}
    store.set_unloaded("model", True)
    store.delete("model", 1)
    assert other.unloaded_ids() == {"model": 2}
    store.delete("model", 2)
    assert other.unloaded_ids() == {}


def test_the_generation_changes_when_a_version_or_unload_mark_comes_or_goes(backend: Backend) -> None:
    store, other = backend.open(), backend.open()
    tokens = [other.generation()]
    store.write("model", 1, {"p": b"1"})
    tokens.append(other.generation())
    store.set_unloaded("model", True)
    tokens.append(other.generation())
    store.delete("model", 1)
    tokens.append(other.generation())
    assert all(a != b for a, b in zip(tokens, tokens[1:], strict=False))


# ---- S3 only -----------------------------------------------------------------------------------


def test_seaweedfs_honours_if_none_match_exactly_one_of_many_concurrent_claims_wins(
    seaweed: SeaweedS3, s3_prefix: str
) -> None:
    code = textwrap.dedent(
        """
        import sys, time, boto3, botocore
        from tests.cluster.seaweed import SeaweedS3
        from pathlib import Path
        s3 = SeaweedS3(sys.argv[1], sys.argv[2], Path("."), Path("."))
        client = s3.client()
        start = float(sys.argv[4])
        while time.time() < start:
            pass
        try:
            client.put_object(Bucket=s3.bucket, Key=sys.argv[3], Body=sys.argv[5].encode(), IfNoneMatch="*")
            print("won")
        except botocore.exceptions.ClientError as exc:
            print(exc.response["Error"]["Code"])
        """
    )
    for round_ in range(3):
        key = f"{s3_prefix}/race/{round_}"
        start = time.time() + 2.0  # every process imported boto3 and is spinning by then
        procs = [
            subprocess.Popen(
                [sys.executable, "-c", code, seaweed.endpoint, seaweed.bucket, key, str(start), str(n)],
                cwd=REPO, env=child_env(), stdout=subprocess.PIPE, text=True,
            )
            for n in range(4)
        ]  # fmt: skip
        answers = [proc.communicate(timeout=60)[0].strip() for proc in procs]
        assert sorted(answers) == ["PreconditionFailed"] * 3 + ["won"], answers
        winner = str(answers.index("won"))
        assert seaweed.client().get_object(Bucket=seaweed.bucket, Key=key)["Body"].read().decode() == winner


def _allocate_many(endpoint: str, bucket: str, prefix: str, count: int, start: Any) -> list[int]:
    s3 = SeaweedS3(endpoint, bucket, Path("."), Path("."))
    store = S3ArtifactStore(s3.client(), bucket, prefix, KEY)
    start.wait()
    versions = []
    for index in range(count):
        reservation = store.allocate("shared")
        versions.append(reservation.version)
        if index % 2:
            store.commit(reservation, {"payload": str(reservation.version).encode()})
        else:
            reservation.release()
    return versions


def test_two_processes_allocating_at_once_get_distinct_versions(seaweed: SeaweedS3, s3_prefix: str) -> None:
    per_process = 12
    context = multiprocessing.get_context("spawn")
    with context.Manager() as manager, context.Pool(2) as pool:
        start = manager.Event()
        pending = [
            pool.apply_async(
                _allocate_many, (seaweed.endpoint, seaweed.bucket, s3_prefix, per_process, start)
            )
            for _ in range(2)
        ]
        time.sleep(1.0)  # both workers imported and waiting on the event: they race from here
        start.set()
        results = [p.get(timeout=180) for p in pending]
    every = [version for versions in results for version in versions]
    assert len(set(every)) == len(every) == 2 * per_process, results
    assert all(versions == sorted(versions) for versions in results)
    store = S3ArtifactStore(seaweed.client(), seaweed.bucket, s3_prefix, KEY)
    assert store.live_reservations() == []
    committed = [ref.version for ref in store.scan("shared")]
    assert len(committed) == per_process
    assert all(store.read("shared", v) == {"payload": str(v).encode()} for v in committed)
    assert store.allocate("shared").version == max(every) + 1


_CHILD = textwrap.dedent(
    """
    import sys, time
    from pathlib import Path
    from service_common.s3_artifacts import S3ArtifactStore
    from tests.cluster.seaweed import SeaweedS3
    endpoint, bucket, prefix, mode = sys.argv[1:5]
    client = SeaweedS3(endpoint, bucket, Path("."), Path(".")).client()
    store = S3ArtifactStore(client, bucket, prefix, b"test-signing-key-0123456789", lease_seconds=3)
    if mode == "reserve":
        reservation = store.allocate("victim", lambda version: f"training v{version}".encode())
        print("reserved", reservation.version, flush=True)
        time.sleep(600)
    real_put = client.put_object
    def put_then_hang(**kwargs):
        real_put(**kwargs)
        if "/parts/" in kwargs["Key"]:
            print("part", kwargs["Key"], flush=True)
            time.sleep(600)  # killed here: parts uploaded, no manifest
    client.put_object = put_then_hang
    store.write("victim", 1, {"a.bin": b"a" * 100_000, "b.bin": b"b" * 100_000, "meta.json": b"{}"})
    """
)


def _child(seaweed: SeaweedS3, prefix: str, mode: str) -> tuple[subprocess.Popen[str], str]:
    proc = subprocess.Popen(
        [sys.executable, "-c", _CHILD, seaweed.endpoint, seaweed.bucket, prefix, mode],
        cwd=REPO, env=child_env(), stdout=subprocess.PIPE, text=True,
    )  # fmt: skip
    assert proc.stdout is not None
    return proc, proc.stdout.readline().strip()


def test_the_lease_of_an_owner_killed_by_sigkill_goes_stale_for_every_replica(
    seaweed: SeaweedS3, s3_prefix: str
) -> None:
    proc, line = _child(seaweed, s3_prefix, "reserve")
    assert line == "reserved 1"
    store = S3ArtifactStore(seaweed.client(), seaweed.bucket, s3_prefix, KEY, lease_seconds=3)
    time.sleep(4)  # longer than the lease: alive only because the owner renews it
    assert store.live_reservations() == [("victim", 1)]
    assert store.reservation_note("victim", 1) == b"training v1"
    proc.kill()
    proc.wait(timeout=10)
    _wait_until(lambda: store.live_reservations() == [], 10, "the dead owner's lease goes stale")
    assert store.reservation_note("victim", 1) is None  # whoever found it stale removed it
    assert store.allocate("victim").version == 2  # its number is not reused


def test_an_upload_killed_half_way_is_never_listed_and_is_swept_later(
    seaweed: SeaweedS3, s3_prefix: str
) -> None:
    proc, line = _child(seaweed, s3_prefix, "write")
    assert line.startswith("part ") and "/parts/victim/1/" in line
    proc.kill()
    proc.wait(timeout=10)
    client = seaweed.client()
    parts_prefix = f"{s3_prefix}/parts/"

    def parts_left() -> int:
        return int(client.list_objects_v2(Bucket=seaweed.bucket, Prefix=parts_prefix).get("KeyCount", 0))

    store = S3ArtifactStore(client, seaweed.bucket, s3_prefix, KEY)  # the default sweep age: an hour
    assert parts_left() == 1, "a young unfinished upload must not be swept (its writer may be slow)"
    assert list(store.scan()) == []
    with pytest.raises(FileNotFoundError):
        store.read("victim", 1)
    store.write("victim", 2, {"meta.json": b"{}"})
    assert [(r.artifact_id, r.version) for r in store.scan()] == [("victim", 2)]
    eager = S3ArtifactStore(client, seaweed.bucket, s3_prefix, KEY, sweep_seconds=1)
    _wait_until(lambda: eager.sweep() >= 0 and parts_left() == 1, 10, "only the committed parts stay")
    assert store.read("victim", 2) == {"meta.json": b"{}"}


def test_a_version_deleted_by_one_replica_is_gone_from_another_within_the_poll_interval(
    seaweed: SeaweedS3, s3_prefix: str
) -> None:
    poll = 0.5
    client = seaweed.client()
    first = ScalerRegistry(S3ArtifactStore(client, seaweed.bucket, s3_prefix, KEY))
    second = ScalerRegistry(S3ArtifactStore(client, seaweed.bucket, s3_prefix, KEY))
    second.start_watching(poll)
    try:
        spec = make_spec("minmax", "per_column", {})
        added = first.add("shared", fit(spec, np.arange(12, dtype=np.float64).reshape(4, 3)))
        _wait_until(lambda: second.count() == 1, 5 * poll, "the second replica sees the new version")
        first.delete("shared", added.version)
        took = _wait_until(lambda: second.count() == 0, 5 * poll, "the second replica drops it")
        assert took < 2 * poll + 1.0, f"seen after {took:.2f}s with a {poll}s poll"
    finally:
        second.close()
