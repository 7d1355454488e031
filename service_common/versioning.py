"""What both registries (model_service.model_registry, scaler_service.scaler_registry) share: List pages and their
tokens, the versions refused at load, deleting with the store's high-water mark (version numbers are
allocated by the store, service_common.artifacts), and the thread that keeps a registry's cache in
step with the store.

Domain code only: no grpc here.
"""

from __future__ import annotations

import base64
import binascii
import logging
import os
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

from service_common.artifacts import ArtifactStore, StoredArtifacts
from service_common.errors import InvalidArgument, NotFound, echo

try:
    import inotify_simple
except ImportError:  # not Linux, or not installed: polling alone
    inotify_simple = None

log = logging.getLogger(__name__)

DEFAULT_PAGE_SIZE = 50
MAX_PAGE_SIZE = 1000

Key = tuple[str, int]  # (artifact id, version)
T = TypeVar("T")

# A watcher blocked on inotify looks at its stop flag this often.
_STOP_CHECK_SECONDS = 0.25
# Events arriving this close together wake one refresh (a commit is several renames).
_COALESCE_MS = 20
_WATCH_MASK = (
    (
        inotify_simple.flags.CREATE
        | inotify_simple.flags.DELETE
        | inotify_simple.flags.MOVED_TO
        | inotify_simple.flags.MOVED_FROM
        # A reservation's marker is closed when its owner releases it or dies (even by SIGKILL).
        | inotify_simple.flags.CLOSE_WRITE
        | inotify_simple.flags.ONLYDIR
    )
    if inotify_simple is not None
    else 0
)
_APPEARED = inotify_simple.flags.CREATE | inotify_simple.flags.MOVED_TO if inotify_simple is not None else 0


class StoreWatcher:
    """Keeps a registry's cache in step with its store, from a daemon thread, until stopped.

    Every ``poll_seconds`` it calls ``refresh()`` (the whole store; cheap when nothing changed), as TF
    Serving follows its model base path (--file_system_poll_wait_seconds). Where inotify exists (Linux,
    inotify_simple installed) it also watches the store's directories and calls ``sync(id)`` for each id
    that changed as soon as it changes, so the work done per change does not grow with the store.
    A store that is not a directory (S3) has no file events to watch: polling it is all there is, so
    what another replica changed is seen within ``poll_seconds``. Polling alone is enough: inotify only makes changes show sooner, and anything it misses (a watch
    that could not be added, an event before a new directory was watched) the next poll finds. A call
    that fails is logged and tried again next time.
    """

    def __init__(
        self,
        name: str,
        store: StoredArtifacts,
        refresh: Callable[[], None],
        sync: Callable[[str], None],
        poll_seconds: float,
        use_inotify: bool = True,
    ) -> None:
        if poll_seconds <= 0:
            raise ValueError(f"poll_seconds must be > 0, got {poll_seconds}")
        self._store = store
        # inotify is a directory store's accelerator, not part of the store contract.
        self._files: ArtifactStore | None = store if isinstance(store, ArtifactStore) else None
        self._refresh = refresh
        self._sync = sync
        self._poll_seconds = poll_seconds
        self.uses_inotify = use_inotify and inotify_simple is not None and self._files is not None
        self._watches: dict[int, Path] = {}
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, name=name, daemon=True)

    def start(self) -> None:
        self._thread.start()

    def stop(self, timeout: float = 5.0) -> None:
        self._stop.set()
        if self._thread.is_alive() and self._thread is not threading.current_thread():
            self._thread.join(timeout)

    def _call(self, function: Callable[..., None], *args: str) -> None:
        try:
            function(*args)
        except Exception:  # noqa: BLE001 - the next poll tries again; serving goes on from the cache
            log.exception("%s: following the store failed", self._thread.name)

    def _loop(self) -> None:
        notify = inotify_simple.INotify() if self.uses_inotify else None
        try:
            if notify is not None:
                self._watch_all(notify)
            due = time.monotonic() + self._poll_seconds
            while not self._stop.is_set():
                changed = self._wait(notify, due)
                if self._stop.is_set():
                    return
                if changed is None:
                    self._call(self._refresh)
                    if notify is not None:
                        self._watch_all(notify)
                    due = time.monotonic() + self._poll_seconds
                else:
                    for artifact_id in sorted(changed):
                        self._call(self._sync, artifact_id)
        finally:
            if notify is not None:
                notify.close()

    def _add_watch(self, notify: Any, directory: Path) -> bool:
        try:
            self._watches[notify.add_watch(directory, _WATCH_MASK)] = directory
        except OSError as exc:  # gone meanwhile, or out of watches: the poll still covers it
            log.debug("not watching %s: %s", directory, exc)
            return False
        return True

    def _adopt(self, notify: Any, path: Path, changed: set[str]) -> None:
        """Watch a directory that just appeared, and what appeared in it before the watch did; their
        ids are synced once the watches are in place, so nothing that happened meanwhile is missed."""
        assert self._files is not None  # only called when watching a directory store
        if not self._files.is_watched_directory(path) or not self._add_watch(notify, path):
            return
        artifact_id = self._files.changed_id(path.parent, path.name)
        if artifact_id is not None:
            changed.add(artifact_id)
        try:
            names = os.listdir(path)
        except OSError:
            return
        for name in names:
            self._adopt(notify, path / name, changed)

    def _watch_all(self, notify: Any) -> None:
        """Watch every store directory not watched yet (at start and at each poll)."""
        assert self._files is not None
        watched = set(self._watches.values())
        for directory in self._files.watched_directories():
            if directory not in watched:
                self._add_watch(notify, directory)

    def _wait(self, notify: Any, until: float) -> set[str] | None:
        """The ids that changed (inotify), or None once it is time to poll."""
        while not self._stop.is_set():
            remaining = until - time.monotonic()
            if remaining <= 0:
                return None
            if notify is None:
                self._stop.wait(remaining)
                continue
            events = notify.read(
                timeout=int(1000 * min(remaining, _STOP_CHECK_SECONDS)) + 1, read_delay=_COALESCE_MS
            )
            changed: set[str] = set()
            for event in events:
                directory = self._watches.get(event.wd)
                if event.mask & inotify_simple.flags.IGNORED:
                    self._watches.pop(event.wd, None)  # the directory was removed
                if directory is None:
                    continue
                if event.mask & _APPEARED:
                    self._adopt(notify, directory / event.name, changed)
                artifact_id = self._files.changed_id(directory, event.name) if self._files else None
                if artifact_id is not None:
                    changed.add(artifact_id)
            if changed:
                return changed
        return None


