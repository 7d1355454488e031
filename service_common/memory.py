"""Giving freed memory back to the operating system.

glibc's malloc keeps what the process freed in its arenas for later allocations: after a model is
deleted, or a big request is over, the resident size stays where the peak left it. ``malloc_trim``
returns the free parts of every arena to the system. Elsewhere than glibc this does nothing.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import gc
import logging
import threading
from collections.abc import Callable

log = logging.getLogger(__name__)


def _load_trim() -> Callable[[int], int] | None:
    name = ctypes.util.find_library("c")
    if not name:
        return None
    try:
        trim = ctypes.CDLL(name).malloc_trim
    except (OSError, AttributeError):
        return None
    trim.argtypes = [ctypes.c_size_t]
    trim.restype = ctypes.c_int
    return trim


_malloc_trim = _load_trim()
_pending = threading.Lock()


def release_unused(collect: bool = True) -> None:
    """Trim malloc's arenas; with ``collect``, first collect garbage cycles (a dropped Keras model is
    full of them; a full collection holds the GIL for a while, so only when something was dropped)."""
    if collect:
        gc.collect()
    if _malloc_trim is not None:
        _malloc_trim(0)  # ctypes releases the GIL for the call


def release_unused_soon(collect: bool = True) -> None:
    """release_unused in a background thread, at most one at a time (callers do not wait for it)."""
    if not _pending.acquire(blocking=False):
        return

    def run() -> None:
        try:
            release_unused(collect)
        except Exception:  # noqa: BLE001 - best effort
            log.exception("releasing unused memory failed")
        finally:
            _pending.release()

    threading.Thread(target=run, name="release-memory", daemon=True).start()
