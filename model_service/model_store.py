"""Model versions as stored: ``model.keras``, ``model.onnx`` and ``meta.json`` in one signed artifact
(service_common.artifacts).

``model.onnx`` is the version's serving graph (model_service/serving_graph.py): serving processes read
it and ``meta.json`` only, never the Keras file. Versions stored before serving graphs existed hold
none; theirs is made once by the trainer process and kept in a signed store of its own beside the
models (``serving-graphs/<id>/<version>``), deleted with the version.

``ModelWriter`` reserves, commits and releases versions without loading or serving anything, so a
process that only trains (it answers no Predict) can publish versions; every serving process picks
them up from the store (ModelRegistry.refresh / sync). Domain code only: no grpc, no TensorFlow.
"""

from __future__ import annotations

import contextlib
import logging
import threading

from model_service.records import ModelRecord, now_text
from model_service.settings import ModelSettings
from model_service.spec import ModelSpec
from service_common.artifacts import ArtifactStore, HeldVersion, StoredArtifacts, validate_id
from service_common.errors import FailedPrecondition, IntegrityError, InvalidArgument
from service_common.stores import open_artifact_store

log = logging.getLogger(__name__)

MODEL_FILE = "model.keras"
GRAPH_FILE = "model.onnx"
META_FILE = "meta.json"
# Scaler ids are derived from model ids ("<id>-x", "<id>-y") and must stay within 128 characters.
MAX_MODEL_ID_LENGTH = 120


# Model versions live under <store>/models (a directory or an S3 prefix); a generated signing key (a
# directory store only) at <store>/.signing-key.
ARTIFACT_DIR = "models"
# Serving graphs made afterwards for versions stored without one.
GRAPH_ARTIFACT_DIR = "serving-graphs"


def _open(settings: ModelSettings, directory: str) -> StoredArtifacts:
    return open_artifact_store(
        settings.store,
        directory,
        settings.signing_key,
        settings.signing_key_file,
        settings.store_lease_seconds,
    )


def open_model_store(settings: ModelSettings) -> StoredArtifacts:
    """The signed store of model versions the settings name (serving and trainer processes alike)."""
    return _open(settings, ARTIFACT_DIR)


def open_graph_store(settings: ModelSettings) -> StoredArtifacts:
    """The signed store of serving graphs made for versions stored before they carried one."""
    return _open(settings, GRAPH_ARTIFACT_DIR)


def check_model_id(model_id: str) -> str:
    if not model_id:
        raise InvalidArgument("model_id is required")
    validate_id(model_id, "model")
    if len(model_id) > MAX_MODEL_ID_LENGTH:
        raise InvalidArgument(
            f"model id is {len(model_id)} characters; at most {MAX_MODEL_ID_LENGTH} are allowed"
        )
    return model_id


def read_version(store: StoredArtifacts, model_id: str, version: int) -> tuple[ModelRecord, bytes]:
    """The record and Keras bytes of a stored version, signature verified before anything is parsed."""
    files = store.read(model_id, version, (META_FILE, MODEL_FILE))
    try:
        meta, keras_bytes = files[META_FILE], files[MODEL_FILE]
    except KeyError as exc:
        raise IntegrityError(f"{model_id} v{version}: {exc.args[0]} is missing from the artifact") from None
    return ModelRecord.from_json(meta, model_id, version), keras_bytes


def read_record(store: StoredArtifacts, model_id: str, version: int) -> tuple[ModelRecord, bool]:
    """A stored version's record (what listing a replica's store reads), with every file of the
    artifact checked against its signature (a version with a tampered file is refused whole, the Keras
    file the trainer reads included), and whether the artifact holds its serving graph."""
    files = store.read(model_id, version)
    if META_FILE not in files:
        raise IntegrityError(f"{model_id} v{version}: {META_FILE} is missing from the artifact")
    return ModelRecord.from_json(files[META_FILE], model_id, version), GRAPH_FILE in files


def has_made_graph(graphs: StoredArtifacts, model_id: str, version: int) -> bool:
    """Whether the trainer already made the serving graph of a version stored without one."""
    return _has_version(graphs, model_id, version)


def read_graph(store: StoredArtifacts, graphs: StoredArtifacts, model_id: str, version: int) -> bytes | None:
    """A stored version's serving graph, signature verified: from its own artifact, else the one made
    for it afterwards; None when it has neither yet (stored before serving graphs existed)."""
    files = store.read(model_id, version, (GRAPH_FILE,))
    if GRAPH_FILE in files:
        return files[GRAPH_FILE]
    if not _has_version(graphs, model_id, version):
        return None
    made = graphs.read(model_id, version, (GRAPH_FILE,))
    if GRAPH_FILE not in made:
        raise IntegrityError(f"{model_id} v{version}: the serving graph made for it holds no {GRAPH_FILE}")
    return made[GRAPH_FILE]


def _has_version(store: StoredArtifacts, model_id: str, version: int) -> bool:
    return any(ref.version == version for ref in store.scan(model_id))


