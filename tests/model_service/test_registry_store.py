"""Registries over one store (as two processes or instances have them): each is a cache of the store.

Versions committed anywhere are served everywhere (at once on a miss, within the poll interval
otherwise), deletes and unloads apply store-wide, TRAINING comes from live reservations, tampered
artifacts are refused before anything is loaded, and numbers are never reused.
"""

from __future__ import annotations

import functools
import logging
import os
import signal
import subprocess
import sys
import textwrap
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import numpy as np
import pytest

from model_service import builder, serving
from model_service.model_registry import ModelRegistry, VersionState
from model_service.model_store import GRAPH_FILE, ModelWriter
from model_service.records import ModelRecord
from model_service.serving import ServingOptions, SessionBudget
from model_service.spec import Head, Lstm, ModelSpec, Task, with_defaults
from model_service.training.graph import serving_graph
from service_common.artifacts import ArtifactStore
from service_common.errors import FailedPrecondition, NotFound
from service_common.versioning import StoreWatcher

KEY = b"test-signing-key-0123456789"
SPEC = with_defaults(ModelSpec(3, 1, (Lstm(4),), Head(Task.REGRESSION)))
OPTIONS = ServingOptions(max_batch_size=8)
X = np.arange(6, dtype=np.float64).reshape(2, 3, 1)
# What the issue asks of a version committed or deleted through another instance.
WITHIN_SECONDS = 2.0
POLL_SECONDS = 1.0


@pytest.fixture(scope="module")
def keras_bytes() -> bytes:
    return builder.to_keras_bytes(builder.build(SPEC, 3))


@functools.cache
def stored_graph() -> bytes:
    """The serving graph of that model (it depends on the spec and weights, not the id or version)."""
    return serving_graph(ModelRecord("any", 1, SPEC, 3, "now"), builder.build(SPEC, 3))


@pytest.fixture
def registries(tmp_path: Path) -> Iterator[Callable[[], ModelRegistry]]:
    """Makes registries over one store root, each with its own store object (as separate processes)."""
    made: list[ModelRegistry] = []

    def make() -> ModelRegistry:
        registry = ModelRegistry(ArtifactStore(tmp_path, KEY), OPTIONS)
        registry.load_all()
        made.append(registry)
        return registry

    yield make
    for registry in made:
        registry.close()


def publish(root: Path, keras_bytes: bytes, model_id: str, graph: bytes = b"") -> ModelRecord:
    """Commit a version the way a trainer process does: through a writer, serving nothing."""
    writer = ModelWriter(ArtifactStore(root, KEY))
    record, reservation = writer.reserve(model_id, SPEC, 3)
    writer.commit(record, keras_bytes, graph or stored_graph(), reservation)
    return record


def wait_for(condition: Callable[[], bool], seconds: float) -> float:
    """Seconds until ``condition`` held; fails the test once ``seconds`` have passed."""
    started = time.monotonic()
    while not condition():
        elapsed = time.monotonic() - started
        assert elapsed < seconds, f"not within {seconds}s"
        time.sleep(0.02)
    return time.monotonic() - started


def listed(registry: ModelRegistry) -> list[tuple[str, int, VersionState]]:
    page, _ = registry.list()
    return [(v.record.model_id, v.record.version, v.state) for v in page]


def test_a_version_committed_elsewhere_is_served_at_once_on_a_miss(
    registries: Callable[[], ModelRegistry], tmp_path: Path, keras_bytes: bytes
) -> None:
    a, b = registries(), registries()
    record = publish(tmp_path, keras_bytes, "m")
    # No watcher runs: the miss itself looks at the store before answering NOT_FOUND.
    served = b.served("m")
    assert (served.model_id, served.version) == ("m", record.version) == ("m", 1)
    assert served.infer(X).values.shape == (2, 1)
    assert a.get("m", 1).state is VersionState.READY
    publish(tmp_path, keras_bytes, "m")
    assert b.served("m", 2).version == 2  # a version miss on a known id syncs too


def test_the_watcher_serves_a_version_committed_elsewhere_within_two_seconds(
    registries: Callable[[], ModelRegistry], tmp_path: Path, keras_bytes: bytes
) -> None:
    b = registries()
    b.start_watching(POLL_SECONDS)
    publish(tmp_path, keras_bytes, "m")
    # list() never syncs on its own: only the watcher can bring the version in.
    wait_for(lambda: listed(b) == [("m", 1, VersionState.READY)], WITHIN_SECONDS)
    assert [(e.model_id, e.version, e.state) for e in b.index()] == [("m", 1, VersionState.READY)]


def test_polling_alone_serves_a_version_committed_elsewhere_within_the_poll_interval(
    registries: Callable[[], ModelRegistry], tmp_path: Path, keras_bytes: bytes
) -> None:
    b = registries()
    watcher = StoreWatcher("poll-only", b._store, b.refresh, b.sync, POLL_SECONDS, use_inotify=False)
    watcher.start()
    try:
        publish(tmp_path, keras_bytes, "m")
        wait_for(lambda: listed(b) == [("m", 1, VersionState.READY)], WITHIN_SECONDS)
    finally:
        watcher.stop()
    assert not watcher.uses_inotify


