"""The Python client against a real in-process scaler service: numpy round trips and errors."""

from __future__ import annotations

from collections.abc import Iterator

import grpc
import numpy as np
import pytest
from lstm_stack_client import LstmStackError, ScalerClient, scaler_spec
from sklearn.preprocessing import MinMaxScaler, RobustScaler, StandardScaler

from protos.lstm_stack.v1 import scaler_pb2
from tests.scaler_service.harness import ScalerServerHandle

TRAIN = np.array([[1, 2, 3], [2, 3, 4], [3, 4, 5], [4, 5, 6], [20000, 30000, 40000], [100, 200, 300]], float)
TEST = np.array([[5, 6, 7], [30000, 40000, 50000]], float)


@pytest.fixture
def scaler(scaler_server: ScalerServerHandle) -> Iterator[ScalerClient]:
    with ScalerClient.connect(scaler_server.address, timeout=10) as client:
        yield client


@pytest.mark.parametrize(
    ("kind", "reference"),
    [("minmax", MinMaxScaler()), ("standard", StandardScaler()), ("robust", RobustScaler())],
)
def test_fit_transform_inverse_match_scikit_learn(scaler: ScalerClient, kind: str, reference: object) -> None:
    info = scaler.fit(TRAIN, kind)
    assert info.version == 1 and info.n_samples_seen == len(TRAIN)
    assert list(info.sample_shape) == [3]
    expected = reference.fit(TRAIN).transform(TEST)  # type: ignore[attr-defined]
    scaled = scaler.transform(info.id, TEST)
    assert isinstance(scaled, np.ndarray) and scaled.dtype == np.float64
    np.testing.assert_allclose(scaled, expected, rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(scaler.inverse_transform(info.id, scaled), TEST, rtol=1e-9)


def test_float32_stays_float32(scaler: ScalerClient) -> None:
    info = scaler.fit(TRAIN.astype(np.float32), "minmax")
    scaled = scaler.transform(info.id, TEST.astype(np.float32))
    assert scaled.dtype == np.float32


def test_fit_transform_fits_on_train_only(scaler: ScalerClient) -> None:
    result = scaler.fit_transform(TRAIN, scaler_spec("minmax"), {"test": TEST})
    reference = MinMaxScaler().fit(TRAIN)
    np.testing.assert_allclose(result.train, reference.transform(TRAIN), atol=1e-12)
    np.testing.assert_allclose(result.others["test"], reference.transform(TEST), atol=1e-12)
    # The test split's outlier lies beyond the training range: above 1, as scikit-learn gives.
    assert result.others["test"][1, 0] > 1
    np.testing.assert_allclose(result.scaler.statistics.data_max, TRAIN.max(axis=0))


def test_per_column_layout_for_windows(scaler: ScalerClient) -> None:
    windows = TRAIN.reshape(len(TRAIN), 3, 1)
    info = scaler.fit(windows, "standard", layout="per-column")
    assert info.layout == scaler_pb2.PER_COLUMN and info.n_columns == 3
    scaled = scaler.transform(info.id, TEST.reshape(2, 3, 1))
    assert scaled.shape == (2, 3, 1)
    np.testing.assert_allclose(scaled.reshape(2, 3), StandardScaler().fit(TRAIN).transform(TEST), atol=1e-12)


def test_streaming_fit_equals_one_shot(scaler: ScalerClient) -> None:
    data = np.random.default_rng(1).normal(size=(300, 2))
    streamed = scaler.fit_stream(np.array_split(data, 7), "standard")
    whole = scaler.fit(data, "standard")
    np.testing.assert_allclose(streamed.statistics.mean, whole.statistics.mean, rtol=1e-12)
    np.testing.assert_allclose(streamed.statistics.var, whole.statistics.var, rtol=1e-9)
    assert streamed.n_samples_seen == 300


def test_versions_get_list_delete(scaler: ScalerClient) -> None:
    first = scaler.fit(TRAIN, "minmax", scaler_id="prices")
    second = scaler.fit(TRAIN * 2, "minmax", scaler_id="prices")
    assert (first.version, second.version) == (1, 2)
    assert scaler.get("prices").version == 2
    assert scaler.get("prices", version=1).statistics.data_max[0] == 20000
    assert [(s.id, s.version) for s in scaler.list("prices")] == [("prices", 1), ("prices", 2)]
    assert scaler.delete("prices", version=1) == [1]
    assert [s.version for s in scaler.list("prices")] == [2]
    assert scaler.delete("prices") == [2]
    with pytest.raises(LstmStackError) as caught:
        scaler.get("prices")
    assert caught.value.code == grpc.StatusCode.NOT_FOUND
    assert "prices" in caught.value.details


def test_bad_input_surfaces_the_servers_status(scaler: ScalerClient) -> None:
    info = scaler.fit(TRAIN, "minmax")
    with pytest.raises(LstmStackError) as caught:
        scaler.transform(info.id, np.ones((2, 5)))
    assert caught.value.code == grpc.StatusCode.INVALID_ARGUMENT
    assert caught.value.attempts == 1
    assert "3" in caught.value.details and "5" in caught.value.details


def test_health(scaler: ScalerClient) -> None:
    assert scaler.health() == "SERVING"
    scaler.wait_until_serving(timeout=5)
