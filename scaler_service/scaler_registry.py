"""Scaler versions: signed joblib artifacts in the store, cached in memory by every process on it.

A version is written completely (atomic, signed) before anyone can see it, and never changes
afterwards. Version numbers are never reused, not even after a delete and a restart: a caller that
cached (id, version) must never be handed different parameters under the same name.
"""

from __future__ import annotations

import builtins
import functools
import io
import json
import logging
import threading
from dataclasses import dataclass
from datetime import UTC, datetime

import joblib
import sklearn

from scaler_service.sklearn_scalers import ESTIMATOR_BY_KIND, FittedScaler, make_spec
from service_common.artifacts import StoredArtifacts, validate_id
from service_common.errors import IntegrityError, InvalidArgument, NotFound
from service_common.versioning import (
    Key,
    Page,
    RefusedVersions,
    StoreWatcher,
    delete_versions,
    no_such_version,
)

log = logging.getLogger(__name__)

ESTIMATOR_FILE = "scaler.joblib"
META_FILE = "meta.json"
FORMAT = 1


@dataclass(frozen=True)
class ScalerVersion:
    scaler_id: str
    version: int
    created_at: datetime
    fitted: FittedScaler

    @property
    def created_at_text(self) -> str:
        return self.created_at.isoformat(timespec="microseconds").replace("+00:00", "Z")


def _serialize(record: ScalerVersion) -> dict[str, bytes]:
    fitted = record.fitted
    meta = {
        "format": FORMAT,
        "scaler_id": record.scaler_id,
        "version": record.version,
        "created_at": record.created_at_text,
        "spec": fitted.spec.to_dict(),
        "sample_shape": list(fitted.sample_shape),
        "n_samples_seen": fitted.n_samples_seen,
        "fingerprint": fitted.fingerprint,
        "sklearn_version": sklearn.__version__,
    }
    buffer = io.BytesIO()
    joblib.dump(fitted.estimator, buffer)
    return {ESTIMATOR_FILE: buffer.getvalue(), META_FILE: json.dumps(meta, indent=1).encode()}


def _deserialize(scaler_id: str, version: int, files: dict[str, bytes]) -> ScalerVersion:
    """Rebuild a version from files whose signature has already been verified."""
    meta = json.loads(files[META_FILE])
    if meta.get("format") != FORMAT:
        raise IntegrityError(f"unsupported artifact format {meta.get('format')!r}, expected {FORMAT}")
    if (meta["scaler_id"], meta["version"]) != (scaler_id, version):
        raise IntegrityError(f"artifact says it is {meta['scaler_id']} v{meta['version']}")
    raw_spec = meta["spec"]
    spec = make_spec(raw_spec["kind"], raw_spec["layout"], raw_spec["params"])
    estimator = joblib.load(io.BytesIO(files[ESTIMATOR_FILE]))
    expected_cls = ESTIMATOR_BY_KIND[spec.kind]
    if type(estimator) is not expected_cls:
        raise IntegrityError(f"holds a {type(estimator).__name__}, expected {expected_cls.__name__}")
    fitted = FittedScaler(
        spec=spec,
        sample_shape=tuple(int(d) for d in meta["sample_shape"]),
        n_samples_seen=int(meta["n_samples_seen"]),
        fingerprint=str(meta["fingerprint"]),
        estimator=estimator,
    )
    if estimator.n_features_in_ != fitted.n_columns:
        raise IntegrityError(
            f"estimator has {estimator.n_features_in_} columns, meta says {fitted.n_columns}"
        )
    created_at = datetime.fromisoformat(meta["created_at"])
    return ScalerVersion(scaler_id, version, created_at, fitted)


