"""Cluster checks: several real processes per test (SeaweedFS, Envoy, replicas), minutes per file.

They are not part of ``make test`` (kept near ten minutes on two cores); ``.ci/run`` runs them through
``scripts/system_checks.sh``, which sets LSTM_CLUSTER_TESTS=1 (tests/conftest.py skips collecting this
folder otherwise, so nothing here is ever counted as a pass without running).
"""

from __future__ import annotations

import itertools
import re
from collections.abc import Iterator

import pytest

from tests.cluster.seaweed import SeaweedS3, seaweed_s3

_prefixes = itertools.count(1)


@pytest.fixture(scope="session")
def seaweed(tmp_path_factory: pytest.TempPathFactory) -> Iterator[SeaweedS3]:
    """One SeaweedFS (S3 API on a free 127.0.0.1 port) for the session; each test takes its own prefix."""
    with seaweed_s3(tmp_path_factory.mktemp("seaweedfs")) as s3:
        yield s3


@pytest.fixture
def s3_prefix(seaweed: SeaweedS3, request: pytest.FixtureRequest) -> str:
    """A key prefix in the session's bucket no other test uses."""
    return f"t{next(_prefixes)}-" + re.sub(r"[^A-Za-z0-9_-]+", "-", request.node.name)[:40]
