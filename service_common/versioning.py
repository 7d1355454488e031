"""What both registries share: List page tokens (version numbers are allocated by the store,
service_common.artifacts), and the thread that keeps a registry's cache in step with the store.

Domain code only: no grpc here.
"""

from __future__ import annotations

import base64
import binascii
import logging
import threading
from collections.abc import Callable

from service_common.errors import InvalidArgument

log = logging.getLogger(__name__)


class StoreWatcher:
    """Calls ``refresh()`` every ``poll_seconds`` on a daemon thread until stopped.

    The registries' caches follow the store with it, as TF Serving follows its model base path
    (--file_system_poll_wait_seconds). A refresh that fails is logged and tried again next time.
    """

    def __init__(self, name: str, refresh: Callable[[], None], poll_seconds: float) -> None:
        if poll_seconds <= 0:
            raise ValueError(f"poll_seconds must be > 0, got {poll_seconds}")
        self._refresh = refresh
        self._poll_seconds = poll_seconds
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, name=name, daemon=True)

    def start(self) -> None:
        self._thread.start()

    def stop(self, timeout: float = 5.0) -> None:
        self._stop.set()
        if self._thread.is_alive() and self._thread is not threading.current_thread():
            self._thread.join(timeout)

    def _loop(self) -> None:
        while not self._stop.wait(self._poll_seconds):
            try:
                self._refresh()
            except Exception:  # noqa: BLE001 - the next poll tries again; serving goes on from the cache
                log.exception("%s: refreshing from the store failed", self._thread.name)


def encode_page_token(artifact_id: str, version: int) -> str:
    return base64.urlsafe_b64encode(f"{artifact_id}/{version}".encode()).decode()


def decode_page_token(token: str, rpc: str) -> tuple[str, int]:
    """The (id, version) a page ended at; InvalidArgument naming ``rpc`` when the token is not ours."""
    try:
        artifact_id, version = base64.urlsafe_b64decode(token.encode()).decode().rsplit("/", 1)
        return artifact_id, int(version)
    except (ValueError, binascii.Error, UnicodeDecodeError):
        raise InvalidArgument(
            f"page_token {token!r} is not valid; pass back a next_page_token from {rpc}"
        ) from None
