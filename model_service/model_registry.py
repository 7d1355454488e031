"""Model versions served by this process: a cache of the store, which is the only source of truth.

Each version is ``<store>/<id>/<version>/`` holding model.keras, model.onnx and meta.json (model_store),
written atomically and HMAC-signed by ArtifactStore; nothing is deserialized before its signature
verifies. A serving process reads only meta.json when it lists the store, and a version's serving graph
(model.onnx) the first time it is called: its ONNX Runtime session is built then, and kept while the
version is among the ``SessionBudget``'s most recently used (``--preload`` ids always). Every process on one store (workers, instances, a trainer) sees the same
versions: numbers are allocated under the store's lock, a version being trained is a reservation on the
store (listed as TRAINING by everyone, never on disk until committed whole), and unloads are markers on
the store. ``refresh()`` (run by the watcher every ``store_poll_seconds``) loads what appeared, drops
what went; ``sync(id)`` does it for one id at once (on a cache miss, and after a commit).

Serving code (the Predict RPC, the Open Inference Protocol) asks for what it needs through
``ServedModels``: ``served(id, version)`` for a model to infer with, ``index()``, ``load`` and ``unload``.
One registry per server, built in app.create_server and handed to both servicers.

Domain code only: no grpc here.
"""

from __future__ import annotations

import builtins
import enum
import logging
import threading
from collections.abc import Callable
from dataclasses import dataclass
from typing import Protocol

from model_service.model_store import (
    ModelPublisher,
    check_model_id,
    has_made_graph,
    logdir,
    read_graph,
    read_record,
    reserved_record,
)
from model_service.records import ModelRecord
from model_service.serving import BatchObserver, ServedModel, ServingOptions, SessionBudget
from model_service.settings import DEFAULT_MAX_LOADED_MODELS
from model_service.spec import ModelSpec
from service_common.artifacts import StoredArtifacts
from service_common.errors import FailedPrecondition, IntegrityError, NotFound
from service_common.memory import release_unused_soon
from service_common.versioning import (
    Key,
    Page,
    RefusedVersions,
    StoreWatcher,
    delete_versions,
    no_such_version,
)

log = logging.getLogger(__name__)


class VersionState(enum.StrEnum):
    TRAINING = "TRAINING"  # reserved by a live process on the store; nothing on disk yet
    READY = "READY"  # stored and served by this process (its session is built on its first call)
    UNAVAILABLE = "UNAVAILABLE"  # stored, unloaded (RepositoryModelUnload) for the whole store


@dataclass
class _Entry:
    record: ModelRecord
    state: VersionState
    served: ServedModel | None = None  # set exactly when state is READY


@dataclass(frozen=True)
class ModelEntry:
    """One version for the repository index: READY, UNAVAILABLE (reason "unloaded") or TRAINING
    (reason "training")."""

    model_id: str
    version: int
    state: VersionState
    reason: str = ""


@dataclass(frozen=True)
class VersionView:
    record: ModelRecord
    state: VersionState


@dataclass(frozen=True)
class _Load:
    """One version to (re)load during a refresh: its record read, and served when ``serve`` is set."""

    key: Key
    serve: bool


class ServedModels(Protocol):
    """What serving code needs of the registry (ModelRegistry implements it)."""

    def served(self, model_id: str, version: int = 0) -> ServedModel: ...

    def index(self) -> builtins.list[ModelEntry]: ...

    def load(self, model_id: str) -> None: ...

    def unload(self, model_id: str) -> None: ...


# Makes the serving graph of a version stored without one (the trainer process does; blocking).
GraphMaker = Callable[[str, int], None]


