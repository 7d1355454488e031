"""Scaler versions in memory, persisted as signed joblib artifacts, reloaded on start.

A version is written completely (atomic, signed) before anyone can see it, and never changes
afterwards. Version numbers are never reused, not even after a delete and a restart: a caller that
cached (id, version) must never be handed different parameters under the same name.
"""

from __future__ import annotations

import io
import json
import logging
import threading
from dataclasses import dataclass
from datetime import UTC, datetime

import joblib
import sklearn

from scaler_service.scaling import ESTIMATOR_BY_KIND, FittedScaler, make_spec
from service_common.artifacts import ArtifactStore, validate_id
from service_common.errors import IntegrityError, InvalidArgument, NotFound
from service_common.versioning import VersionCounter, decode_page_token, encode_page_token

log = logging.getLogger(__name__)

ESTIMATOR_FILE = "scaler.joblib"
META_FILE = "meta.json"
FORMAT = 1
DEFAULT_PAGE_SIZE = 50
MAX_PAGE_SIZE = 1000


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
    def __init__(self, store: ArtifactStore) -> None:
        self._store = store
        self._lock = threading.RLock()
        self._versions: dict[str, dict[int, ScalerVersion]] = {}
        self._numbers = VersionCounter(store.root)
        self._load()

    # ---- persistence ---------------------------------------------------------------------------

    def _load(self) -> None:
        loaded = skipped = 0
        for ref in self._store.scan():
            # Even a skipped artifact occupies its number: a new fit must not collide with its directory.
            self._numbers.observe(ref.artifact_id, ref.version)
            try:
                record = _deserialize(
                    ref.artifact_id, ref.version, self._store.read(ref.artifact_id, ref.version)
                )
            except Exception as exc:  # noqa: BLE001 - one bad artifact must not stop the others loading
                skipped += 1
                log.error("skipping scaler artifact %s: %s", ref.path, exc)
                continue
            self._versions.setdefault(ref.artifact_id, {})[ref.version] = record
            loaded += 1
        log.info("loaded %d scaler versions from %s (%d skipped)", loaded, self._store.root, skipped)

    # ---- operations ----------------------------------------------------------------------------

    def add(self, scaler_id: str, fitted: FittedScaler) -> ScalerVersion:
        """Persist ``fitted`` as the next version of ``scaler_id`` (a new id when empty)."""
        if scaler_id:
            validate_id(scaler_id, "scaler")
        with self._lock:
            scaler_id = scaler_id or self._numbers.new_id("scaler")
            # Reserved now, so concurrent fits of one id get distinct versions while writing unlocked.
            version = self._numbers.next(scaler_id)
        record = ScalerVersion(scaler_id, version, datetime.now(UTC), fitted)
        self._store.write(scaler_id, version, _serialize(record))
        with self._lock:
            self._versions.setdefault(scaler_id, {})[version] = record
        return record

    def get(self, scaler_id: str, version: int = 0) -> ScalerVersion:
        if not scaler_id:
            raise InvalidArgument("scaler_id is required")
        validate_id(scaler_id, "scaler")  # no id that could not exist is looked up (or repeated whole)
        with self._lock:
            versions = self._versions.get(scaler_id)
            if not versions:
                raise NotFound(f"scaler {scaler_id!r} not found")
            if version == 0:
                return versions[max(versions)]
            if version not in versions:
                known = ", ".join(str(v) for v in sorted(versions))
                raise NotFound(f"scaler {scaler_id!r} has no version {version}; it has versions {known}")
            return versions[version]

    def list(
        self, scaler_id: str = "", page_size: int = 0, page_token: str = ""
    ) -> tuple[list[ScalerVersion], str]:
        """One page in (id, version) order and the token of the next page ('' on the last)."""
        if page_size < 0:
            raise InvalidArgument(f"page_size must be >= 0 (0 means {DEFAULT_PAGE_SIZE}), got {page_size}")
        if scaler_id:
            validate_id(scaler_id, "scaler")
        size = min(page_size or DEFAULT_PAGE_SIZE, MAX_PAGE_SIZE)
        after = decode_page_token(page_token, "ListScalers") if page_token else None
        with self._lock:
            ids = [scaler_id] if scaler_id else sorted(self._versions)
            keys = [(i, v) for i in ids for v in sorted(self._versions.get(i, {}))]
            if after is not None:
                keys = [key for key in keys if key > after]
            page = [self._versions[i][v] for i, v in keys[:size]]
        next_token = encode_page_token(page[-1].scaler_id, page[-1].version) if len(keys) > size else ""
        return page, next_token

    def delete(self, scaler_id: str, version: int = 0) -> list[int]:
        """Delete one version, or every version when ``version`` is 0; returns what was deleted."""
        if not scaler_id:
            raise InvalidArgument("scaler_id is required")
        validate_id(scaler_id, "scaler")
        with self._lock:
            record = self.get(scaler_id, version) if version else None
            versions = [record.version] if record else sorted(self._versions.get(scaler_id, {}))
            if not versions:
                raise NotFound(f"scaler {scaler_id!r} not found")
            # The high-water mark is on disk before anything goes, so numbers stay unique after a restart.
            self._numbers.save()
            for number in versions:
                self._store.delete(scaler_id, number)
                del self._versions[scaler_id][number]
            if not self._versions[scaler_id]:
                del self._versions[scaler_id]
        return versions

    def count(self) -> int:
        with self._lock:
            return sum(len(v) for v in self._versions.values())
