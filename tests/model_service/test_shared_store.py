"""Two model-service instances on one store: a version trained through one is served by the other, a
delete through one is NOT_FOUND on the other, parallel trainings through both never share a number."""

from __future__ import annotations

import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import grpc
import numpy as np

from protos.lstm_stack.v1 import model_pb2
from tests.model_service.conftest import running_model_server
from tests.model_service.helpers import predict, seed_example, tiny_spec, train, train_request, values
from tests.scaler_service.harness import ScalerServerHandle

# What the issue asks of a version trained or deleted through another instance (the default poll is 1 s).
WITHIN_SECONDS = 2.0
PARALLEL_TRAININGS = 8


def wait_for(condition: Callable[[], bool], seconds: float) -> None:
    started = time.monotonic()
    while not condition():
        assert time.monotonic() - started < seconds, f"not within {seconds}s"
        time.sleep(0.02)


def listed(stub) -> list[tuple[str, int, int]]:
    reply = stub.ListModels(model_pb2.ListModelsRequest(page_size=1000), timeout=10)
    return [(m.id, m.version, m.state) for m in reply.models]


def test_trained_through_one_instance_served_by_the_other_and_deleted_through_it(
    shared_scaler: ScalerServerHandle, tmp_path: Path
) -> None:
    x, y = seed_example()
    store = tmp_path / "store"
    with (
        running_model_server(store, shared_scaler.address) as a,
        running_model_server(store, shared_scaler.address) as b,
    ):
        _, done = train(a.stub, train_request(tiny_spec(), x, y, model_id="shared"))
        # At once through the other instance: its cache misses, so it looks at the store.
        np.testing.assert_allclose(
            values(predict(b.stub, "shared", x)), values(predict(a.stub, "shared", x)), rtol=1e-6
        )
        _, other = train(a.stub, train_request(tiny_spec(), x, y, model_id="listed"))
        # ListModels never looks at the store itself: the watcher brings it in.
        wait_for(
            lambda: listed(b.stub) == [("listed", 1, model_pb2.READY), ("shared", 1, model_pb2.READY)],
            WITHIN_SECONDS,
        )

        b.stub.DeleteModel(model_pb2.DeleteModelRequest(model_id="shared"), timeout=10)

        def gone_from_a() -> bool:
            try:
                predict(a.stub, "shared", x)
            except grpc.RpcError as exc:
                assert exc.code() == grpc.StatusCode.NOT_FOUND, exc
                return True
            return False

        wait_for(gone_from_a, WITHIN_SECONDS)
        assert listed(a.stub) == [("listed", 1, model_pb2.READY)]
        assert (done.version, other.version) == (1, 1)


def test_parallel_trainings_through_both_instances_get_distinct_versions_loadable_after_a_restart(
    shared_scaler: ScalerServerHandle, tmp_path: Path
) -> None:
    x, y = seed_example()
    store = tmp_path / "store"
    limit = PARALLEL_TRAININGS // 2  # each instance takes its half at once
    with (
        running_model_server(store, shared_scaler.address, max_training_jobs=limit) as a,
        running_model_server(store, shared_scaler.address, max_training_jobs=limit) as b,
    ):
        stubs = [a.stub, b.stub] * limit
        with ThreadPoolExecutor(PARALLEL_TRAININGS) as pool:
            infos = list(
                pool.map(
                    lambda job: train(job[1], train_request(tiny_spec(), x, y, model_id="race", seed=job[0]))[
                        1
                    ],
                    enumerate(stubs),
                )
            )
        versions = sorted(info.version for info in infos)
        assert versions == list(range(1, PARALLEL_TRAININGS + 1))
        before = {v: values(predict(b.stub, "race", x, v)) for v in versions}
    with running_model_server(store, shared_scaler.address) as restarted:
        assert listed(restarted.stub) == [("race", v, model_pb2.READY) for v in versions]
        for version, expected in before.items():
            np.testing.assert_allclose(
                values(predict(restarted.stub, "race", x, version)), expected, rtol=1e-6
            )
