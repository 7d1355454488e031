"""The store on an S3-API bucket (``--store s3://bucket/prefix``): the promises of the directory store,
kept with objects instead of renames and flocks.

Under ``<prefix>/`` (``models/`` or ``scalers/`` below the configured prefix):

- ``parts/<id>/<version>/<upload>/<name>``: the payload objects of one write, ``<upload>`` a random token
  per write, so two writers never overwrite each other's parts;
- ``manifests/<id>/<version>``: JSON ``{"upload", "files": {name: sha256}, "hmac"}``, the same HMAC over
  names and digests as the directory store's SIGNATURE. Written LAST, with ``If-None-Match: *``: a
  version exists (is listed, can be read) exactly when its manifest does, and a version once written is
  immutable. Listing looks at manifests only, so parts of a write cut short are never listed; nothing
  is deserialized before the manifest's HMAC and every part's sha256 verify;
- ``claims/<id>/<version>``: a version number handed out. Claimed with ``If-None-Match: *`` (S3
  conditional writes): of two replicas claiming the same number exactly one gets 200, the other 412 and
  tries the next number. SeaweedFS 4.48 honours the condition (tests/cluster/test_s3_store.py races
  claims from several processes), so no lease or lock service is needed for numbering. Claims are
  never deleted: they are the high-water mark, so no number comes back after a delete or a restart;
- ``leases/<id>/<version>``: a version being produced (a model training), with the owner's note. The
  owner re-puts it every third of ``lease_seconds`` from a thread; a lease whose LastModified is older
  than ``lease_seconds`` by the server's own clock (the Date of the listing) is dead — its owner died
  or lost the bucket — and is removed by whoever finds it. No client clock is compared to the server's;
- ``unloaded/<id>/<n>``: the id's versions up to ``n`` are unloaded for every replica (the number is in
  the key, so one LIST reads every mark).

Deletes remove the manifest first (the version is gone for every replica at once), then the parts. A
writer killed between parts and manifest leaves parts without a manifest: never listed, and removed by
a sweep (at open, then at most every ``sweep_seconds`` during a full scan) once its newest part is
older than ``sweep_seconds``; it must exceed the longest single write.

The signing key never lives in the bucket (anyone who can read the bucket could then sign): it comes
from the signing-key setting or key file, and service_common.stores refuses to open an S3 store without
one. The bucket is not created either: a missing bucket is a clear error at start.

Changes are seen by polling the listings (no inotify). One ``generation()`` is one LIST of manifests
plus one of unload marks (per 1000 keys each); ``live_reservations`` one LIST of leases. An S3 failure
(endpoint down, throttling past boto3's retries, access denied) raises errors.Unavailable naming the
store, so a call that needed the store answers UNAVAILABLE and the watcher tries again at its next poll.

Persistence only: no grpc, no knowledge of what the payload files mean.
"""

from __future__ import annotations

import base64
import hashlib
import json
import logging
import secrets
import threading
import time
from collections.abc import Callable, Collection, Iterator
from datetime import datetime
from email.utils import parsedate_to_datetime
from typing import Any

import botocore.exceptions

from service_common.artifacts import (
    ArtifactRef,
    HeldVersion,
    is_payload_name,
    is_valid_id,
    sign_digests,
)
from service_common.errors import IntegrityError, Unavailable

log = logging.getLogger(__name__)

MANIFESTS = "manifests/"
PARTS = "parts/"
CLAIMS = "claims/"
LEASES = "leases/"
UNLOADED = "unloaded/"
DEFAULT_LEASE_SECONDS = 30.0
DEFAULT_SWEEP_SECONDS = 3600.0
# The codes S3 APIs answer for a key or bucket that is not there, and for a failed If-None-Match.
_MISSING = {"NoSuchKey", "404", "NotFound"}
_PRECONDITION = {"PreconditionFailed", "412", "ConditionalRequestConflict", "409"}


def _code(exc: botocore.exceptions.ClientError) -> str:
    return str(exc.response.get("Error", {}).get("Code", ""))


def _sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def _numbers(keys: list[str]) -> list[int]:
    return [int(key) for key in keys if key.isdigit()]


