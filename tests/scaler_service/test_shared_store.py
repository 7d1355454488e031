"""Two scaler-service instances on one store: one set of versions, numbers never shared, deletes seen by both."""

from __future__ import annotations

import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import grpc
import numpy as np

from protos.lstm_stack.v1 import scaler_pb2
from tests.scaler_service.harness import running_scaler_server
from tests.scaler_service.helpers import fit, random_data, transform

PROBE = random_data((5, 3), seed=42)
# What the issue asks of a version added or deleted through another instance (the default poll is 1 s).
WITHIN_SECONDS = 2.0


def wait_for(condition: Callable[[], bool], seconds: float) -> None:
    started = time.monotonic()
    while not condition():
        assert time.monotonic() - started < seconds, f"not within {seconds}s"
        time.sleep(0.02)


def listed(server) -> list[tuple[str, int]]:
    reply = server.stub.ListScalers(scaler_pb2.ListScalersRequest(page_size=1000), timeout=10)
    return [(info.id, info.version) for info in reply.scalers]


def test_a_fit_through_one_instance_is_served_by_the_other_and_a_delete_is_seen_by_both(
    tmp_path: Path,
) -> None:
    store = tmp_path / "store"
    with running_scaler_server(store) as a, running_scaler_server(store) as b:
        info = fit(a.stub, random_data((20, 3), seed=1), "robust", scaler_id="shared")
        # At once through the other instance: its cache misses, so it looks at the store.
        np.testing.assert_array_equal(
            transform(b.stub, "shared", PROBE), transform(a.stub, "shared", PROBE, version=info.version)
        )
        assert b.stub.GetScaler(scaler_pb2.GetScalerRequest(scaler_id="shared"), timeout=10) == info
        fit(a.stub, random_data((20, 3), seed=2), "minmax", scaler_id="listed")
        wait_for(lambda: listed(b) == [("listed", 1), ("shared", 1)], WITHIN_SECONDS)

        b.stub.DeleteScaler(scaler_pb2.DeleteScalerRequest(scaler_id="shared"), timeout=10)

        def gone_from_a() -> bool:
            try:
                a.stub.GetScaler(scaler_pb2.GetScalerRequest(scaler_id="shared"), timeout=10)
            except grpc.RpcError as exc:
                assert exc.code() == grpc.StatusCode.NOT_FOUND, exc
                return True
            return False

        wait_for(gone_from_a, WITHIN_SECONDS)
        assert listed(a) == [("listed", 1)]
        # The number stays used store-wide: the next fit through the instance that never deleted it.
        assert fit(a.stub, PROBE, "maxabs", scaler_id="shared").version == 2


def test_eight_parallel_fits_through_both_instances_get_eight_distinct_versions(tmp_path: Path) -> None:
    store = tmp_path / "store"
    with running_scaler_server(store) as a, running_scaler_server(store) as b:
        stubs = [a.stub, b.stub] * 4
        with ThreadPoolExecutor(8) as pool:
            infos = list(
                pool.map(
                    lambda job: fit(job[1], random_data((30, 3), seed=job[0]), "standard", scaler_id="race"),
                    enumerate(stubs),
                )
            )
        assert sorted(info.version for info in infos) == list(range(1, 9))
        expected = {info.version: transform(a.stub, "race", PROBE, version=info.version) for info in infos}
    with running_scaler_server(store) as restarted:
        assert listed(restarted) == [("race", v) for v in range(1, 9)]
        for version, output in expected.items():
            np.testing.assert_array_equal(transform(restarted.stub, "race", PROBE, version=version), output)
