"""Signed, atomically written artifacts on disk.

An artifact is a directory ``<root>/<id>/<version>/`` holding payload files plus ``SIGNATURE``, an
HMAC-SHA256 over every file's name and sha256. It is built in a temp directory, every file fsynced,
then renamed into place, so a reader sees a whole artifact or none. Nothing is handed back for
deserialization before its signature verifies.
"""

from __future__ import annotations

import contextlib
import hashlib
import hmac
import json
import logging
import os
import re
import secrets
import shutil
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from service_common.errors import IntegrityError, InvalidArgument, echo

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
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "w") as fh:
            fh.write(secrets.token_hex(32))
            fh.flush()
            os.fsync(fh.fileno())
        log.info("created signing key %s", path)
    text = path.read_text().strip()
    if len(text) < 16:
        raise ValueError(f"signing key in {path} is shorter than 16 characters")
    return text.encode()


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


@dataclass(frozen=True)
class ArtifactRef:
    artifact_id: str
    version: int
    path: Path


class ArtifactStore:
    def __init__(self, root: Path, key: bytes) -> None:
        self.root = root
        self._key = key
        root.mkdir(parents=True, exist_ok=True)
        self._sweep_temp()

    def _sweep_temp(self) -> None:
        # Leftovers of writes cut short by a crash; never listed, safe to drop.
        for leftover in self.root.glob(".tmp-*"):
            if leftover.is_dir():
                shutil.rmtree(leftover, ignore_errors=True)
            else:
                leftover.unlink(missing_ok=True)

    def _signature(self, digests: dict[str, str]) -> str:
        body = json.dumps(digests, sort_keys=True).encode()
        return hmac.new(self._key, body, hashlib.sha256).hexdigest()

    def write(self, artifact_id: str, version: int, files: dict[str, bytes]) -> Path:
        final = self.root / artifact_id / str(version)
        if final.exists():
            raise FileExistsError(f"{artifact_id} version {version} exists and is immutable")
        temp = Path(tempfile.mkdtemp(prefix=".tmp-", dir=self.root))
        try:
            digests = {}
            for name, data in files.items():
                with open(temp / name, "wb") as fh:
                    fh.write(data)
                    fh.flush()
                    os.fsync(fh.fileno())
                digests[name] = hashlib.sha256(data).hexdigest()
            signature = {"files": digests, "hmac": self._signature(digests)}
            with open(temp / SIGNATURE_FILE, "w") as fh:
                json.dump(signature, fh)
                fh.flush()
                os.fsync(fh.fileno())
            _fsync_dir(temp)
            for attempt in range(3):
                final.parent.mkdir(parents=True, exist_ok=True)
                try:
                    os.rename(temp, final)
                    break
                except FileNotFoundError:
                    # A concurrent delete of the id's last version removed the parent in between.
                    if attempt == 2:
                        raise
            _fsync_dir(final.parent)
            _fsync_dir(self.root)
        except BaseException:
            shutil.rmtree(temp, ignore_errors=True)
            raise
        return final

    def read(self, artifact_id: str, version: int) -> dict[str, bytes]:
        """Every payload file of a verified artifact; IntegrityError when anything does not match."""
        path = self.root / artifact_id / str(version)
        try:
            signature = json.loads((path / SIGNATURE_FILE).read_text())
            digests = signature["files"]
            expected = signature["hmac"]
        except (OSError, ValueError, KeyError, TypeError) as exc:
            raise IntegrityError(f"{path}: missing or malformed signature ({exc})") from exc
        if not isinstance(digests, dict) or not hmac.compare_digest(self._signature(digests), str(expected)):
            raise IntegrityError(f"{path}: signature does not verify (tampered, or signed with another key)")
        files: dict[str, bytes] = {}
        for name, digest in digests.items():
            if "/" in name or name.startswith("."):
                raise IntegrityError(f"{path}: bad file name {name!r} in signature")
            try:
                data = (path / name).read_bytes()
            except OSError as exc:
                raise IntegrityError(f"{path}: {name} is missing ({exc})") from exc
            if not hmac.compare_digest(hashlib.sha256(data).hexdigest(), digest):
                raise IntegrityError(f"{path}: {name} does not match its signature (tampered or truncated)")
            files[name] = data
        return files

    def delete(self, artifact_id: str, version: int) -> None:
        path = self.root / artifact_id / str(version)
        if not path.exists():
            return
        # Rename out of the listing first, so a crash mid-delete leaves no half artifact listed.
        doomed = Path(tempfile.mkdtemp(prefix=".tmp-del-", dir=self.root))
        os.rename(path, doomed / "x")
        _fsync_dir(path.parent)
        shutil.rmtree(doomed, ignore_errors=True)
        with contextlib.suppress(OSError):
            path.parent.rmdir()

    def scan(self) -> Iterator[ArtifactRef]:
        """Every complete artifact directory (signature not yet checked), in (id, version) order."""
        if not self.root.exists():
            return
        for id_dir in sorted(self.root.iterdir()):
            if id_dir.name.startswith(".") or not id_dir.is_dir() or not is_valid_id(id_dir.name):
                continue
            versions = [v for v in id_dir.iterdir() if v.is_dir() and v.name.isdigit()]
            for version_dir in sorted(versions, key=lambda p: int(p.name)):
                yield ArtifactRef(id_dir.name, int(version_dir.name), version_dir)