class S3Reservation:
    """A claimed version with a lease the owner renews from a daemon thread until release (or death)."""

    def __init__(self, store: S3ArtifactStore, artifact_id: str, version: int, body: bytes) -> None:
        self.artifact_id = artifact_id
        self.version = version
        self._store = store
        self._body = body
        self._stop = threading.Event()
        self._lock = threading.Lock()
        self._thread = threading.Thread(
            target=self._renew, name=f"lease-{artifact_id}-{version}", daemon=True
        )
        self._thread.start()

    @property
    def released(self) -> bool:
        return self._stop.is_set()

    def _renew(self) -> None:
        while not self._stop.wait(self._store.lease_seconds / 3):
            try:
                with self._lock:
                    if not self._stop.is_set():
                        self._store._put_lease(self.artifact_id, self.version, self._body)
            except Exception:  # noqa: BLE001 - the next round tries again; until then it may look stale
                log.exception("renewing the lease on %s v%d failed", self.artifact_id, self.version)

    def release(self) -> None:
        """Stop renewing and remove the lease (idempotent). The number stays claimed: never reused."""
        with self._lock:
            if self._stop.is_set():
                return
            self._stop.set()
        try:
            self._store._delete_keys([self._store._key(LEASES, self.artifact_id, str(self.version))])
        except Unavailable as exc:
            # Not renewed any more, it is dead for everyone within lease_seconds anyway.
            log.warning("could not remove the lease on %s v%d: %s", self.artifact_id, self.version, exc)

    def __repr__(self) -> str:
        state = "released" if self.released else "live"
        return f"S3Reservation({self.artifact_id!r}, {self.version}, {state})"


