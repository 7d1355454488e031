"""What both registries share: version numbers that are never reused, and List page tokens.

Domain code only: no grpc here.
"""

from __future__ import annotations

import base64
import binascii
import json
import logging
import os
import secrets
import tempfile
from pathlib import Path

from service_common.errors import InvalidArgument, echo

log = logging.getLogger(__name__)

HIGH_WATER_FILE = ".version-high-water.json"


class VersionCounter:
    """The highest version number ever handed out per id (reserved, skipped and deleted ones included).

    Not thread-safe: the owning registry calls it under its own lock. The marks live in memory and in
    ``<root>/.version-high-water.json``, written by ``save()`` before anything is deleted, so numbers stay
    unique after a restart; numbers of artifacts still on disk are recovered by ``observe()``.
    """

    def __init__(self, root: Path) -> None:
        self._path = root / HIGH_WATER_FILE
        self._marks: dict[str, int] = {}
        try:
            self._marks = {str(k): int(v) for k, v in json.loads(self._path.read_text()).items()}
        except FileNotFoundError:
            pass
        except (OSError, ValueError, AttributeError) as exc:
            log.warning("ignoring unreadable %s: %s", self._path, exc)

    def observe(self, artifact_id: str, version: int) -> None:
        self._marks[artifact_id] = max(self._marks.get(artifact_id, 0), version)

    def next(self, artifact_id: str) -> int:
        """Reserve and return the next number of ``artifact_id``."""
        version = self._marks.get(artifact_id, 0) + 1
        self._marks[artifact_id] = version
        return version

    def new_id(self, prefix: str) -> str:
        """An id never handed out before, e.g. ``model-3f2a9c1e``."""
        while True:
            candidate = f"{prefix}-{secrets.token_hex(4)}"
            if candidate not in self._marks:
                return candidate

    def save(self) -> None:
        # Temp file + fsync + rename: a crash leaves the old file or the new one, never half of one.
        fd, temp = tempfile.mkstemp(prefix=".tmp-hw-", dir=self._path.parent)
        try:
            with os.fdopen(fd, "w") as fh:
                json.dump(self._marks, fh, sort_keys=True)
                fh.flush()
                os.fsync(fh.fileno())
            os.replace(temp, self._path)
        except BaseException:
            Path(temp).unlink(missing_ok=True)
            raise


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
