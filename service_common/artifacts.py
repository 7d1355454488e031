"""The store: signed, atomically written artifacts, and the only source of truth about them.

``StoredArtifacts`` is what callers (registries, the model store, the watcher) use; two backends hold
it: ``ArtifactStore`` here, a directory (the embedded default), and ``S3ArtifactStore``
(service_common/s3_artifacts.py), a bucket prefix behind the S3 API. ``service_common.stores`` opens the
one the ``--store`` setting names. What follows describes the directory backend.

An artifact is a directory ``<root>/<id>/<version>/`` holding payload files plus ``SIGNATURE``, an
HMAC-SHA256 over every file's name and sha256. It is built in a temp directory, every file fsynced,
then renamed into place, so a reader sees a whole artifact or none. Nothing is handed back for
deserialization before its signature verifies.

Every process on one root (several workers, several instances) shares it through the files alone:

- ``<root>/.lock``: an ``flock`` held only for short metadata operations (allocating a number, renaming
  a version out on delete, unload markers), never while payloads are written;
- ``<root>/.version-high-water.json``: the highest number ever handed out per id, rewritten on every
  allocation, so no two processes and no restart ever hand out the same version;
- ``<root>/.reservations/<id>/<version>``: a version being produced (e.g. a model training). Its owner
  holds an ``flock`` on it for as long as the reservation lives, so one whose process died, even by
  SIGKILL, can be locked by anyone: it is stale and removed by whoever finds it;
- ``<root>/.unloaded/<id>``: the id's versions up to the number inside are unloaded for every process
  on the store (RepositoryModelUnload), until the marker is removed again;
- ``<root>/.holds/<id>/<token>``: an artifact in use (e.g. a dataset a job trains on). Like a
  reservation, its owner holds an ``flock`` on it, so it dies with its process; ``delete`` refuses an
  id while a live hold names it.

Payloads are written whole (``write``) or file by file as they arrive (``draft``: a locked temp
directory whose files are hashed while they are written, signed and renamed into place under an id
chosen at the end, e.g. a content hash). Large payloads are verified by streaming (``verified_files``)
and read in place (memory-mapped) rather than into memory.

Persistence only: no grpc, no TensorFlow, no knowledge of what the payload files mean.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import hashlib
import hmac
import json
import logging
import os
import re
import secrets
import shutil
import tempfile
import threading
import time
from collections.abc import Callable, Collection, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO, Protocol

from service_common.errors import FailedPrecondition, IntegrityError, InvalidArgument, echo

log = logging.getLogger(__name__)

SIGNATURE_FILE = "SIGNATURE"
# Always fullmatch: with match/search, "$" also matches before a final newline ("id\n" would pass).
ID_PATTERN = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,127}")


def is_valid_id(artifact_id: str) -> bool:
    return ID_PATTERN.fullmatch(artifact_id) is not None and ".." not in artifact_id


def validate_id(artifact_id: str, what: str) -> str:
    if not is_valid_id(artifact_id):
        raise InvalidArgument(
            f"{what} id {echo(artifact_id)} is not valid: expected 1-128 characters of letters, digits, "
            "'_', '-', '.', starting with a letter or digit"
        )
    return artifact_id


def load_signing_key(key: str, key_file: str, store: Path) -> bytes:
    """The key from the setting, else from a key file, else <store>/.signing-key made on first start."""
    if key:
        return key.encode()
    path = Path(key_file) if key_file else store / ".signing-key"
    if not path.exists():
        path.parent.mkdir(parents=True, exist_ok=True)
        # Written aside, then linked into place: processes starting together on a new store all end up
        # reading the one key that won the link, never a half-written file.
        fd, temp = tempfile.mkstemp(prefix=".tmp-key-", dir=path.parent)
        try:
            with os.fdopen(fd, "w") as fh:
                fh.write(secrets.token_hex(32))
                fh.flush()
                os.fsync(fh.fileno())
            os.chmod(temp, 0o600)
            try:
                os.link(temp, path)
                log.info("created signing key %s", path)
            except FileExistsError:
                pass
        finally:
            Path(temp).unlink(missing_ok=True)
    text = path.read_text().strip()
    if len(text) < 16:
        raise ValueError(f"signing key in {path} is shorter than 16 characters")
    return text.encode()


def sign_digests(key: bytes, digests: dict[str, str]) -> str:
    """The HMAC-SHA256 over every payload name and its sha256, as both backends sign an artifact."""
    body = json.dumps(digests, sort_keys=True).encode()
    return hmac.new(key, body, hashlib.sha256).hexdigest()


def is_payload_name(name: str) -> bool:
    """A name an artifact's payload may have: one path segment, not hidden (the signature's own place)."""
    return bool(name) and "/" not in name and not name.startswith(".") and name != SIGNATURE_FILE


LOCK_FILE = ".lock"
HIGH_WATER_FILE = ".version-high-water.json"
RESERVATIONS_DIR = ".reservations"
UNLOADED_DIR = ".unloaded"
HOLDS_DIR = ".holds"
TEMP_PREFIX = ".tmp-"
# A change token whose newest directory is younger than this is not trusted to compare equal: a second
# change within the file system's timestamp granularity could leave every mtime as it was.
RACY_SECONDS = 1.0


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _write_atomically(path: Path, data: bytes) -> None:
    # Temp file + fsync + rename: a crash leaves the old file or the new one, never half of one.
    fd, temp = tempfile.mkstemp(prefix=TEMP_PREFIX, dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(temp, path)
    except BaseException:
        Path(temp).unlink(missing_ok=True)
        raise


def _try_lock(fd: int) -> bool:
    """Take an exclusive flock without waiting; False when another open file holds it."""
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError as exc:
        if exc.errno in (errno.EWOULDBLOCK, errno.EAGAIN):
            return False
        raise
    return True


def _version_numbers(directory: Path) -> list[int]:
    try:
        names = os.listdir(directory)
    except (FileNotFoundError, NotADirectoryError):
        return []
    return [int(name) for name in names if name.isdigit()]


@dataclass(frozen=True)
class ArtifactRef:
    """A complete version as listed (its signature not checked yet); ``location`` names it in logs."""

    artifact_id: str
    version: int
    location: str


@dataclass(frozen=True)
class FileArtifactRef(ArtifactRef):
    path: Path


class HeldVersion(Protocol):
    """A version number reserved by this process (listed by ``live_reservations`` everywhere) until
    committed or released; the number is never handed out again either way."""

    artifact_id: str
    version: int

    @property
    def released(self) -> bool: ...

    def release(self) -> None: ...


class StoredArtifacts(Protocol):
    """The store contract both backends keep (see the module docstring and s3_artifacts)."""

    @property
    def url(self) -> str:
        """Where the store is, for logs: a directory or ``s3://bucket/prefix``."""
        ...

    def location(self, artifact_id: str, version: int) -> str:
        """Where one version is, for logs and error messages."""
        ...

    def allocate(self, artifact_id: str, note: Callable[[int], bytes] | None = None) -> HeldVersion: ...

    def new_id(self, prefix: str) -> str: ...

    def live_reservations(self, artifact_id: str | None = None) -> list[tuple[str, int]]: ...

    def reservation_note(self, artifact_id: str, version: int) -> bytes | None: ...

    def write(self, artifact_id: str, version: int, files: dict[str, bytes]) -> object: ...

    def commit(self, reservation: HeldVersion, files: dict[str, bytes]) -> object: ...

    def read(self, artifact_id: str, version: int, names: Collection[str] | None = None) -> dict[str, bytes]:
        """Every payload file of a verified artifact, or only those of ``names`` that it holds (a name it
        does not hold is left out, so callers can tell an older artifact's layout)."""
        ...

    def delete(self, artifact_id: str, version: int) -> bool: ...

    def scan(self, artifact_id: str | None = None) -> Iterator[ArtifactRef]: ...

    def set_unloaded(self, artifact_id: str, flag: bool) -> None: ...

    def unloaded_ids(self) -> dict[str, int]: ...

    def generation(self) -> object: ...