def test_with_inotify_changes_elsewhere_show_long_before_the_poll(
    registries: Callable[[], ModelRegistry], tmp_path: Path, keras_bytes: bytes
) -> None:
    b = registries()
    b.start_watching(60.0)  # no poll during this test: only inotify can bring changes in
    assert b._watcher is not None and b._watcher.uses_inotify
    time.sleep(0.3)  # the watches are in place
    publish(tmp_path, keras_bytes, "new-id")  # an id directory that did not exist when watching began
    wait_for(lambda: listed(b) == [("new-id", 1, VersionState.READY)], 1.0)
    publish(tmp_path, keras_bytes, "new-id")
    wait_for(lambda: [v for _, v, _ in listed(b)] == [1, 2], 1.0)
    ArtifactStore(tmp_path, KEY).delete("new-id", 1)
    wait_for(lambda: [v for _, v, _ in listed(b)] == [2], 1.0)
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)}
    trainer = subprocess.Popen(
        [sys.executable, "-c", TRAINER, str(tmp_path)], stdout=subprocess.PIPE, text=True, env=env
    )
    try:
        assert trainer.stdout is not None and int(trainer.stdout.readline()) == 1
        wait_for(lambda: ("killed", 1, VersionState.TRAINING) in listed(b), 1.0)
    finally:
        trainer.send_signal(signal.SIGKILL)
        trainer.wait(timeout=10)
    # Its marker was closed when it died: that alone wakes the watcher.
    wait_for(lambda: listed(b) == [("new-id", 2, VersionState.READY)], 1.0)


def test_a_delete_through_one_gives_not_found_on_the_other_within_two_seconds(
    registries: Callable[[], ModelRegistry], tmp_path: Path, keras_bytes: bytes
) -> None:
    publish(tmp_path, keras_bytes, "m")
    a, b = registries(), registries()
    served = a.served("m")
    a.start_watching(POLL_SECONDS)
    assert b.delete("m") == [1]

    def gone() -> bool:
        try:
            a.served("m")
        except NotFound:
            return True
        return False

    wait_for(gone, WITHIN_SECONDS)
    with pytest.raises(NotFound, match="model 'm' not found"):
        a.get("m")
    with pytest.raises(FailedPrecondition, match="was deleted"):
        served.infer(X)  # a caller still holding the old version is told why, not served stale
    with pytest.raises(NotFound):
        b.delete("m")  # nothing left to delete, through either


def test_an_unload_through_one_applies_to_the_other_until_loaded_again(
    registries: Callable[[], ModelRegistry], tmp_path: Path, keras_bytes: bytes
) -> None:
    publish(tmp_path, keras_bytes, "m")
    publish(tmp_path, keras_bytes, "m")
    a, b = registries(), registries()
    a.unload("m")
    b.refresh()
    assert [(e.version, e.state, e.reason) for e in b.index()] == [
        (1, VersionState.UNAVAILABLE, "unloaded"),
        (2, VersionState.UNAVAILABLE, "unloaded"),
    ]
    with pytest.raises(FailedPrecondition, match="version 2 is unloaded; load it"):
        b.served("m")
    assert [v.state for v in b.list()[0]] == [VersionState.UNAVAILABLE] * 2
    # A version committed after the unload is served: the unload covered what was stored then.
    publish(tmp_path, keras_bytes, "m")
    assert b.served("m").version == 3
    b.load("m")
    a.refresh()
    assert [e.state for e in a.index()] == [VersionState.READY] * 3
    assert a.served("m", 1).infer(X).values.shape == (2, 1)


def test_a_training_version_is_listed_by_every_registry_until_released(
    registries: Callable[[], ModelRegistry],
) -> None:
    a, b = registries(), registries()
    record = a.reserve("t", SPEC, 5)
    b.refresh()
    seen = b.get("t")
    assert (seen.state, seen.record.version, seen.record.seed) == (VersionState.TRAINING, 1, 5)
    assert [(e.version, e.state, e.reason) for e in b.index()] == [(1, VersionState.TRAINING, "training")]
    with pytest.raises(FailedPrecondition, match="still training"):
        b.served("t")
    with pytest.raises(FailedPrecondition, match="version 1 is still training"):
        b.delete("t")  # refused through any instance, not only the one training it
    a.release(record.model_id, record.version)
    b.refresh()
    with pytest.raises(NotFound):
        b.get("t")
    assert a.reserve("t", SPEC, 5).version == 2  # the released number is not reused


def test_commit_serves_the_new_version_in_the_committing_process_before_it_returns(
    registries: Callable[[], ModelRegistry], keras_bytes: bytes
) -> None:
    a = registries()
    record = a.reserve("", SPEC, 1)
    assert record.model_id.startswith("model-")
    a.commit(record, keras_bytes, stored_graph())
    served = a.served(record.model_id)
    assert served.version == 1 and not served.loaded  # listed; its session is built on its first call
    assert served.infer(X).values.shape == (2, 1) and served.loaded
    with pytest.raises(FailedPrecondition, match="not reserved by this process"):
        a.commit(record, keras_bytes, stored_graph())


