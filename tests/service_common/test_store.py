"""The store shared by processes: version numbers allocated under its lock, reservations held by a live
process only, instance-wide unload markers, a change token, and sweeps that leave others' writes alone."""

from __future__ import annotations

import multiprocessing
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path
from typing import Any

import pytest

from service_common import artifacts
from service_common.artifacts import (
    HIGH_WATER_FILE,
    RESERVATIONS_DIR,
    ArtifactStore,
    load_signing_key,
)
from service_common.errors import FailedPrecondition

KEY = b"test-signing-key-0123456789"
ALLOCATIONS_PER_PROCESS = 25


def _allocate_many(root: str, count: int, start: Any) -> list[int]:
    store = ArtifactStore(Path(root), KEY)
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


def test_versions_allocated_by_four_processes_at_once_are_distinct_and_increasing_per_process(
    tmp_path: Path,
) -> None:
    context = multiprocessing.get_context("spawn")
    with context.Manager() as manager, context.Pool(4) as pool:
        start = manager.Event()
        pending = [
            pool.apply_async(_allocate_many, (str(tmp_path), ALLOCATIONS_PER_PROCESS, start))
            for _ in range(4)
        ]
        time.sleep(0.5)  # every worker imported and waiting: they race from here
        start.set()
        results = [p.get(timeout=120) for p in pending]
    every = [version for versions in results for version in versions]
    assert sorted(every) == list(range(1, 4 * ALLOCATIONS_PER_PROCESS + 1))  # distinct, none skipped
    assert all(versions == sorted(versions) for versions in results)
    store = ArtifactStore(tmp_path, KEY)
    assert store.live_reservations() == []  # every one was committed or released
    committed = [ref.version for ref in store.scan("shared")]
    assert len(committed) == 4 * (ALLOCATIONS_PER_PROCESS // 2) and all(
        store.read("shared", v) == {"payload": str(v).encode()} for v in committed
    )
    assert store.allocate("shared").version == 4 * ALLOCATIONS_PER_PROCESS + 1


HOLDER = textwrap.dedent(
    """
    import sys, time
    from pathlib import Path
    from service_common.artifacts import ArtifactStore
    store = ArtifactStore(Path(sys.argv[1]), b"test-signing-key-0123456789")
    reservation = store.allocate("victim", lambda version: f"training v{version}".encode())
    print(reservation.version, flush=True)
    time.sleep(600)
    """
)


def test_a_sigkilled_processes_reservation_is_seen_stale_and_vanishes(tmp_path: Path) -> None:
    store = ArtifactStore(tmp_path, KEY)
    mine = store.allocate("victim")  # held by this process, which lives on
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)}
    holder = subprocess.Popen(
        [sys.executable, "-c", HOLDER, str(tmp_path)], stdout=subprocess.PIPE, text=True, env=env
    )
    try:
        assert holder.stdout is not None
        version = int(holder.stdout.readline())
        assert version == 2
        assert store.live_reservations() == [("victim", 1), ("victim", 2)]
        assert store.reservation_note("victim", 2) == b"training v2"
        # Listed again and again while the holder lives: looking at it does not break it.
        assert store.live_reservations("victim") == [("victim", 1), ("victim", 2)]
    finally:
        holder.send_signal(signal.SIGKILL)
        holder.wait(timeout=10)
    assert store.live_reservations() == [("victim", 1)]
    assert not (tmp_path / RESERVATIONS_DIR / "victim" / "2").exists()  # removed by whoever found it
    assert store.reservation_note("victim", 2) is None
    assert store.allocate("victim").version == 3  # the dead process's number is not handed out again
    mine.release()


def test_a_reservation_is_listed_until_released_and_commit_places_the_artifact_first(tmp_path: Path) -> None:
    store = ArtifactStore(tmp_path, KEY)
    first, second = store.allocate("m"), store.allocate("m")
    assert store.live_reservations() == [("m", 1), ("m", 2)]
    first.release()
    first.release()  # idempotent
    assert store.live_reservations() == [("m", 2)] and first.released
    store.commit(second, {"x": b"2"})
    assert store.live_reservations() == [] and second.released
    assert [(r.artifact_id, r.version) for r in store.scan()] == [("m", 2)]
    assert not (tmp_path / RESERVATIONS_DIR / "m").exists()  # no empty directory left behind
    with pytest.raises(ValueError, match="was released"):
        store.commit(first, {"x": b"1"})
    assert [(r.artifact_id, r.version) for r in store.scan()] == [("m", 2)]