class Reservation:
    """A version number handed out to this process, alive (and listed) until committed or released.

    The marker's flock lives as long as this object's file descriptor: a process that dies releases it
    with no clean-up of its own. Release it explicitly (or commit it); it is not a finalizer's job. A
    child forked meanwhile shares the lock (one open file description) and keeps it live until it exits
    too, so reserve in the process that produces the version (a trainer process reserves for itself).
    """

    def __init__(self, store: ArtifactStore, artifact_id: str, version: int, path: Path, fd: int) -> None:
        self.artifact_id = artifact_id
        self.version = version
        self.path = path
        self._store = store
        self._fd: int | None = fd
        self._lock = threading.Lock()

    @property
    def released(self) -> bool:
        return self._fd is None

    def release(self) -> None:
        """Remove the marker (idempotent). The number stays used: the high-water mark covers it."""
        with self._lock:
            if self._fd is None:
                return
            self.path.unlink(missing_ok=True)
            os.close(self._fd)
            self._fd = None
        self._store._forget_reservation_dir(self.artifact_id)

    def __repr__(self) -> str:
        state = "released" if self.released else "live"
        return f"Reservation({self.artifact_id!r}, {self.version}, {state})"


class _HashingFile:
    """A payload file being written: every byte is hashed on its way to disk."""

    def __init__(self, fh: BinaryIO) -> None:
        self._fh = fh
        self.sha256 = hashlib.sha256()
        self.size = 0

    def write(self, data: bytes | memoryview) -> int:
        self.sha256.update(data)
        self.size += len(data)
        return self._fh.write(data)

    def flush(self) -> None:
        self._fh.flush()


