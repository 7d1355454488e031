"""Freed memory goes back to the system (memory.py), so RSS falls after a model or a big request is gone."""

from __future__ import annotations

import subprocess
import sys
import threading
from pathlib import Path

from service_common import memory

REPO = Path(__file__).resolve().parents[2]

FRAGMENT = """
from service_common.memory import release_unused

def rss():
    for line in open("/proc/self/status"):
        if line.startswith("VmRSS"):
            return int(line.split()[1]) // 1024

blocks = [bytearray(64 * 1024) for _ in range(4000)]  # 250 MiB in malloc's heap (below mmap's threshold)
kept = blocks[::10]  # one block in ten stays: the heap cannot shrink from its top
del blocks
freed = rss()
release_unused(collect=False)
print(freed, rss())
"""


def test_release_unused_gives_a_fragmented_heap_back() -> None:
    done = subprocess.run(
        [sys.executable, "-c", FRAGMENT], cwd=REPO, capture_output=True, text=True, timeout=60, check=True
    )
    freed, trimmed = (int(v) for v in done.stdout.split())
    assert freed > 200, "the freed blocks were still resident before the trim"
    assert trimmed < freed - 150, (freed, trimmed)


def test_release_unused_soon_runs_one_at_a_time_in_the_background() -> None:
    started = threading.active_count()
    for _ in range(20):
        memory.release_unused_soon(collect=False)
    assert threading.active_count() <= started + 1
    assert memory._pending.acquire(timeout=10)  # the one that ran has finished
    memory._pending.release()