class S3ArtifactStore:
    """Signed artifacts under ``s3://bucket/prefix/``: see the module docstring for the layout."""

    def __init__(
        self,
        client: Any,
        bucket: str,
        prefix: str,
        key: bytes,
        lease_seconds: float = DEFAULT_LEASE_SECONDS,
        sweep_seconds: float = DEFAULT_SWEEP_SECONDS,
    ) -> None:
        if lease_seconds <= 0:
            raise ValueError(f"lease_seconds must be > 0, got {lease_seconds}")
        self._s3 = client
        self.bucket = bucket
        self.prefix = prefix.strip("/") + "/" if prefix.strip("/") else ""
        self._hmac_key = key
        self.lease_seconds = lease_seconds
        self.sweep_seconds = sweep_seconds
        self._last_sweep = 0.0
        self._check_bucket()
        self.sweep()

    @property
    def url(self) -> str:
        return f"s3://{self.bucket}/{self.prefix}"

    def location(self, artifact_id: str, version: int) -> str:
        return f"{self.url}{artifact_id}/{version}"

    # ---- plumbing ------------------------------------------------------------------------------

    def _key(self, kind: str, *parts: str) -> str:
        return self.prefix + kind + "/".join(parts)

    def _call(self, operation: str, **kwargs: Any) -> Any:
        """One S3 request. Missing keys and failed conditions come back as ClientError for the caller
        to read; anything else (endpoint down, throttled past boto3's retries, access denied) is
        Unavailable, naming the store: a store outage is not an error of the request."""
        try:
            return getattr(self._s3, operation)(**kwargs)
        except botocore.exceptions.ClientError as exc:
            if _code(exc) in _MISSING | _PRECONDITION:
                raise
            raise Unavailable(f"S3 store {self.url}: {operation} failed: {_code(exc)} {exc}") from exc
        except botocore.exceptions.BotoCoreError as exc:
            raise Unavailable(f"S3 store {self.url}: {operation} failed: {exc}") from exc

    def _check_bucket(self) -> None:
        try:
            self._s3.head_bucket(Bucket=self.bucket)
        except botocore.exceptions.ClientError as exc:
            code = _code(exc)
            if code in {"404", "NoSuchBucket", "NotFound"}:
                raise ValueError(
                    f"bucket {self.bucket!r} does not exist at the S3 endpoint; create it first "
                    "(the services never create buckets)"
                ) from exc
            raise ValueError(f"bucket {self.bucket!r} cannot be used: {code} {exc}") from exc
        except botocore.exceptions.BotoCoreError as exc:
            raise ValueError(f"the S3 endpoint for bucket {self.bucket!r} cannot be reached: {exc}") from exc

    def _list(self, kind: str, below: str = "") -> tuple[list[dict[str, Any]], datetime | None]:
        """Every object under ``<prefix><kind><below>`` and the server's clock when it answered."""
        start = self.prefix + kind + below
        objects: list[dict[str, Any]] = []
        server_now = None
        token: str | None = None
        while True:
            kwargs: dict[str, Any] = {"Bucket": self.bucket, "Prefix": start}
            if token:
                kwargs["ContinuationToken"] = token
            reply = self._call("list_objects_v2", **kwargs)
            if server_now is None:
                date = reply.get("ResponseMetadata", {}).get("HTTPHeaders", {}).get("date")
                server_now = parsedate_to_datetime(date) if date else None
            for item in reply.get("Contents", []):
                item["Rel"] = item["Key"][len(self.prefix + kind) :]
                objects.append(item)
            if not reply.get("IsTruncated"):
                return objects, server_now
            token = reply["NextContinuationToken"]

    def _split(self, objects: list[dict[str, Any]]) -> list[tuple[str, int, dict[str, Any]]]:
        """(id, version, object) of keys ``<id>/<version>`` (anything else under the prefix is not ours)."""
        found = []
        for item in objects:
            pieces = item["Rel"].split("/")
            if len(pieces) == 2 and is_valid_id(pieces[0]) and pieces[1].isdigit():
                found.append((pieces[0], int(pieces[1]), item))
        return found

    def _get(self, key: str) -> bytes | None:
        try:
            return bytes(self._call("get_object", Bucket=self.bucket, Key=key)["Body"].read())
        except botocore.exceptions.ClientError as exc:
            if _code(exc) in _MISSING:
                return None
            raise
        except botocore.exceptions.BotoCoreError as exc:  # the body cut off while being read
            raise Unavailable(f"S3 store {self.url}: reading {key} failed: {exc}") from exc

    def _put_new(self, key: str, body: bytes) -> bool:
        """Create ``key`` only if it does not exist (If-None-Match: *); False when it already did."""
        try:
            self._call("put_object", Bucket=self.bucket, Key=key, Body=body, IfNoneMatch="*")
        except botocore.exceptions.ClientError as exc:
            if _code(exc) in _PRECONDITION:
                return False
            raise
        return True

    def _delete_keys(self, keys: list[str]) -> None:
        for start in range(0, len(keys), 1000):
            chunk = [{"Key": key} for key in keys[start : start + 1000]]
            if chunk:
                reply = self._call(
                    "delete_objects", Bucket=self.bucket, Delete={"Objects": chunk, "Quiet": True}
                )
                if reply.get("Errors"):
                    first = reply["Errors"][0]
                    raise Unavailable(
                        f"S3 store {self.url}: {len(reply['Errors'])} object(s) not deleted, e.g. "
                        f"{first.get('Key')}: {first.get('Code')} {first.get('Message')}"
                    )

    def _exists(self, key: str) -> bool:
        try:
            self._call("head_object", Bucket=self.bucket, Key=key)
        except botocore.exceptions.ClientError as exc:
            if _code(exc) in _MISSING:
                return False
            raise
        return True

    # ---- version numbers -----------------------------------------------------------------------

    def _highest(self, artifact_id: str) -> int:
        claimed = [item["Rel"].split("/", 1)[1] for item in self._list(CLAIMS, artifact_id + "/")[0]]
        stored = [version for _, version, _ in self._split(self._list(MANIFESTS, artifact_id + "/")[0])]
        return max([0, *_numbers(claimed), *stored])

    def allocate(self, artifact_id: str, note: Callable[[int], bytes] | None = None) -> S3Reservation:
        """The next version of ``artifact_id``: one past every claim and manifest, claimed with a
        conditional put (a replica that lost the race lists again), then leased for this process."""
        version = self._highest(artifact_id) + 1
        while not self._put_new(self._key(CLAIMS, artifact_id, str(version)), b""):
            version = max(version + 1, self._highest(artifact_id) + 1)
        body = json.dumps(
            {"note": base64.b64encode(note(version) if note is not None else b"").decode()}
        ).encode()
        self._put_lease(artifact_id, version, body)
        return S3Reservation(self, artifact_id, version, body)

    def new_id(self, prefix: str) -> str:
        """An id never used on this store, claimed (its version 0) before it is returned."""
        while True:
            candidate = f"{prefix}-{secrets.token_hex(4)}"
            if self._highest(candidate) == 0 and self._put_new(self._key(CLAIMS, candidate, "0"), b""):
                return candidate

    def _put_lease(self, artifact_id: str, version: int, body: bytes) -> None:
        self._call(
            "put_object", Bucket=self.bucket, Key=self._key(LEASES, artifact_id, str(version)), Body=body
        )

    def live_reservations(self, artifact_id: str | None = None) -> list[tuple[str, int]]:
        """Every (id, version) whose lease is fresh by the server's clock; dead leases found are removed."""
        objects, server_now = self._list(LEASES, artifact_id + "/" if artifact_id else "")
        live, dead = [], []
        for found_id, version, item in self._split(objects):
            age = (server_now - item["LastModified"]).total_seconds() if server_now is not None else 0.0
            if age > self.lease_seconds:
                dead.append(item["Key"])
            else:
                live.append((found_id, version))
        if dead:
            # A slow owner that is still alive puts its lease back at its next renewal.
            log.info("removing %d stale reservation lease(s) under %s", len(dead), self.url)
            self._delete_keys(dead)
        return sorted(live)

    def reservation_note(self, artifact_id: str, version: int) -> bytes | None:
        body = self._get(self._key(LEASES, artifact_id, str(version)))
        if body is None:
            return None
        try:
            return base64.b64decode(json.loads(body)["note"])
        except (ValueError, KeyError, TypeError):
            return None

    # ---- artifacts -----------------------------------------------------------------------------

    def write(self, artifact_id: str, version: int, files: dict[str, bytes]) -> str:
        """Upload the parts, then the signed manifest, created only if the version does not exist."""
        manifest_key = self._key(MANIFESTS, artifact_id, str(version))
        if self._exists(manifest_key):
            raise FileExistsError(f"{artifact_id} version {version} exists and is immutable")
        for name in files:
            if not is_payload_name(name):
                raise ValueError(f"payload name {name!r} is not a plain file name")
        upload = secrets.token_hex(8)
        part_keys = []
        try:
            digests = {}
            for name, data in files.items():
                part_key = self._key(PARTS, artifact_id, str(version), upload, name)
                self._call("put_object", Bucket=self.bucket, Key=part_key, Body=data)
                part_keys.append(part_key)
                digests[name] = _sha256(data)
            manifest = {"upload": upload, "files": digests, "hmac": sign_digests(self._hmac_key, digests)}
            if not self._put_new(manifest_key, json.dumps(manifest).encode()):
                raise FileExistsError(f"{artifact_id} version {version} exists and is immutable")
        except BaseException:
            try:
                self._delete_keys(part_keys)
            except Exception:  # noqa: BLE001 - the sweep removes what is left
                log.warning(
                    "could not remove the parts of an unfinished write of %s v%d", artifact_id, version
                )
            raise
        return self.location(artifact_id, version)

    def commit(self, reservation: HeldVersion, files: dict[str, bytes]) -> str:
        """Write the reserved version, then release the reservation (the artifact is in place first)."""
        if reservation.released:
            raise ValueError(f"{reservation!r} was released; its number cannot be committed")
        location = self.write(reservation.artifact_id, reservation.version, files)
        reservation.release()
        return location

    def read(self, artifact_id: str, version: int, names: Collection[str] | None = None) -> dict[str, bytes]:
        """Every payload of a verified version (or those of ``names`` it holds); FileNotFoundError when
        it is not stored (deleted), IntegrityError when the manifest or any part read does not match."""
        where = self.location(artifact_id, version)
        body = self._get(self._key(MANIFESTS, artifact_id, str(version)))
        if body is None:
            raise FileNotFoundError(f"{where} is not stored")
        try:
            manifest = json.loads(body)
            upload, digests, expected = manifest["upload"], manifest["files"], manifest["hmac"]
        except (ValueError, KeyError, TypeError) as exc:
            raise IntegrityError(f"{where}: missing or malformed signature ({exc})") from exc
        if not isinstance(digests, dict) or not secrets.compare_digest(
            sign_digests(self._hmac_key, digests), str(expected)
        ):
            raise IntegrityError(f"{where}: signature does not verify (tampered, or signed with another key)")
        if not isinstance(upload, str) or not upload.isalnum():
            raise IntegrityError(f"{where}: bad upload token {upload!r} in the manifest")
        files: dict[str, bytes] = {}
        for name, digest in digests.items():
            if not is_payload_name(name):
                raise IntegrityError(f"{where}: bad file name {name!r} in signature")
            if names is not None and name not in names:
                continue
            data = self._get(self._key(PARTS, artifact_id, str(version), upload, name))
            if data is None:
                raise IntegrityError(f"{where}: {name} is missing")
            if not secrets.compare_digest(_sha256(data), str(digest)):
                raise IntegrityError(f"{where}: {name} does not match its signature (tampered or truncated)")
            files[name] = data
        return files

    def delete(self, artifact_id: str, version: int) -> bool:
        """Remove one version; False when it was not there. The manifest goes first (gone for every
        replica at once), then its parts; its claim stays, so the number is never handed out again.
        Unlike the directory store, two replicas deleting the same version at once may both get True
        (S3 deletes are idempotent and unconditional)."""
        manifest_key = self._key(MANIFESTS, artifact_id, str(version))
        if not self._exists(manifest_key):
            return False
        self._delete_keys([manifest_key])
        try:
            parts = self._list(PARTS, f"{artifact_id}/{version}/")[0]
            self._delete_keys([item["Key"] for item in parts])
            if not self._split(self._list(MANIFESTS, artifact_id + "/")[0]):
                # The id is gone: so is what its unload mark said about it.
                self._delete_keys([item["Key"] for item in self._list(UNLOADED, artifact_id + "/")[0]])
        except Unavailable as exc:
            # The version is gone already (no manifest); the sweep removes parts left behind.
            log.warning(
                "deleted %s, but not all of its objects: %s", self.location(artifact_id, version), exc
            )
        return True

    def scan(self, artifact_id: str | None = None) -> Iterator[ArtifactRef]:
        """Every version whose manifest exists (not verified yet), in (id, version) order."""
        if artifact_id is not None and not is_valid_id(artifact_id):
            return iter(())
        if artifact_id is None and time.monotonic() - self._last_sweep > self.sweep_seconds:
            self.sweep()
        objects = self._list(MANIFESTS, artifact_id + "/" if artifact_id else "")[0]
        found = sorted((found_id, version) for found_id, version, _ in self._split(objects))
        return iter([ArtifactRef(found_id, v, self.location(found_id, v)) for found_id, v in found])

    def sweep(self) -> int:
        """Remove the parts of writes that never got a manifest, once older than ``sweep_seconds``;
        returns how many objects went."""
        self._last_sweep = time.monotonic()
        parts, server_now = self._list(PARTS)
        if not parts or server_now is None:
            return 0
        stored = {(i, v) for i, v, _ in self._split(self._list(MANIFESTS)[0])}
        newest: dict[tuple[str, str, str], datetime] = {}
        keys: dict[tuple[str, str, str], list[str]] = {}
        for item in parts:
            pieces = item["Rel"].split("/")
            if len(pieces) != 4:
                continue
            group = (pieces[0], pieces[1], pieces[2])
            newest[group] = max(newest.get(group, item["LastModified"]), item["LastModified"])
            keys.setdefault(group, []).append(item["Key"])
        doomed = [
            key
            for group, when in newest.items()
            if (server_now - when).total_seconds() > self.sweep_seconds
            and not (group[1].isdigit() and (group[0], int(group[1])) in stored)
            for key in keys[group]
        ]
        if doomed:
            log.info("sweeping %d part(s) of unfinished writes under %s", len(doomed), self.url)
            self._delete_keys(doomed)
        return len(doomed)

    # ---- instance-wide unload ------------------------------------------------------------------

    def set_unloaded(self, artifact_id: str, flag: bool) -> None:
        """Mark every stored version of the id unloaded for every replica (True), or clear it (False)."""
        old = [item["Key"] for item in self._list(UNLOADED, artifact_id + "/")[0]]
        if flag:
            highest = max(
                (v for _, v, _ in self._split(self._list(MANIFESTS, artifact_id + "/")[0])), default=0
            )
            mark = self._key(UNLOADED, artifact_id, str(highest))
            self._call("put_object", Bucket=self.bucket, Key=mark, Body=b"")
            old = [key for key in old if key != mark]
        self._delete_keys(old)

    def unloaded_ids(self) -> dict[str, int]:
        marks: dict[str, int] = {}
        for found_id, version, _ in self._split(self._list(UNLOADED)[0]):
            marks[found_id] = max(marks.get(found_id, 0), version)
        return marks

    # ---- change detection ----------------------------------------------------------------------

    def generation(self) -> object:
        """A token of the listing: every manifest and unload mark with its ETag (two LISTs). Equal
        tokens mean no version or unload mark came or went; reservations are not covered."""
        manifests = self._list(MANIFESTS)[0]
        marks = self._list(UNLOADED)[0]
        return tuple((item["Key"], item.get("ETag", "")) for item in [*manifests, *marks])