class ArtifactDraft:
    """An artifact written file by file into a locked temp directory, then committed under an id (and
    version) known only at the end, or discarded. Nothing is listed before ``commit``; a process that
    dies leaves a temp directory the next sweep removes (its flock died with it)."""

    def __init__(self, store: ArtifactStore, temp: Path, fd: int) -> None:
        self.path = temp
        self._store = store
        self._fd: int | None = fd
        self._digests: dict[str, str] = {}

    @contextlib.contextmanager
    def create(self, name: str) -> Iterator[_HashingFile]:
        """A new payload file: write to it; it is fsynced and its sha256 recorded when the block ends."""
        if self._fd is None:
            raise ValueError("the draft was committed or discarded")
        if name in self._digests or "/" in name or name.startswith(".") or name == SIGNATURE_FILE:
            raise ValueError(f"bad or repeated file name {name!r}")
        with open(self.path / name, "wb") as fh:
            out = _HashingFile(fh)
            yield out
            fh.flush()
            os.fsync(fh.fileno())
        self._digests[name] = out.sha256.hexdigest()

    def add(self, name: str, data: bytes) -> None:
        with self.create(name) as fh:
            fh.write(data)

    def commit(self, artifact_id: str, version: int) -> Path:
        """Sign, then rename into place; FileExistsError when that version exists (the draft is then
        discarded). Either way the draft is finished."""
        if self._fd is None:
            raise ValueError("the draft was committed or discarded")
        final = self._store.root / artifact_id / str(version)
        try:
            if final.exists():
                raise FileExistsError(f"{artifact_id} version {version} exists and is immutable")
            signature = {"files": self._digests, "hmac": self._store._signature(self._digests)}
            with open(self.path / SIGNATURE_FILE, "w") as fh:
                json.dump(signature, fh)
                fh.flush()
                os.fsync(fh.fileno())
            _fsync_dir(self.path)
            for attempt in range(3):
                final.parent.mkdir(parents=True, exist_ok=True)
                try:
                    os.rename(self.path, final)
                    break
                except FileNotFoundError:
                    # A concurrent delete of the id's last version removed the parent in between.
                    if attempt == 2:
                        raise
                except OSError as exc:
                    # Renaming onto a non-empty directory: another writer committed it first.
                    if exc.errno in (errno.ENOTEMPTY, errno.EEXIST):
                        raise FileExistsError(f"{artifact_id} version {version} exists") from exc
                    raise
            _fsync_dir(final.parent)
            _fsync_dir(self._store.root)
        except BaseException:
            self.discard()
            raise
        self._close()
        return final

    def discard(self) -> None:
        """Remove everything written so far (idempotent)."""
        if self._fd is None:
            return
        shutil.rmtree(self.path, ignore_errors=True)
        self._close()

    def _close(self) -> None:
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None


class Hold:
    """A use marker on an artifact id: while it is live (this object not released, its process alive),
    ``ArtifactStore.delete`` refuses the id. The flock dies with the process, as a reservation's does."""

    def __init__(self, store: ArtifactStore, artifact_id: str, path: Path, fd: int) -> None:
        self.artifact_id = artifact_id
        self.path = path
        self._store = store
        self._fd: int | None = fd
        self._lock = threading.Lock()

    def release(self) -> None:
        """Remove the marker (idempotent)."""
        with self._lock:
            if self._fd is None:
                return
            self.path.unlink(missing_ok=True)
            os.close(self._fd)
            self._fd = None
        self._store._forget_marker_dir(self.path.parent)