def encode_page_token(artifact_id: str, version: int) -> str:
    return base64.urlsafe_b64encode(f"{artifact_id}/{version}".encode()).decode()


def decode_page_token(token: str, rpc: str) -> tuple[str, int]:
    """The (id, version) a page ended at; InvalidArgument naming ``rpc`` when the token is not ours."""
    try:
        # validate=True: without it, b64decode skips characters outside the alphabet.
        artifact_id, version = (
            base64.b64decode(token.encode(), altchars=b"-_", validate=True).decode().rsplit("/", 1)
        )
    except (ValueError, binascii.Error, UnicodeDecodeError):
        artifact_id, version = "", ""
    # Whole-string checks: int() would also take " 7\n", "+7" or "7_0".
    if not (artifact_id and version.isascii() and version.isdigit()):
        raise InvalidArgument(
            f"page_token {echo(token)} is not valid; pass back a next_page_token from {rpc}"
        )
    return artifact_id, int(version)


@dataclass(frozen=True)
class Page:
    """A List request's page: at most ``size`` keys after ``after`` (None: from the start)."""

    size: int
    after: Key | None

    @classmethod
    def of(cls, page_size: int, page_token: str, rpc: str) -> Page:
        """InvalidArgument for a negative ``page_size`` or a token that is not ours (naming ``rpc``)."""
        if page_size < 0:
            raise InvalidArgument(f"page_size must be >= 0 (0 means {DEFAULT_PAGE_SIZE}), got {page_size}")
        after = decode_page_token(page_token, rpc) if page_token else None
        return cls(min(page_size or DEFAULT_PAGE_SIZE, MAX_PAGE_SIZE), after)

    def take(self, keys: Sequence[Key]) -> tuple[list[Key], str]:
        """This page of ``keys`` (in (id, version) order) and the next page's token ('' on the last)."""
        rest = [key for key in keys if self.after is None or key > self.after]
        page = rest[: self.size]
        return page, encode_page_token(*page[-1]) if len(rest) > self.size else ""


class RefusedVersions:
    """Stored versions that failed to verify or load. An artifact never changes, so one refused stays
    refused (not read again at every refresh) until it is deleted from the store."""

    def __init__(self, kind: str) -> None:
        self._kind = kind  # "model", "scaler": for the log
        self._keys: set[Key] = set()

    def __contains__(self, key: Key) -> bool:
        return key in self._keys

    def __len__(self) -> int:
        return len(self._keys)

    def keep_stored(self, stored: set[Key], only: str | None) -> None:
        """Forget the refused versions no longer stored (of id ``only``, or of every id when None)."""
        self._keys = {key for key in self._keys if key in stored or (only is not None and key[0] != only)}

    def attempt(self, key: Key, location: str, load: Callable[[], T]) -> T | None:
        """``load()``, or None (and ``key`` refused) when it fails: one bad artifact must not stop the
        others loading. A version deleted while we looked is not logged: the next scan no longer lists it."""
        try:
            return load()
        except FileNotFoundError:
            pass
        except Exception as exc:  # noqa: BLE001 - logged and skipped, never trusted
            self.refuse(key, location, exc)
            return None
        self._keys.add(key)
        return None

    def refuse(self, key: Key, location: str, exc: Exception) -> None:
        """Refuse a version that failed after it was listed (e.g. its graph, read when first called)."""
        log.error("skipping %s artifact %s: %s", self._kind, location, exc)
        self._keys.add(key)


def delete_versions(
    store: StoredArtifacts, kind: str, artifact_id: str, versions: Sequence[int], sync: Callable[[str], None]
) -> list[int]:
    """Delete ``versions`` of ``artifact_id`` for the whole store, then ``sync(artifact_id)``; returns
    what was deleted. The store covers each number with its high-water mark before it goes, so no number
    is ever reused. NotFound when another process deleted them all between the caller's look and ours."""
    removed = [number for number in versions if store.delete(artifact_id, number)]
    sync(artifact_id)
    if not removed:
        raise NotFound(f"{kind} {artifact_id!r} version {', '.join(map(str, versions))} not found")
    return removed


def no_such_version(kind: str, artifact_id: str, version: int, known: Sequence[int]) -> NotFound:
    """The NotFound for a version an id does not have, listing those it has."""
    listed = ", ".join(str(v) for v in sorted(known))
    return NotFound(f"{kind} {artifact_id!r} has no version {version}; it has versions {listed}")
