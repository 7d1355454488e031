"""What both registries share: List page tokens (version numbers are allocated by the store,
service_common.artifacts), and the thread that keeps a registry's cache in step with the store.

Domain code only: no grpc here.
"""

from __future__ import annotations

import base64
import binascii
import logging
import os
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from service_common.artifacts import ArtifactStore, StoredArtifacts
from service_common.errors import InvalidArgument, echo

try:
    import inotify_simple
except ImportError:  # not Linux, or not installed: polling alone
    inotify_simple = None

log = logging.getLogger(__name__)

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