class ArtifactStore:
    def __init__(self, root: Path, key: bytes) -> None:
        self.root = root
        self._key = key
        root.mkdir(parents=True, exist_ok=True)
        self._reservations = root / RESERVATIONS_DIR
        self._unloaded = root / UNLOADED_DIR
        self._high_water = root / HIGH_WATER_FILE
        self._holds = root / HOLDS_DIR
        self._sweep_temp()

    @property
    def url(self) -> str:
        return str(self.root)

    def location(self, artifact_id: str, version: int) -> str:
        return str(self.root / artifact_id / str(version))

    # ---- the inter-process lock ----------------------------------------------------------------

    @contextlib.contextmanager
    def _locked(self) -> Iterator[None]:
        # A new open file per holder: flock excludes other threads of this process as well as others.
        # Read-only: closing it then wakes no inotify watcher (they watch for closes after writes).
        fd = os.open(self.root / LOCK_FILE, os.O_RDONLY | os.O_CREAT | os.O_CLOEXEC, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            yield
        finally:
            os.close(fd)  # closing releases the flock

    def _sweep_temp(self) -> None:
        # Leftovers of writes cut short by a crash; never listed, safe to drop. A write in progress in
        # another process holds an flock on its temp directory (taken under the store lock, as is this
        # sweep), so only what nobody holds is removed.
        with self._locked():
            for leftover in self.root.glob(TEMP_PREFIX + "*"):
                try:
                    fd = os.open(leftover, os.O_RDONLY | os.O_CLOEXEC)
                except FileNotFoundError:
                    continue
                try:
                    if not _try_lock(fd):
                        continue
                    if leftover.is_dir():
                        shutil.rmtree(leftover, ignore_errors=True)
                    else:
                        leftover.unlink(missing_ok=True)
                finally:
                    os.close(fd)

    # ---- version numbers -----------------------------------------------------------------------

    def _read_marks(self) -> dict[str, int]:
        try:
            return {str(k): int(v) for k, v in json.loads(self._high_water.read_text()).items()}
        except FileNotFoundError:
            return {}
        except (OSError, ValueError, AttributeError) as exc:
            # The numbers on disk and in reservations still bound every allocation from below.
            log.warning("ignoring unreadable %s: %s", self._high_water, exc)
            return {}

    def _save_marks(self, marks: dict[str, int]) -> None:
        _write_atomically(self._high_water, json.dumps(marks, sort_keys=True).encode())

    def allocate(self, artifact_id: str, note: Callable[[int], bytes] | None = None) -> Reservation:
        """The next version number of ``artifact_id``, reserved for this process until released.

        next = max(high-water mark, highest version on disk, highest reservation) + 1, under the store
        lock, and the mark is saved before the number is handed out. ``note(version)`` is stored in the
        marker for other processes to read (``reservation_note``): e.g. what is being produced.
        """
        with self._locked():
            marks = self._read_marks()
            version = 1 + max(
                marks.get(artifact_id, 0),
                *_version_numbers(self.root / artifact_id),
                *_version_numbers(self._reservations / artifact_id),
                0,
            )
            marks[artifact_id] = version
            self._save_marks(marks)
            directory = self._reservations / artifact_id
            directory.mkdir(parents=True, exist_ok=True)
            # Locked before it is renamed into place: a marker anyone can see is held by its owner.
            fd, temp = tempfile.mkstemp(prefix=TEMP_PREFIX + "res-", dir=self.root)
            try:
                fcntl.flock(fd, fcntl.LOCK_EX)
                os.write(fd, note(version) if note is not None else b"")
                path = directory / str(version)
                os.rename(temp, path)
            except BaseException:
                os.close(fd)
                Path(temp).unlink(missing_ok=True)
                raise
        return Reservation(self, artifact_id, version, path, fd)

    def new_id(self, prefix: str) -> str:
        """An id never used on this store (e.g. ``model-3f2a9c1e``), marked as used before it is returned."""
        with self._locked():
            marks = self._read_marks()
            while True:
                candidate = f"{prefix}-{secrets.token_hex(4)}"
                taken = (
                    candidate in marks
                    or (self.root / candidate).exists()
                    or (self._reservations / candidate).exists()
                )
                if not taken:
                    marks[candidate] = 0
                    self._save_marks(marks)
                    return candidate

    def _forget_reservation_dir(self, artifact_id: str) -> None:
        self._forget_marker_dir(self._reservations / artifact_id)

    def _forget_marker_dir(self, directory: Path) -> None:
        # Under the lock: allocate() and hold() create markers in these directories under it too.
        with self._locked(), contextlib.suppress(OSError):
            directory.rmdir()

    def live_reservations(self, artifact_id: str | None = None) -> list[tuple[str, int]]:
        """Every (id, version) reserved by a live process, in order; stale markers found are removed."""
        if artifact_id is not None:
            ids = [artifact_id]
        else:
            try:
                ids = sorted(name for name in os.listdir(self._reservations) if not name.startswith("."))
            except FileNotFoundError:
                return []
        live = []
        for reserved_id in ids:
            for version in sorted(_version_numbers(self._reservations / reserved_id)):
                if self._is_live(self._reservations / reserved_id / str(version)):
                    live.append((reserved_id, version))
        return live

    def _is_live(self, marker: Path) -> bool:
        try:
            fd = os.open(marker, os.O_RDONLY | os.O_CLOEXEC)
        except FileNotFoundError:
            return False
        try:
            if not _try_lock(fd):
                return True
            # Nobody holds it: its process is gone. The number stays used (the high-water mark has it).
            log.info("removing stale marker %s", marker)
            marker.unlink(missing_ok=True)
            return False
        finally:
            os.close(fd)

    def reservation_note(self, artifact_id: str, version: int) -> bytes | None:
        """What the reserving process stored with a reservation; None once it is gone."""
        try:
            return (self._reservations / artifact_id / str(version)).read_bytes()
        except FileNotFoundError:
            return None

    # ---- artifacts -----------------------------------------------------------------------------

    def _signature(self, digests: dict[str, str]) -> str:
        return sign_digests(self._key, digests)

    def _temp_dir(self) -> tuple[Path, int]:
        # Made and locked under the store lock, so a sweep (under it too) never takes it for a leftover.
        with self._locked():
            temp = Path(tempfile.mkdtemp(prefix=TEMP_PREFIX, dir=self.root))
            fd = os.open(temp, os.O_RDONLY | os.O_CLOEXEC)
            fcntl.flock(fd, fcntl.LOCK_EX)
        return temp, fd

    def draft(self) -> ArtifactDraft:
        """A new artifact to write file by file (``ArtifactDraft``); commit it under its id at the end."""
        temp, fd = self._temp_dir()
        return ArtifactDraft(self, temp, fd)

    def write(self, artifact_id: str, version: int, files: dict[str, bytes]) -> Path:
        """Write a version whole and signed, then rename it into place (the store lock is not held)."""
        final = self.root / artifact_id / str(version)
        if final.exists():
            raise FileExistsError(f"{artifact_id} version {version} exists and is immutable")
        draft = self.draft()
        try:
            for name, data in files.items():
                draft.add(name, data)
        except BaseException:
            draft.discard()
            raise
        return draft.commit(artifact_id, version)

    def commit(self, reservation: HeldVersion, files: dict[str, bytes]) -> Path:
        """Write the reserved version, then release the reservation (the artifact is in place first)."""
        if reservation.released:
            raise ValueError(f"{reservation!r} was released; its number cannot be committed")
        path = self.write(reservation.artifact_id, reservation.version, files)
        reservation.release()
        return path

    def read(self, artifact_id: str, version: int, names: Collection[str] | None = None) -> dict[str, bytes]:
        """Every payload file of a verified artifact (or those of ``names`` it holds); IntegrityError
        when anything read does not match."""
        path = self.root / artifact_id / str(version)
        digests = self._signed_digests(path)
        files: dict[str, bytes] = {}
        for name, digest in digests.items():
            if names is not None and name not in names:
                continue
            try:
                data = (path / name).read_bytes()
            except OSError as exc:
                raise IntegrityError(f"{path}: {name} is missing ({exc})") from exc
            if not hmac.compare_digest(hashlib.sha256(data).hexdigest(), digest):
                raise IntegrityError(f"{path}: {name} does not match its signature (tampered or truncated)")
            files[name] = data
        return files

    def _signed_digests(self, path: Path) -> dict[str, str]:
        try:
            signature = json.loads((path / SIGNATURE_FILE).read_text())
            digests = signature["files"]
            expected = signature["hmac"]
        except (OSError, ValueError, KeyError, TypeError) as exc:
            raise IntegrityError(f"{path}: missing or malformed signature ({exc})") from exc
        if not isinstance(digests, dict) or not hmac.compare_digest(self._signature(digests), str(expected)):
            raise IntegrityError(f"{path}: signature does not verify (tampered, or signed with another key)")
        for name in digests:
            if "/" in name or name.startswith("."):
                raise IntegrityError(f"{path}: bad file name {name!r} in signature")
        return digests

    def read_file(self, artifact_id: str, version: int, name: str) -> bytes:
        """One (small) payload file, verified against the artifact's signature; the others are not read."""
        path = self.root / artifact_id / str(version)
        digests = self._signed_digests(path)
        if name not in digests:
            raise IntegrityError(f"{path}: {name} is not in its signature")
        try:
            data = (path / name).read_bytes()
        except OSError as exc:
            raise IntegrityError(f"{path}: {name} is missing ({exc})") from exc
        if not hmac.compare_digest(hashlib.sha256(data).hexdigest(), digests[name]):
            raise IntegrityError(f"{path}: {name} does not match its signature (tampered or truncated)")
        return data

    def verified_files(self, artifact_id: str, version: int) -> dict[str, Path]:
        """Every payload file's path once all of them verify, hashed in blocks (never read whole): for
        payloads read in place, e.g. memory-mapped. IntegrityError when anything does not match."""
        path = self.root / artifact_id / str(version)
        digests = self._signed_digests(path)
        files: dict[str, Path] = {}
        for name, digest in digests.items():
            try:
                with open(path / name, "rb") as fh:
                    actual = hashlib.file_digest(fh, "sha256").hexdigest()
            except OSError as exc:
                raise IntegrityError(f"{path}: {name} is missing ({exc})") from exc
            if not hmac.compare_digest(actual, digest):
                raise IntegrityError(f"{path}: {name} does not match its signature (tampered or truncated)")
            files[name] = path / name
        return files

    # ---- holds (artifacts in use) --------------------------------------------------------------

    def hold(self, artifact_id: str) -> Hold:
        """Mark a stored id in use until the hold is released (or its process dies); FileNotFoundError
        when no version of it is stored. Taken under the store lock, under which delete checks holds."""
        with self._locked():
            if not _version_numbers(self.root / artifact_id):
                raise FileNotFoundError(f"{artifact_id} is not stored")
            directory = self._holds / artifact_id
            directory.mkdir(parents=True, exist_ok=True)
            fd, temp = tempfile.mkstemp(prefix=TEMP_PREFIX + "hold-", dir=self.root)
            try:
                fcntl.flock(fd, fcntl.LOCK_EX)
                path = directory / secrets.token_hex(8)
                os.rename(temp, path)
            except BaseException:
                os.close(fd)
                Path(temp).unlink(missing_ok=True)
                raise
        return Hold(self, artifact_id, path, fd)

    def live_holds(self, artifact_id: str) -> int:
        """How many live holds name the id; stale markers found are removed."""
        try:
            names = os.listdir(self._holds / artifact_id)
        except FileNotFoundError:
            return 0
        return sum(1 for name in names if self._is_live(self._holds / artifact_id / name))

    def delete(self, artifact_id: str, version: int) -> bool:
        """Remove one version; False when it was not there (e.g. another process deleted it first)."""
        path = self.root / artifact_id / str(version)
        with self._locked():
            if not path.exists():
                return False
            holds = self.live_holds(artifact_id)
            if holds:
                raise FailedPrecondition(
                    f"{artifact_id} is in use by {holds} running job(s); it can be deleted once they end"
                )
            # The high-water mark covers the number before it goes, so it is never handed out again.
            marks = self._read_marks()
            if marks.get(artifact_id, 0) < version:
                marks[artifact_id] = version
                self._save_marks(marks)
            # Renamed out of the listing first, so a crash mid-delete leaves no half artifact listed.
            doomed = Path(tempfile.mkdtemp(prefix=TEMP_PREFIX + "del-", dir=self.root))
            os.rename(path, doomed / "x")
            _fsync_dir(path.parent)
            with contextlib.suppress(OSError):
                path.parent.rmdir()
                # The id is gone: so is what its unload marker said about it.
                (self._unloaded / artifact_id).unlink(missing_ok=True)
        shutil.rmtree(doomed, ignore_errors=True)
        return True

    def scan(self, artifact_id: str | None = None) -> Iterator[FileArtifactRef]:
        """Every complete artifact directory (signature not yet checked), in (id, version) order; one
        id's only when ``artifact_id`` is given."""
        if not self.root.exists():
            return
        if artifact_id is not None:
            id_dirs = [self.root / artifact_id] if is_valid_id(artifact_id) else []
        else:
            id_dirs = sorted(self.root.iterdir())
        for id_dir in id_dirs:
            if id_dir.name.startswith(".") or not id_dir.is_dir() or not is_valid_id(id_dir.name):
                continue
            for version in sorted(_version_numbers(id_dir)):
                version_dir = id_dir / str(version)
                if version_dir.is_dir():
                    yield FileArtifactRef(id_dir.name, version, str(version_dir), version_dir)

    # ---- instance-wide unload ------------------------------------------------------------------

    def set_unloaded(self, artifact_id: str, flag: bool) -> None:
        """Mark every stored version of the id unloaded (True) for every process on this store, or
        clear the mark (False). Versions committed after the mark are not covered by it."""
        with self._locked():
            marker = self._unloaded / artifact_id
            if not flag:
                marker.unlink(missing_ok=True)
                return
            self._unloaded.mkdir(exist_ok=True)
            highest = max(_version_numbers(self.root / artifact_id), default=0)
            _write_atomically(marker, str(highest).encode())

    def unloaded_ids(self) -> dict[str, int]:
        """Every unloaded id and the highest version its mark covers."""
        try:
            names = os.listdir(self._unloaded)
        except FileNotFoundError:
            return {}
        marks = {}
        for name in names:
            if name.startswith("."):
                continue
            try:
                marks[name] = int((self._unloaded / name).read_text())
            except (OSError, ValueError):
                continue  # removed meanwhile, or not ours
        return marks

    # ---- change detection ----------------------------------------------------------------------

    def watched_directories(self) -> list[Path]:
        """The directories whose entries change when a version, reservation or unload mark comes or
        goes: what an inotify watcher watches (a new one appears as an entry of one listed)."""
        found = [self.root]
        for parent in (self.root, self._reservations):
            try:
                names = os.listdir(parent)
            except FileNotFoundError:
                continue
            found.extend(parent / name for name in names if self.is_watched_directory(parent / name))
        return found

    def is_watched_directory(self, path: Path) -> bool:
        """Whether ``path`` is (or would be) one of watched_directories."""
        if path == self.root:
            return True
        if path.parent == self.root and path.name in {RESERVATIONS_DIR, UNLOADED_DIR}:
            return path.is_dir()
        if path.parent in (self.root, self._reservations) and not path.name.startswith("."):
            return is_valid_id(path.name) and path.is_dir()
        return False

    def changed_id(self, directory: Path, name: str) -> str | None:
        """The artifact id that an entry ``name`` changing in ``directory`` (one of watched_directories)
        concerns; None for the store's own files (locks, temp files, the high-water mark)."""
        if directory in (self.root, self._reservations, self._unloaded):
            candidate = name
        elif directory.parent in (self.root, self._reservations):
            candidate = directory.name
        else:
            return None
        if candidate.startswith(".") or not is_valid_id(candidate):
            return None
        return candidate

    def generation(self) -> object:
        """A cheap token of the listing: equal tokens mean no version or unload mark came or went.

        Built from the mtime and link count of the root, each id directory and the unload directory
        (one stat each, nothing read). A token taken within RACY_SECONDS of the newest change is a fresh
        object that equals nothing, so a change in the same timestamp tick is never missed. Reservations
        are not covered (a dead owner changes no file): poll ``live_reservations`` for those.
        """
        now = time.time_ns()
        parts: list[tuple[str, int, int]] = []
        newest = 0
        try:
            names = sorted(os.listdir(self.root))
        except FileNotFoundError:
            return ()
        for name in [".", UNLOADED_DIR, *names]:
            if name.startswith(".") and name not in {".", UNLOADED_DIR}:
                continue
            try:
                st = os.stat(self.root / name)
            except FileNotFoundError:
                continue
            parts.append((name, st.st_mtime_ns, st.st_nlink))
            newest = max(newest, st.st_mtime_ns)
        if now - newest < RACY_SECONDS * 1e9:
            return object()
        return tuple(parts)
