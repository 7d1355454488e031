"""Model versions: in memory (training, ready, unloaded), persisted as signed artifacts, reloaded on start.

Each version is ``<store>/<id>/<version>/`` holding model.keras and meta.json, written atomically and
HMAC-signed by ArtifactStore; nothing is deserialized before its signature verifies, and Keras loads
with safe_mode on. A version being trained is reserved here (listed as TRAINING, never on disk) and
either committed whole or released without a trace. Version numbers are never reused, not even after
a delete and a restart.
"""

from __future__ import annotations

import logging
import threading
from dataclasses import dataclass

from model_service import builder
from model_service.records import ModelRecord, now_text
from model_service.serving import ServedModel, ServingOptions, make_served
from model_service.spec import ModelSpec
from service_common.artifacts import ArtifactStore, validate_id
from service_common.errors import FailedPrecondition, InvalidArgument, NotFound
from service_common.memory import release_unused_soon
from service_common.versioning import VersionCounter, decode_page_token, encode_page_token

log = logging.getLogger(__name__)

MODEL_FILE = "model.keras"
META_FILE = "meta.json"
DEFAULT_PAGE_SIZE = 50
MAX_PAGE_SIZE = 1000
# Scaler ids are derived from model ids ("<id>-x", "<id>-y") and must stay within 128 characters.
MAX_MODEL_ID_LENGTH = 120

TRAINING = "TRAINING"
READY = "READY"
UNAVAILABLE = "UNAVAILABLE"


def check_model_id(model_id: str) -> str:
    if not model_id:
        raise InvalidArgument("model_id is required")
    validate_id(model_id, "model")
    if len(model_id) > MAX_MODEL_ID_LENGTH:
        raise InvalidArgument(
            f"model id is {len(model_id)} characters; at most {MAX_MODEL_ID_LENGTH} are allowed"
        )
    return model_id


@dataclass
class _Entry:
    record: ModelRecord
    state: str  # TRAINING | READY
    served: ServedModel | None = None
    unloaded: bool = False  # by unload(): kept on disk, not served until load()


@dataclass(frozen=True)
class ModelEntry:
    """One version for the repository index: READY, UNAVAILABLE (unloaded) or TRAINING."""

    model_id: str
    version: int
    state: str
    reason: str = ""


@dataclass(frozen=True)
class VersionView:
    record: ModelRecord
    state: str  # TRAINING | READY