def test_numbers_are_never_reused_after_deletes_a_restart_or_a_lost_high_water_file(tmp_path: Path) -> None:
    store = ArtifactStore(tmp_path, KEY)
    for _ in range(3):
        store.commit(store.allocate("a"), {"x": b""})
    assert [store.delete("a", v) for v in (1, 2, 3)] == [True, True, True]
    assert store.delete("a", 3) is False  # already gone
    assert ArtifactStore(tmp_path, KEY).allocate("a").version == 4
    # A store written before allocation existed: its artifacts bound the next number from below,
    # even with the high-water file gone or unreadable.
    store.write("old", 7, {"x": b""})
    (tmp_path / HIGH_WATER_FILE).write_text("{not json")
    assert ArtifactStore(tmp_path, KEY).allocate("old").version == 8
    assert ArtifactStore(tmp_path, KEY).allocate("old").version == 9


def test_new_ids_are_never_handed_out_twice(tmp_path: Path) -> None:
    store = ArtifactStore(tmp_path, KEY)
    ids = {store.new_id("model") for _ in range(50)}
    assert len(ids) == 50 and all(i.startswith("model-") for i in ids)
    assert ids <= set(artifacts.json.loads((tmp_path / HIGH_WATER_FILE).read_text()))  # marked used


def test_unload_marks_cover_the_versions_stored_at_the_time_and_go_with_the_id(tmp_path: Path) -> None:
    store, other = ArtifactStore(tmp_path, KEY), ArtifactStore(tmp_path, KEY)
    store.commit(store.allocate("m"), {"x": b""})
    store.commit(store.allocate("m"), {"x": b""})
    store.set_unloaded("m", True)
    assert other.unloaded_ids() == {"m": 2}  # seen by every process on the store
    store.commit(store.allocate("m"), {"x": b""})  # committed after the unload: not covered
    assert other.unloaded_ids() == {"m": 2}
    other.set_unloaded("m", False)
    assert store.unloaded_ids() == {}
    store.set_unloaded("m", True)
    for version in (1, 2, 3):
        store.delete("m", version)
    assert store.unloaded_ids() == {}  # the id is gone, and its mark with it


def test_the_change_token_moves_when_versions_come_or_go_and_holds_otherwise(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    store = ArtifactStore(tmp_path, KEY)
    store.commit(store.allocate("m"), {"x": b""})
    # Straight after a change the token is never trusted to compare equal (same timestamp tick).
    assert store.generation() != store.generation()
    monkeypatch.setattr(artifacts, "RACY_SECONDS", 0.0)
    quiet = store.generation()
    assert store.generation() == quiet
    store.commit(store.allocate("m"), {"x": b""})
    after_commit = store.generation()
    assert after_commit != quiet
    store.delete("m", 1)
    after_delete = store.generation()
    assert after_delete != after_commit
    store.set_unloaded("m", True)
    assert store.generation() != after_delete


def test_a_sweep_at_start_leaves_a_write_in_progress_in_another_process_alone(tmp_path: Path) -> None:
    store = ArtifactStore(tmp_path, KEY)
    in_progress, fd = store._temp_dir()  # what write() holds while it writes payloads
    (in_progress / "model.keras").write_bytes(b"half")
    (tmp_path / ".tmp-crashed").mkdir()  # a dead writer's leftover
    ArtifactStore(tmp_path, KEY)  # another process starting on the store
    assert in_progress.exists() and not (tmp_path / ".tmp-crashed").exists()
    os.close(fd)  # the writer dies
    ArtifactStore(tmp_path, KEY)
    assert not in_progress.exists()


def _load_key(root: str) -> bytes:
    return load_signing_key("", "", Path(root))


def test_processes_creating_the_signing_key_at_once_all_get_the_one_that_won(tmp_path: Path) -> None:
    with multiprocessing.get_context("spawn").Pool(4) as pool:
        keys = pool.map(_load_key, [str(tmp_path / "store")] * 8)
    assert len(set(keys)) == 1 and len(keys[0]) == 64
    assert (tmp_path / "store" / ".signing-key").read_bytes() == keys[0]
    assert [p.name for p in (tmp_path / "store").iterdir()] == [".signing-key"]  # no temp file left


HOLD = textwrap.dedent(
    """
    import sys, time
    from pathlib import Path
    from service_common.artifacts import ArtifactStore
    store = ArtifactStore(Path(sys.argv[1]), b"test-signing-key-0123456789")
    hold = store.hold("ds-1")
    print("held", flush=True)
    time.sleep(600)
    """
)


def test_a_sigkilled_processes_hold_dies_with_it(tmp_path: Path) -> None:
    store = ArtifactStore(tmp_path, KEY)
    store.write("ds-1", 1, {"x": b"1"})
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)}
    holder = subprocess.Popen(
        [sys.executable, "-c", HOLD, str(tmp_path)], stdout=subprocess.PIPE, text=True, env=env
    )
    try:
        assert holder.stdout is not None
        assert holder.stdout.readline().strip() == "held"
        assert store.live_holds("ds-1") == 1
        with pytest.raises(FailedPrecondition, match="in use"):
            store.delete("ds-1", 1)
    finally:
        holder.send_signal(signal.SIGKILL)
        holder.wait(timeout=10)
    assert store.live_holds("ds-1") == 0
    assert store.delete("ds-1", 1)