TRAINER = textwrap.dedent(
    """
    import sys, time
    from pathlib import Path
    from model_service.model_store import ModelWriter
    from model_service.spec import Head, Lstm, ModelSpec, Task, with_defaults
    from service_common.artifacts import ArtifactStore
    writer = ModelWriter(ArtifactStore(Path(sys.argv[1]), b"test-signing-key-0123456789"))
    record, reservation = writer.reserve("killed", with_defaults(ModelSpec(3, 1, (Lstm(4),), Head(Task.REGRESSION))), 9)
    print(record.version, flush=True)
    time.sleep(600)
    """
)


def test_the_reservation_of_a_killed_trainer_vanishes_from_every_listing(
    registries: Callable[[], ModelRegistry], tmp_path: Path
) -> None:
    b = registries()
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)}
    trainer = subprocess.Popen(
        [sys.executable, "-c", TRAINER, str(tmp_path)], stdout=subprocess.PIPE, text=True, env=env
    )
    try:
        assert trainer.stdout is not None and int(trainer.stdout.readline()) == 1
        b.refresh()
        assert listed(b) == [("killed", 1, VersionState.TRAINING)]
    finally:
        trainer.send_signal(signal.SIGKILL)
        trainer.wait(timeout=10)
    b.refresh()  # no file changed when it died: the reservations are looked at on every poll
    assert listed(b) == []
    assert b.reserve("killed", SPEC, 1).version == 2


def test_refresh_refuses_a_tampered_artifact_without_loading_it(
    registries: Callable[[], ModelRegistry],
    tmp_path: Path,
    keras_bytes: bytes,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
) -> None:
    a = registries()
    publish(tmp_path, keras_bytes, "good")
    publish(tmp_path, keras_bytes, "bad")
    graph_file = tmp_path / "bad" / "1" / GRAPH_FILE
    graph_file.write_bytes(graph_file.read_bytes() + b"\x00")
    sessions: list[str] = []
    real = serving.GraphSession.__init__

    def counting(self: serving.GraphSession, graph: bytes, output: str, where: str) -> None:
        sessions.append(where)
        real(self, graph, output, where)

    monkeypatch.setattr(serving.GraphSession, "__init__", counting)
    with caplog.at_level(logging.ERROR, logger="model_service.model_registry"):
        a.refresh()
        assert listed(a) == [("good", 1, VersionState.READY)]
        with pytest.raises(NotFound):
            a.served("bad")  # the miss looks again, and refuses again
        a.served("good").infer(X)
        publish(tmp_path, keras_bytes, "good")
        a.refresh()
    assert sessions == ["model 'good' v1"]  # the refused one never reached ONNX Runtime
    refusals = [r.getMessage() for r in caplog.records if "bad" in r.getMessage()]
    assert (
        refusals
        and "skipping model artifact" in refusals[0]
        and "does not match its signature" in refusals[0]
    )
    assert len(refusals) == 1  # refused once, not again on every poll
    assert ModelWriter(ArtifactStore(tmp_path, KEY)).reserve("bad", SPEC, 1)[0].version == 2


def test_a_restart_sees_every_version_and_never_reuses_a_number_even_after_deletes(
    registries: Callable[[], ModelRegistry], tmp_path: Path, keras_bytes: bytes
) -> None:
    a = registries()
    for _ in range(4):
        publish(tmp_path, keras_bytes, "m")
    assert a.delete("m", 4) == [4] and a.delete("m", 2) == [2]
    a.close()
    restarted = registries()
    assert listed(restarted) == [("m", 1, VersionState.READY), ("m", 3, VersionState.READY)]
    assert restarted.reserve("m", SPEC, 1).version == 5
    assert restarted.delete("m", 1) == [1] and restarted.count() == 1


def test_preloaded_ids_are_loaded_at_start_and_never_dropped(tmp_path: Path, keras_bytes: bytes) -> None:
    for model_id in ("pinned", "a", "b"):
        publish(tmp_path, keras_bytes, model_id)
    registry = ModelRegistry(
        ArtifactStore(tmp_path, KEY), OPTIONS, budget=SessionBudget(1), preload=frozenset({"pinned"})
    )
    try:
        registry.load_all()
        assert registry.served("pinned").loaded  # built before the replica answers anything
        assert not registry.served("a").loaded and not registry.served("b").loaded
        registry.served("a").infer(X)
        registry.served("b").infer(X)  # the budget of one: "a" drops its session, "pinned" keeps its
        assert registry.served("pinned").loaded and registry.served("b").loaded
        assert not registry.served("a").loaded
        assert [(e.model_id, e.state) for e in registry.index()] == [
            ("a", VersionState.READY),
            ("b", VersionState.READY),
            ("pinned", VersionState.READY),
        ]  # listed and loadable is READY, loaded or not
    finally:
        registry.close()
