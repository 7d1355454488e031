"""32 threads fitting and transforming at once: no errors, no lost or duplicated versions."""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor

import numpy as np

from protos.lstm_stack.v1 import scaler_pb2
from tests.scaler_service.harness import ScalerServerHandle
from tests.scaler_service.helpers import fit, random_data, sklearn_scaler, transform

THREADS = 32
ROUNDS = 4


def test_32_threads_fit_and_transform(scaler_server: ScalerServerHandle) -> None:
    stub = scaler_server.stub
    shared_train = random_data((50, 3), seed=0)
    shared = fit(stub, shared_train, "standard", scaler_id="shared")
    expected_shared = sklearn_scaler("standard").fit(shared_train)

    def worker(index: int) -> list[int]:
        versions = []
        for round_ in range(ROUNDS):
            kind = ("minmax", "standard", "robust", "maxabs")[(index + round_) % 4]
            train = random_data((40, 3), seed=1000 * index + round_)
            probe = random_data((8, 3), seed=index)
            own = fit(stub, train, kind, scaler_id=f"worker-{index}")
            np.testing.assert_allclose(
                transform(stub, own.id, probe, version=own.version),
                sklearn_scaler(kind).fit(train).transform(probe),
                rtol=1e-12,
                atol=1e-12,
            )
            np.testing.assert_allclose(
                transform(stub, "shared", probe, version=1), expected_shared.transform(probe), rtol=1e-12
            )
            # Everybody also adds versions to one id, to race the version numbering.
            versions.append(fit(stub, train, "maxabs", scaler_id="contended").version)
        return versions

    with ThreadPoolExecutor(THREADS) as pool:
        results = list(pool.map(worker, range(THREADS)))

    contended = sorted(v for versions in results for v in versions)
    assert contended == list(range(1, THREADS * ROUNDS + 1))
    listed = stub.ListScalers(scaler_pb2.ListScalersRequest(page_size=1000)).scalers
    assert len(listed) == 1 + THREADS * ROUNDS * 2
    assert stub.GetScaler(scaler_pb2.GetScalerRequest(scaler_id="shared")) == shared
    assert scaler_server.health() == "SERVING"