class ScalerRegistry:
    """The scaler versions this process serves: a cache of the store, the only source of truth.

    Numbers are allocated under the store's lock, so processes sharing a store never collide; versions
    another process added or deleted are seen by ``refresh()`` (the watcher, every
    ``store_poll_seconds``) and, for one id, at once on a cache miss (``sync``).
    """

    def __init__(self, store: StoredArtifacts) -> None:
        self._store = store
        self._lock = threading.RLock()  # guards _versions; never held while reading artifacts
        self._sync_lock = threading.Lock()  # one refresh at a time, so nothing is deserialized twice
        self._versions: dict[str, dict[int, ScalerVersion]] = {}
        self._refused = RefusedVersions("scaler")
        self._generation: object = None
        self._watcher: StoreWatcher | None = None
        loaded, skipped = self._refresh(None)
        log.info("loaded %d scaler versions from %s (%d skipped)", loaded, self._store.url, skipped)

    # ---- following the store -------------------------------------------------------------------

    def start_watching(self, poll_seconds: float) -> None:
        """Follow the store from a daemon thread every ``poll_seconds`` (0 = only on misses)."""
        if poll_seconds > 0 and self._watcher is None:
            self._watcher = StoreWatcher("watch-scalers", self._store, self.refresh, self.sync, poll_seconds)
            self._watcher.start()

    def close(self) -> None:
        if self._watcher is not None:
            self._watcher.stop()

    def refresh(self) -> None:
        """Bring the whole cache in line with the store (cheap when nothing changed)."""
        self._refresh(None)

    def sync(self, scaler_id: str) -> None:
        """Bring one id in line with the store now."""
        self._refresh(validate_id(scaler_id, "scaler"))

    def _sync_on_miss(self, scaler_id: str) -> None:
        try:
            validate_id(scaler_id, "scaler")
        except InvalidArgument:
            return  # an id that can never be stored is simply not found, as it always was
        self.sync(scaler_id)

    def _refresh(self, only: str | None) -> tuple[int, int]:
        """Load versions that appeared, drop those that went; returns (loaded, refused)."""
        with self._sync_lock:
            token = self._store.generation() if only is None else None
            if only is None and token == self._generation:
                return 0, 0
            refs = list(self._store.scan(only))
            stored = {(ref.artifact_id, ref.version) for ref in refs}
            with self._lock:
                cached = {
                    (scaler_id, version)
                    for scaler_id, versions in self._versions.items()
                    if only is None or scaler_id == only
                    for version in versions
                }
            self._refused.keep_stored(stored, only)
            loaded: list[ScalerVersion] = []
            for ref in refs:
                key: Key = (ref.artifact_id, ref.version)
                if key in cached or key in self._refused:
                    continue
                record = self._refused.attempt(key, ref.location, functools.partial(self._read, *key))
                if record is not None:
                    loaded.append(record)
            with self._lock:
                for scaler_id, version in cached - stored:
                    versions = self._versions.get(scaler_id, {})
                    versions.pop(version, None)
                    if not versions:
                        self._versions.pop(scaler_id, None)
                for record in loaded:
                    self._versions.setdefault(record.scaler_id, {})[record.version] = record
            if only is None:
                self._generation = token
            return len(loaded), sum(1 for key in stored - cached if key in self._refused)

    def _read(self, scaler_id: str, version: int) -> ScalerVersion:
        files = self._store.read(scaler_id, version)  # verifies the signature first
        return _deserialize(scaler_id, version, files)

    # ---- operations ----------------------------------------------------------------------------

    def add(self, scaler_id: str, fitted: FittedScaler) -> ScalerVersion:
        """Persist ``fitted`` as the next version of ``scaler_id`` (a new id when empty)."""
        if scaler_id:
            validate_id(scaler_id, "scaler")
        scaler_id = scaler_id or self._store.new_id("scaler")
        # Allocated under the store's lock: concurrent fits in any process get distinct versions.
        reservation = self._store.allocate(scaler_id)
        try:
            record = ScalerVersion(scaler_id, reservation.version, datetime.now(UTC), fitted)
            self._store.commit(reservation, _serialize(record))
        finally:
            reservation.release()
        # Under the sync lock: a refresh that scanned the store before this commit must not find the
        # new version in the cache afterwards and drop it as deleted.
        with self._sync_lock, self._lock:
            self._versions.setdefault(scaler_id, {})[record.version] = record
        return record

    def get(self, scaler_id: str, version: int = 0) -> ScalerVersion:
        if not scaler_id:
            raise InvalidArgument("scaler_id is required")
        validate_id(scaler_id, "scaler")  # no id that could not exist is looked up (or repeated whole)
        with self._lock:
            versions = self._versions.get(scaler_id)
            cached = bool(versions) and (version == 0 or version in (versions or {}))
        if not cached:
            # Another process may have just added it: look at the store before answering NOT_FOUND.
            self._sync_on_miss(scaler_id)
        with self._lock:
            versions = self._versions.get(scaler_id)
            if not versions:
                raise NotFound(f"scaler {scaler_id!r} not found")
            if version == 0:
                return versions[max(versions)]
            if version not in versions:
                raise no_such_version("scaler", scaler_id, version, list(versions))
            return versions[version]

    def list(
        self, scaler_id: str = "", page_size: int = 0, page_token: str = ""
    ) -> tuple[list[ScalerVersion], str]:
        """One page in (id, version) order and the token of the next page ('' on the last)."""
        if scaler_id:
            validate_id(scaler_id, "scaler")
        page = Page.of(page_size, page_token, "ListScalers")
        with self._lock:
            ids = [scaler_id] if scaler_id else sorted(self._versions)
            keys, next_token = page.take([(i, v) for i in ids for v in sorted(self._versions.get(i, {}))])
            return [self._versions[i][v] for i, v in keys], next_token

    def delete(self, scaler_id: str, version: int = 0) -> builtins.list[int]:
        """Delete one version, or every version when ``version`` is 0, for the whole store; returns
        what was deleted."""
        if not scaler_id:
            raise InvalidArgument("scaler_id is required")
        validate_id(scaler_id, "scaler")
        self._sync_on_miss(scaler_id)
        record = self.get(scaler_id, version) if version else None
        with self._lock:
            versions = [record.version] if record else sorted(self._versions.get(scaler_id, {}))
        if not versions:
            raise NotFound(f"scaler {scaler_id!r} not found")
        return delete_versions(self._store, "scaler", scaler_id, versions, self.sync)

    def count(self) -> int:
        with self._lock:
            return sum(len(v) for v in self._versions.values())