def write_graph(graphs: StoredArtifacts, model_id: str, version: int, graph: bytes) -> None:
    """Keep the serving graph made for a version stored without one (signed, atomic, once: another
    process that made it first wins, and theirs is the same graph)."""
    if _has_version(graphs, model_id, version):
        return
    with contextlib.suppress(FileExistsError):
        graphs.write(model_id, version, {GRAPH_FILE: graph})


def logdir(store: StoredArtifacts, record: ModelRecord) -> str:
    """The TensorBoard run directory of a stored version ('' when it holds no event files): an absolute
    path on a directory store; on an S3 store only its location (the events are signed parts there)."""
    if not record.tensorboard:
        return ""
    if isinstance(store, ArtifactStore):
        return str((store.root / record.model_id / str(record.version)).absolute())
    return store.location(record.model_id, record.version)


def reserved_record(store: StoredArtifacts, model_id: str, version: int) -> ModelRecord | None:
    """What a (possibly other) process is training as this version; None once the reservation is gone."""
    note = store.reservation_note(model_id, version)
    if note is None:
        return None
    try:
        return ModelRecord.from_json(note, model_id, version)
    except IntegrityError as exc:
        log.warning("reservation %s v%d has an unreadable note: %s", model_id, version, exc)
        return None


class ModelWriter:
    """Reserve a version (listed as TRAINING by every process on the store), then commit it or release it."""

    def __init__(self, store: StoredArtifacts) -> None:
        self.store = store

    def reserve(self, model_id: str, spec: ModelSpec, seed: int) -> tuple[ModelRecord, HeldVersion]:
        """A new version number of ``model_id`` (a new id when empty), held until commit or release."""
        if model_id:
            check_model_id(model_id)
        model_id = model_id or self.store.new_id("model")
        created_at = now_text()

        def note(version: int) -> bytes:
            return ModelRecord(model_id, version, spec, seed, created_at).to_json()

        reservation = self.store.allocate(model_id, note)
        return ModelRecord(model_id, reservation.version, spec, seed, created_at), reservation

    def commit(
        self,
        record: ModelRecord,
        keras_bytes: bytes,
        graph: bytes,
        reservation: HeldVersion,
        extra_files: dict[str, bytes] | None = None,
    ) -> None:
        """Persist a version whole and signed, its serving graph and ``extra_files`` (e.g. TensorBoard
        event files) in the same artifact; its reservation goes once the artifact is in place."""
        if (record.model_id, record.version) != (reservation.artifact_id, reservation.version):
            raise ValueError(f"record {record.model_id} v{record.version} does not match {reservation!r}")
        extras = dict(extra_files or {})
        clash = sorted(set(extras) & {MODEL_FILE, GRAPH_FILE, META_FILE})
        if clash:
            raise ValueError(f"extra files may not replace {', '.join(clash)}")
        files = {**extras, MODEL_FILE: keras_bytes, GRAPH_FILE: graph, META_FILE: record.to_json()}
        self.store.commit(reservation, files)

    def release(self, reservation: HeldVersion) -> None:
        """Give up a reserved version that will not be committed (its number is not reused)."""
        reservation.release()


class ModelPublisher:
    """Versions this process is training, held by (id, version) until committed or released.

    What a process that serves nothing (the trainer) publishes through; the serving registry wraps the
    same calls and then syncs its cache. Thread-safe.
    """

    def __init__(self, store: StoredArtifacts) -> None:
        self._writer = ModelWriter(store)
        self._lock = threading.Lock()
        self._held: dict[tuple[str, int], HeldVersion] = {}

    def reserve(self, model_id: str, spec: ModelSpec, seed: int) -> ModelRecord:
        """A new version number for ``model_id`` (a new id when empty), listed as TRAINING store-wide."""
        record, reservation = self._writer.reserve(model_id, spec, seed)
        with self._lock:
            self._held[(record.model_id, record.version)] = reservation
        return record

    def release(self, model_id: str, version: int) -> None:
        """Give up a reserved version whose training did not finish (its number is not reused)."""
        with self._lock:
            reservation = self._held.pop((model_id, version), None)
        if reservation is not None:
            self._writer.release(reservation)

    def commit(
        self,
        record: ModelRecord,
        keras_bytes: bytes,
        graph: bytes,
        extra_files: dict[str, bytes] | None = None,
    ) -> None:
        """Persist a version this process reserved, whole and signed (its serving graph and
        ``extra_files`` beside it)."""
        key = (record.model_id, record.version)
        with self._lock:
            reservation = self._held.get(key)
        if reservation is None:
            raise FailedPrecondition(
                f"model {record.model_id!r} version {record.version} is not reserved by this process"
            )
        self._writer.commit(record, keras_bytes, graph, reservation, extra_files)
        with self._lock:
            self._held.pop(key, None)

    def release_all(self) -> None:
        with self._lock:
            held, self._held = list(self._held.values()), {}
        for reservation in held:
            reservation.release()