class ModelRegistry:
    def __init__(
        self,
        store: StoredArtifacts,
        options: ServingOptions,
        observe_batch: BatchObserver | None = None,
        *,
        graphs: StoredArtifacts | None = None,
        budget: SessionBudget | None = None,
        make_graph: GraphMaker | None = None,
        preload: frozenset[str] = frozenset(),
    ) -> None:
        self._store = store
        self._graphs = graphs if graphs is not None else store
        self.publisher = ModelPublisher(store)
        self._options = options
        self._observe_batch = observe_batch  # every served version's batcher reports to it
        self.budget = budget if budget is not None else SessionBudget(DEFAULT_MAX_LOADED_MODELS)
        self._make_graph = make_graph
        self._preload = preload
        # Listed versions stored without a serving graph: the trainer makes theirs in the background,
        # one at a time, so a version it cannot make one for is refused soon after it is first seen.
        self._graphless: set[Key] = set()
        self._upgrader: threading.Thread | None = None
        self._lock = threading.RLock()  # guards _entries; never held while loading
        self._sync_lock = threading.Lock()  # one refresh at a time, so no version is loaded twice
        self._entries: dict[str, dict[int, _Entry]] = {}
        self._refused = RefusedVersions("model")
        self._generation: object = None
        self._watcher: StoreWatcher | None = None
        self._closed = threading.Event()

    # ---- start and stop ------------------------------------------------------------------------

    def load_all(self) -> None:
        """List every stored version (its record verified, no session built) and build the sessions of
        the ``preload`` ids; a bad artifact is logged and skipped, never trusted."""
        loaded, skipped = self._refresh(None)
        log.info("listed %d model versions in %s (%d skipped)", loaded, self._store.url, skipped)
        missing = set(self._preload)
        for entry in self._snapshot():
            if entry.served is not None and entry.record.model_id in self._preload:
                missing.discard(entry.record.model_id)
                try:
                    entry.served.load()
                except Exception:  # noqa: BLE001 - it shows again, with its status, on its first call
                    log.exception("preloading %s v%d failed", entry.record.model_id, entry.record.version)
        if missing:
            log.warning("--preload names models the store does not hold: %s", ", ".join(sorted(missing)))

    def start_watching(self, poll_seconds: float) -> None:
        """Follow the store from a daemon thread every ``poll_seconds`` (0 = only on misses and commits)."""
        if poll_seconds > 0 and self._watcher is None:
            self._watcher = StoreWatcher("watch-models", self._store, self.refresh, self.sync, poll_seconds)
            self._watcher.start()

    def warm_all(self) -> None:
        """Build the session of every served version, the budget allowing (background thread)."""
        for entry in self._snapshot():
            if self._closed.is_set():
                return
            if entry.served is not None:
                try:
                    entry.served.warm()
                except Exception:  # noqa: BLE001 - a failing warm-up shows again on first use
                    log.exception("warming %s v%d failed", entry.record.model_id, entry.record.version)

    def close(self) -> None:
        self._closed.set()
        if self._watcher is not None:
            self._watcher.stop()
        self.publisher.release_all()
        for entry in self._snapshot():
            if entry.served is not None:
                entry.served.close("the model service is shutting down")

    def _snapshot(self) -> list[_Entry]:
        with self._lock:
            return [entry for versions in self._entries.values() for entry in versions.values()]

    # ---- following the store -------------------------------------------------------------------

    def refresh(self) -> None:
        """Bring the whole cache in line with the store (cheap when nothing changed)."""
        self._refresh(None)

    def sync(self, model_id: str) -> None:
        """Bring one id in line with the store now: a version another process just committed, deleted,
        unloaded or reserved is seen on return."""
        self._refresh(check_model_id(model_id))

    def _refresh(self, only: str | None) -> tuple[int, int]:
        """Diff the store against the cache and apply it; returns (versions loaded, versions refused)."""
        with self._sync_lock:
            if self._closed.is_set():
                return 0, 0
            # Reservations before artifacts: a commit in between shows as both (the artifact wins),
            # never as neither.
            reserved = set(self._store.live_reservations(only))
            token = self._store.generation() if only is None else None
            full = only is not None or token != self._generation
            with self._lock:
                states = {
                    (model_id, version): entry.state
                    for model_id, versions in self._entries.items()
                    if only is None or model_id == only
                    for version, entry in versions.items()
                }
            loads: list[_Load] = []
            unloads: list[Key] = []
            if full:
                stored = {(ref.artifact_id, ref.version) for ref in self._store.scan(only)}
                unloaded = self._store.unloaded_ids()
                self._refused.keep_stored(stored, only)
                for key in sorted(key for key in stored if key not in self._refused):
                    have = states.get(key)
                    want_served = unloaded.get(key[0], 0) < key[1]
                    if have in (None, VersionState.TRAINING) or (
                        have is VersionState.UNAVAILABLE and want_served
                    ):
                        loads.append(_Load(key, want_served))
                    elif have is VersionState.READY and not want_served:
                        unloads.append(key)
            else:
                # Nothing came or went on disk since the last full look; only reservations can differ.
                stored = {key for key, state in states.items() if state is not VersionState.TRAINING}
            gone = [key for key in states if key not in stored and key not in reserved]
            training = {
                key: record
                for key in sorted(reserved - stored - set(states))
                if (record := reserved_record(self._store, *key)) is not None
            }

            loaded: dict[Key, _Entry] = {}
            for load in loads:
                entry = self._load(load)
                if entry is None:  # refused
                    gone.append(load.key)  # e.g. a TRAINING entry whose commit cannot be served
                else:
                    loaded[load.key] = entry

            closing: list[tuple[ServedModel, str]] = []
            with self._lock:
                for model_id, version in gone:
                    entry = self._entries.get(model_id, {}).pop(version, None)
                    if entry is not None and entry.served is not None:
                        closing.append((entry.served, f"model {model_id!r} version {version} was deleted"))
                for model_id, version in unloads:
                    entry = self._entries[model_id][version]
                    if entry.served is not None:
                        closing.append(
                            (
                                entry.served,
                                f"model {model_id!r} version {version} was unloaded; load it to serve it",
                            )
                        )
                    entry.state, entry.served = VersionState.UNAVAILABLE, None
                for (model_id, version), entry in loaded.items():
                    self._entries.setdefault(model_id, {})[version] = entry
                for (model_id, version), record in training.items():
                    self._entries.setdefault(model_id, {})[version] = _Entry(record, VersionState.TRAINING)
                for model_id in [m for m, versions in self._entries.items() if not versions]:
                    del self._entries[model_id]
            if only is None:
                self._generation = token
        for served, reason in closing:
            served.close(reason)
        self._upgrade_in_background()
        return len(loaded), len(loads) - len(loaded)

    def _upgrade_in_background(self) -> None:
        if self._make_graph is None or self._closed.is_set():
            return
        with self._lock:
            if not self._graphless or (self._upgrader is not None and self._upgrader.is_alive()):
                return
            self._upgrader = threading.Thread(target=self._upgrade, name="serving-graphs", daemon=True)
            self._upgrader.start()

    def _upgrade(self) -> None:
        """Have the trainer make the serving graph of every listed version stored without one."""
        while not self._closed.is_set():
            with self._lock:
                if not self._graphless:
                    return
                key = self._graphless.pop()
                entry = self._entries.get(key[0], {}).get(key[1])
            if entry is None or entry.state is VersionState.TRAINING:
                continue
            try:
                self._graph(*key)
            except IntegrityError as exc:
                self._refuse(key, exc)
            except Exception as exc:  # noqa: BLE001 - its first call tries again, and says why
                log.warning("could not make the serving graph of %s v%d yet: %s", key[0], key[1], exc)

    def _load(self, load: _Load) -> _Entry | None:
        """The version's entry, or None when it is refused (logged; not read again until deleted)."""
        location = self._store.location(*load.key)
        return self._refused.attempt(load.key, location, lambda: self._read(load))

    def _read(self, load: _Load) -> _Entry:
        model_id, version = load.key
        record, has_graph = read_record(self._store, model_id, version)  # verifies every file
        if not has_graph and not has_made_graph(self._graphs, model_id, version):
            self._graphless.add(load.key)
        if not load.serve:
            return _Entry(record, VersionState.UNAVAILABLE)
        served = ServedModel(
            record,
            lambda: self._graph(model_id, version),
            self._options,
            self._observe_batch,
            self.budget,
            pinned=model_id in self._preload,
            on_refused=lambda exc: self._refuse(load.key, exc),
        )
        return _Entry(record, VersionState.READY, served)

    def _refuse(self, key: Key, exc: Exception) -> None:
        """A listed version whose serving graph failed to verify or load: refused as a bad artifact at
        listing is (dropped from the index, NOT_FOUND from now on, not read again until deleted)."""
        with self._sync_lock:
            self._refused.refuse(key, self._store.location(*key), exc)
            with self._lock:
                entry = self._entries.get(key[0], {}).pop(key[1], None)
                if key[0] in self._entries and not self._entries[key[0]]:
                    del self._entries[key[0]]
        if entry is not None and entry.served is not None:
            entry.served.close(f"model {key[0]!r} version {key[1]} failed to load: {exc}")

    def _graph(self, model_id: str, version: int) -> bytes:
        """A served version's serving graph, verified; one stored without it gets it made once by the
        trainer process first (blocking: called when the version's session is built)."""
        try:
            graph = read_graph(self._store, self._graphs, model_id, version)
        except (IntegrityError, FileNotFoundError):
            if not any(ref.version == version for ref in self._store.scan(model_id)):
                raise NotFound(f"model {model_id!r} version {version} was deleted") from None
            raise
        if graph is None:
            if self._make_graph is None:
                raise FailedPrecondition(
                    f"model {model_id!r} version {version} was stored without a serving graph, and this "
                    "process has no trainer to make one"
                )
            self._make_graph(model_id, version)
            graph = read_graph(self._store, self._graphs, model_id, version)
            if graph is None:
                raise IntegrityError(
                    f"model {model_id!r} version {version}: no serving graph was made for it"
                )
        return graph

    # ---- versions ------------------------------------------------------------------------------

    def reserve(self, model_id: str, spec: ModelSpec, seed: int) -> ModelRecord:
        """A new version number for ``model_id`` (a new id when empty), listed as TRAINING store-wide."""
        record = self.publisher.reserve(model_id, spec, seed)
        self.sync(record.model_id)
        return record

    def release(self, model_id: str, version: int) -> None:
        """Forget a reserved version whose training did not finish (its number is not reused)."""
        self.publisher.release(model_id, version)
        self.sync(model_id)

    def commit(
        self,
        record: ModelRecord,
        keras_bytes: bytes,
        graph: bytes,
        extra_files: dict[str, bytes] | None = None,
    ) -> None:
        """Persist a version this process reserved (atomic, signed), then serve it before returning."""
        self.publisher.commit(record, keras_bytes, graph, extra_files)
        self.sync(record.model_id)

    # ---- queries -------------------------------------------------------------------------------

    def _versions(self, model_id: str) -> dict[int, _Entry]:
        check_model_id(model_id)
        versions = self._entries.get(model_id)
        if not versions:
            raise NotFound(f"model {model_id!r} not found")
        return versions

    def _entry(self, model_id: str, version: int) -> _Entry:
        versions = self._versions(model_id)
        if version not in versions:
            raise no_such_version("model", model_id, version, list(versions))
        return versions[version]

    def _cached(self, model_id: str, version: int) -> None:
        """Sync ``model_id`` when the cache does not have it (or that version): another process may
        have just committed it, and must not be answered NOT_FOUND for that."""
        check_model_id(model_id)
        with self._lock:
            versions = self._entries.get(model_id)
            if versions and (version == 0 or version in versions):
                return
        self.sync(model_id)

    def get(self, model_id: str, version: int = 0) -> VersionView:
        """One version (0 = the latest, training or not)."""
        self._cached(model_id, version)
        with self._lock:
            versions = self._versions(model_id)
            entry = versions[max(versions)] if version == 0 else self._entry(model_id, version)
            return VersionView(entry.record, entry.state)

    def list(
        self, model_id: str = "", page_size: int = 0, page_token: str = ""
    ) -> tuple[list[VersionView], str]:
        """One page in (id, version) order and the token of the next page ('' on the last)."""
        if model_id:
            check_model_id(model_id)
        page = Page.of(page_size, page_token, "ListModels")
        with self._lock:
            ids = [model_id] if model_id else sorted(self._entries)
            keys, next_token = page.take([(i, v) for i in ids for v in sorted(self._entries.get(i, {}))])
            views = [VersionView(self._entries[i][v].record, self._entries[i][v].state) for i, v in keys]
        return views, next_token

    def delete(self, model_id: str, version: int = 0) -> builtins.list[int]:
        """Delete one version, or every version when ``version`` is 0, for the whole store; returns
        what was deleted."""
        self.sync(check_model_id(model_id))
        with self._lock:
            versions = self._versions(model_id)
            chosen = [version] if version else sorted(versions)
            for number in chosen:
                if self._entry(model_id, number).state is VersionState.TRAINING:
                    raise FailedPrecondition(
                        f"model {model_id!r} version {number} is still training; cancel its Train call "
                        "first, or delete the ready versions one by one"
                    )
        removed = delete_versions(self._store, "model", model_id, chosen, self.sync)
        if self._graphs is not self._store:
            for number in removed:
                self._graphs.delete(model_id, number)  # the graph made for a version stored without one
        release_unused_soon()  # the models' memory goes back to the system, not only to malloc
        return removed

    def logdir(self, record: ModelRecord) -> str:
        """The version's TensorBoard run directory ('' when it has no event files)."""
        return logdir(self._store, record)

    def stored_record(self, model_id: str, version: int = 0) -> ModelRecord:
        """A stored version's record (0 = the latest stored, served or unloaded), read again from the
        store, signature verified. FailedPrecondition while it is still training."""
        self._cached(model_id, version)
        with self._lock:
            versions = self._versions(model_id)
            if version == 0:
                stored = [v for v, e in versions.items() if e.state is not VersionState.TRAINING]
                if not stored:
                    raise FailedPrecondition(
                        f"model {model_id!r} has no stored version yet: version "
                        f"{', '.join(str(v) for v in sorted(versions))} is still training"
                    )
                version = max(stored)
            if self._entry(model_id, version).state is VersionState.TRAINING:
                raise FailedPrecondition(
                    f"model {model_id!r} version {version} is still training; export it once its Train "
                    "call has finished"
                )
        return read_record(self._store, model_id, version)[0]

    def graph(self, model_id: str, version: int) -> bytes:
        """A stored version's serving graph, verified (made by the trainer first when it has none)."""
        return self._graph(model_id, version)

    def count(self) -> int:
        """Stored versions (served or unloaded) this process knows of."""
        with self._lock:
            return sum(1 for e in self._snapshot() if e.state is not VersionState.TRAINING)

    # ---- serving -------------------------------------------------------------------------------

    def served(self, model_id: str, version: int = 0) -> ServedModel:
        """The model serving ``model_id`` ``version`` (0 = the latest stored version). NotFound for an
        unknown id/version; FailedPrecondition while that version is training or when it is unloaded."""
        try:
            return self._served_cached(model_id, version)
        except (NotFound, FailedPrecondition):
            # Unknown, training or unloaded as far as this cache knows: another process may have
            # committed, loaded or unloaded it since the last poll, so look at the store before refusing.
            self.sync(model_id)
            return self._served_cached(model_id, version)

    def _served_cached(self, model_id: str, version: int) -> ServedModel:
        with self._lock:
            versions = self._versions(model_id)
            if version == 0:
                # The latest stored version: served, or unloaded (then refused below, saying so).
                stored = [v for v, e in versions.items() if e.state is not VersionState.TRAINING]
                if not stored:
                    training = ", ".join(str(v) for v in sorted(versions))
                    raise FailedPrecondition(
                        f"model {model_id!r} has no ready version yet: version {training} is still training"
                    )
                version = max(stored)
            entry = self._entry(model_id, version)
            if entry.state is VersionState.TRAINING:
                raise FailedPrecondition(
                    f"model {model_id!r} version {version} is still training; it can serve once its Train "
                    "call has finished"
                )
            if entry.state is VersionState.UNAVAILABLE or entry.served is None:
                raise FailedPrecondition(
                    f"model {model_id!r} version {version} is unloaded; load it (RepositoryModelLoad) to serve it"
                )
            return entry.served

    def index(self) -> builtins.list[ModelEntry]:
        """Every version this process knows of, in (id, version) order, with its state."""
        reasons = {VersionState.TRAINING: "training", VersionState.UNAVAILABLE: "unloaded"}
        with self._lock:
            return [
                ModelEntry(model_id, version, entry.state, reasons.get(entry.state, ""))
                for model_id in sorted(self._entries)
                for version, entry in sorted(self._entries[model_id].items())
            ]

    def load(self, model_id: str) -> None:
        """Serve every stored version of ``model_id`` again, in every process on the store (warmed here)."""
        self._cached(model_id, 0)
        with self._lock:
            self._versions(model_id)
        self._store.set_unloaded(model_id, False)
        self.sync(model_id)

    def unload(self, model_id: str) -> None:
        """Stop serving every stored version of ``model_id`` in every process on the store; they stay
        on disk and listed (UNAVAILABLE). Versions committed afterwards are served."""
        self._cached(model_id, 0)
        with self._lock:
            self._versions(model_id)
        self._store.set_unloaded(model_id, True)
        self.sync(model_id)
        release_unused_soon()
