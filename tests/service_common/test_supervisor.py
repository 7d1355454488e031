"""The supervisor's arithmetic and port sharing (the processes themselves: tests/system/test_workers.py)."""

from __future__ import annotations

import os
import socket

import pytest

from service_common import supervisor
from service_common.supervisor import reserved_port, usable_cores, worker_count


def test_usable_cores_are_at_most_the_affinity_mask_and_at_least_one() -> None:
    assert 1 <= usable_cores() <= len(os.sched_getaffinity(0))


def test_a_cgroup_quota_caps_the_cores(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(supervisor, "_cgroup_quota", lambda: 0.5)
    assert usable_cores() == 1
    monkeypatch.setattr(supervisor, "_cgroup_quota", lambda: 1000.0)
    assert usable_cores() == len(os.sched_getaffinity(0))


def test_zero_workers_means_the_usable_cores_and_a_negative_count_is_refused() -> None:
    assert worker_count(0) == usable_cores()
    assert worker_count(3) == 3
    with pytest.raises(ValueError, match="workers must be >= 0"):
        worker_count(-1)


def test_a_reserved_port_can_be_shared_by_a_worker_with_so_reuseport_and_by_nobody_else() -> None:
    with reserved_port("127.0.0.1", 0) as port:
        assert port > 0
        worker = socket.socket()
        worker.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        worker.bind(("127.0.0.1", port))
        worker.listen()
        worker.close()
        stranger = socket.socket()
        with pytest.raises(OSError):
            stranger.bind(("127.0.0.1", port))
        stranger.close()