class ModelRegistry:
    def __init__(self, store: ArtifactStore, options: ServingOptions) -> None:
        self._store = store
        self._options = options
        self._lock = threading.RLock()
        self._entries: dict[str, dict[int, _Entry]] = {}
        self._numbers = VersionCounter(store.root)
        self._closed = threading.Event()

    # ---- start and stop ------------------------------------------------------------------------

    def load_all(self) -> None:
        """Verify and load every stored version; a bad artifact is logged and skipped, never trusted."""
        loaded = skipped = 0
        for ref in self._store.scan():
            self._numbers.observe(ref.artifact_id, ref.version)
            try:
                record, served = self._read(ref.artifact_id, ref.version)
            except Exception as exc:  # noqa: BLE001 - one bad artifact must not stop the others loading
                skipped += 1
                log.error("skipping model artifact %s: %s", ref.path, exc)
                continue
            self._entries.setdefault(ref.artifact_id, {})[ref.version] = _Entry(record, READY, served)
            loaded += 1
        log.info("loaded %d model versions from %s (%d skipped)", loaded, self._store.root, skipped)

    def warm_all(self) -> None:
        """Trace every loaded model once, so first requests after a restart are fast (background thread)."""
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
        for entry in self._snapshot():
            if entry.served is not None:
                entry.served.close("the model service is shutting down")

    def _snapshot(self) -> list[_Entry]:
        with self._lock:
            return [entry for versions in self._entries.values() for entry in versions.values()]

    def _read(self, model_id: str, version: int) -> tuple[ModelRecord, ServedModel]:
        files = self._store.read(model_id, version)  # verifies the signature first
        record = ModelRecord.from_json(files[META_FILE], model_id, version)
        model = builder.from_keras_bytes(files[MODEL_FILE], record.spec, f"{model_id} v{version}")
        return record, make_served(record, model, self._options)

    # ---- versions ------------------------------------------------------------------------------

    def reserve(self, model_id: str, spec: ModelSpec, seed: int) -> ModelRecord:
        """A new version number for ``model_id`` (a new id when empty), listed as TRAINING."""
        if model_id:
            check_model_id(model_id)
        with self._lock:
            model_id = model_id or self._numbers.new_id("model")
            version = self._numbers.next(model_id)
            record = ModelRecord(model_id, version, spec, seed, now_text())
            self._entries.setdefault(model_id, {})[version] = _Entry(record, TRAINING)
            return record

    def release(self, model_id: str, version: int) -> None:
        """Forget a reserved version whose training did not finish (its number is not reused)."""
        with self._lock:
            versions = self._entries.get(model_id, {})
            entry = versions.get(version)
            if entry is not None and entry.state == TRAINING:
                del versions[version]
                if not versions:
                    del self._entries[model_id]

    def commit(self, record: ModelRecord, keras_bytes: bytes, served: ServedModel) -> None:
        """Persist a trained version (atomic, signed), then serve it."""
        self._store.write(
            record.model_id, record.version, {MODEL_FILE: keras_bytes, META_FILE: record.to_json()}
        )
        with self._lock:
            self._entries.setdefault(record.model_id, {})[record.version] = _Entry(record, READY, served)

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
            known = ", ".join(str(v) for v in sorted(versions))
            raise NotFound(f"model {model_id!r} has no version {version}; it has versions {known}")
        return versions[version]

    def get(self, model_id: str, version: int = 0) -> VersionView:
        """One version (0 = the latest, training or not)."""
        with self._lock:
            versions = self._versions(model_id)
            entry = versions[max(versions)] if version == 0 else self._entry(model_id, version)
            return VersionView(entry.record, entry.state)

    def list(
        self, model_id: str = "", page_size: int = 0, page_token: str = ""
    ) -> tuple[list[VersionView], str]:
        """One page in (id, version) order and the token of the next page ('' on the last)."""
        if page_size < 0:
            raise InvalidArgument(f"page_size must be >= 0 (0 means {DEFAULT_PAGE_SIZE}), got {page_size}")
        if model_id:
            check_model_id(model_id)
        size = min(page_size or DEFAULT_PAGE_SIZE, MAX_PAGE_SIZE)
        after = decode_page_token(page_token, "ListModels") if page_token else None
        with self._lock:
            ids = [model_id] if model_id else sorted(self._entries)
            keys = [(i, v) for i in ids for v in sorted(self._entries.get(i, {}))]
            if after is not None:
                keys = [key for key in keys if key > after]
            page = [
                VersionView(self._entries[i][v].record, self._entries[i][v].state) for i, v in keys[:size]
            ]
        next_token = (
            encode_page_token(page[-1].record.model_id, page[-1].record.version) if len(keys) > size else ""
        )
        return page, next_token

    def delete(self, model_id: str, version: int = 0) -> list[int]:
        """Delete one version, or every version when ``version`` is 0; returns what was deleted."""
        with self._lock:
            versions = self._versions(model_id)
            chosen = [version] if version else sorted(versions)
            for number in chosen:
                if self._entry(model_id, number).state == TRAINING:
                    raise FailedPrecondition(
                        f"model {model_id!r} version {number} is still training; cancel its Train call "
                        "first, or delete the ready versions one by one"
                    )
            # The high-water mark is on disk before anything goes, so numbers stay unique after a restart.
            self._numbers.save()
            removed = []
            for number in chosen:
                self._store.delete(model_id, number)
                removed.append(versions.pop(number))
            if not versions:
                del self._entries[model_id]
        for entry in removed:
            if entry.served is not None:
                entry.served.close(f"model {model_id!r} version {entry.record.version} was deleted")
        release_unused_soon()  # the models' memory goes back to the system, not only to malloc
        return chosen

    def count(self) -> int:
        with self._lock:
            return sum(1 for e in self._snapshot() if e.state == READY)

    # ---- serving -------------------------------------------------------------------------------

    def resolve(self, model_id: str, version: int = 0) -> ServedModel:
        """The served model (0 = the latest READY version). NotFound for unknown id/version;
        FailedPrecondition while training or when unloaded."""
        with self._lock:
            versions = self._versions(model_id)
            if version == 0:
                ready = [v for v, e in versions.items() if e.state == READY]
                if not ready:
                    training = ", ".join(str(v) for v in sorted(versions))
                    raise FailedPrecondition(
                        f"model {model_id!r} has no ready version yet: version {training} is still training"
                    )
                version = max(ready)
            entry = self._entry(model_id, version)
            if entry.state == TRAINING:
                raise FailedPrecondition(
                    f"model {model_id!r} version {version} is still training; it can serve once its Train "
                    "call has finished"
                )
            if entry.unloaded or entry.served is None:
                raise FailedPrecondition(
                    f"model {model_id!r} version {version} is unloaded; load it (RepositoryModelLoad) to serve it"
                )
            return entry.served

    def index(self) -> list[ModelEntry]:
        with self._lock:
            entries = []
            for model_id in sorted(self._entries):
                for version, entry in sorted(self._entries[model_id].items()):
                    if entry.state == TRAINING:
                        entries.append(ModelEntry(model_id, version, TRAINING, "training"))
                    elif entry.unloaded or entry.served is None:
                        entries.append(ModelEntry(model_id, version, UNAVAILABLE, "unloaded"))
                    else:
                        entries.append(ModelEntry(model_id, version, READY))
            return entries

    def load(self, model_id: str) -> None:
        """Load every stored version of ``model_id`` into memory (again) and warm it."""
        with self._lock:
            wanted = [v for v, e in self._versions(model_id).items() if e.state == READY and e.served is None]
        for version in wanted:
            record, served = self._read(model_id, version)
            served.warm()
            with self._lock:
                entry = self._entries.get(model_id, {}).get(version)
                if entry is None or entry.served is not None:
                    served.close("superseded")
                    continue
                entry.served, entry.unloaded = served, False
        with self._lock:
            for entry in self._versions(model_id).values():
                entry.unloaded = False

    def unload(self, model_id: str) -> None:
        """Drop every version of ``model_id`` from memory; it stays on disk and listed."""
        dropped = []
        with self._lock:
            for entry in self._versions(model_id).values():
                if entry.state == READY:
                    entry.unloaded = True
                    if entry.served is not None:
                        dropped.append(entry.served)
                        entry.served = None
        for served in dropped:
            served.close(f"model {model_id!r} version {served.version} was unloaded; load it to serve it")
        release_unused_soon()
