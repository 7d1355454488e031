"""The scaler service over gRPC: equality with scikit-learn, versions, FitTransform, Get/List/Delete."""

from __future__ import annotations

import numpy as np
import pytest
from google.protobuf import json_format

from protos.lstm_stack.v1 import scaler_pb2, tensor_pb2
from service_common import codec
from tests.scaler_service.harness import ScalerServerHandle
from tests.scaler_service.helpers import (
    SEED_X,
    SEED_Y,
    fit,
    random_data,
    sklearn_reference,
    sklearn_scaler,
    spec,
    transform,
)

KIND_PARAMS = [
    ("minmax", {}),
    ("minmax", {"feature_min": -1.0, "feature_max": 2.0, "clip": True}),
    ("standard", {}),
    ("standard", {"with_mean": False}),
    ("robust", {}),
    ("robust", {"quantile_min": 10.0, "quantile_max": 90.0, "unit_variance": True}),
    ("maxabs", {}),
]
SHAPES = [("per_feature", (60, 3)), ("per_feature", (30, 5, 2)), ("per_column", (30, 5, 2))]


@pytest.mark.parametrize(("kind", "params"), KIND_PARAMS)
@pytest.mark.parametrize(("layout", "shape"), SHAPES)
def test_outputs_equal_sklearn(
    scaler_server: ScalerServerHandle, kind: str, params: dict, layout: str, shape: tuple[int, ...]
) -> None:
    train, other = random_data(shape, seed=11), random_data(shape, seed=12)
    info = fit(scaler_server.stub, train, kind, layout=layout, **params)
    reference, to_2d = sklearn_reference(kind, layout, train, **params)
    expected = reference.transform(to_2d(other)).reshape(other.shape)

    scaled = transform(scaler_server.stub, info.id, other)
    assert scaled.dtype == np.float64 and scaled.shape == other.shape
    np.testing.assert_allclose(scaled, expected, rtol=1e-12, atol=1e-12)
    # The affine form reproduces scikit-learn (before minmax clipping).
    if not params.get("clip"):
        scale, offset = np.array(info.affine.scale), np.array(info.affine.offset)
        np.testing.assert_allclose(to_2d(other) * scale + offset, to_2d(expected), rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(
        transform(scaler_server.stub, info.id, scaled, inverse=True),
        reference.inverse_transform(to_2d(scaled)).reshape(other.shape),
        rtol=1e-12,
        atol=1e-12,
    )
    if not params.get("clip"):  # clipping loses information, so only unclipped data round-trips
        np.testing.assert_allclose(
            transform(scaler_server.stub, info.id, scaled, inverse=True), other, rtol=1e-10, atol=1e-9
        )


def test_info_describes_the_fit(scaler_server: ScalerServerHandle) -> None:
    train = random_data((25, 4, 3), seed=3)
    info = fit(scaler_server.stub, train, "minmax", layout="per_column", feature_max=5.0)
    assert info.id.startswith("scaler-") and len(info.id) == len("scaler-") + 8
    assert info.version == 1
    assert info.layout == scaler_pb2.PER_COLUMN
    assert list(info.sample_shape) == [4, 3]
    assert (info.n_columns, info.n_samples_seen) == (12, 25)
    # Defaults are filled in the returned spec.
    assert info.spec.minmax.HasField("feature_min") and info.spec.minmax.feature_min == 0.0
    assert info.spec.minmax.feature_max == 5.0
    np.testing.assert_array_equal(info.statistics.data_min, train.reshape(25, 12).min(axis=0))
    np.testing.assert_array_equal(info.statistics.data_max, train.reshape(25, 12).max(axis=0))
    assert not info.statistics.mean and not info.statistics.center
    assert len(info.fingerprint) == 64
    assert info.created_at.endswith("Z")

    robust = fit(scaler_server.stub, train.reshape(-1, 3), "robust")
    assert robust.spec.robust.quantile_min == 25.0 and robust.spec.robust.quantile_max == 75.0
    assert robust.spec.robust.with_centering and robust.spec.robust.with_scaling
    np.testing.assert_allclose(robust.statistics.center, np.median(train.reshape(-1, 3), axis=0), rtol=1e-12)


def test_every_fit_is_a_new_immutable_version(scaler_server: ScalerServerHandle) -> None:
    stub = scaler_server.stub
    first_data, second_data = random_data((20, 2), seed=1), random_data((20, 2), seed=2) * 10
    first = fit(stub, first_data, "standard", scaler_id="prices")
    second = fit(stub, second_data, "standard", scaler_id="prices")
    assert (first.id, first.version, second.version) == ("prices", 1, 2)
    assert first.fingerprint != second.fingerprint
    probe = random_data((4, 2), seed=3)
    by_v1 = transform(stub, "prices", probe, version=1)
    np.testing.assert_allclose(by_v1, sklearn_scaler("standard").fit(first_data).transform(probe), rtol=1e-12)
    latest = stub.Transform(scaler_pb2.TransformRequest(scaler_id="prices", data=codec.from_numpy(probe)))
    assert latest.version == 2
    np.testing.assert_allclose(
        codec.to_numpy(latest.data), sklearn_scaler("standard").fit(second_data).transform(probe), rtol=1e-12
    )
    # Version 1 is untouched by the second fit.
    np.testing.assert_array_equal(transform(stub, "prices", probe, version=1), by_v1)
    assert stub.GetScaler(scaler_pb2.GetScalerRequest(scaler_id="prices", version=1)) == first


def test_float32_in_float32_out_and_ints_become_float64(scaler_server: ScalerServerHandle) -> None:
    info = fit(scaler_server.stub, SEED_X, "minmax")
    for sent, expected_dtype in [
        (SEED_X.astype(np.float32), tensor_pb2.FLOAT32),
        (SEED_X.astype(np.int32), tensor_pb2.FLOAT64),
        (SEED_X.astype(np.int64), tensor_pb2.FLOAT64),
    ]:
        reply = scaler_server.stub.Transform(
            scaler_pb2.TransformRequest(scaler_id=info.id, data=codec.from_numpy(sent))
        )
        assert reply.data.dtype == expected_dtype
        np.testing.assert_allclose(
            codec.to_numpy(reply.data), sklearn_scaler("minmax").fit(SEED_X).transform(SEED_X), rtol=1e-6
        )


def test_json_values_form_is_answered_in_kind(scaler_server: ScalerServerHandle) -> None:
    # What a grpcurl user sends: plain numbers, no raw bytes.
    request = json_format.ParseDict(
        {
            "spec": {"kind": "STANDARD"},
            "data": {"shape": [3, 2], "values": [1, 10, 2, 20, 3, 30]},
        },
        scaler_pb2.FitRequest(),
    )
    info = scaler_server.stub.Fit(request)
    reply = scaler_server.stub.Transform(
        scaler_pb2.TransformRequest(
            scaler_id=info.id, data=tensor_pb2.Tensor(shape=[1, 2], values=[2.0, 20.0])
        )
    )
    assert not reply.data.raw and list(reply.data.values) == [0.0, 0.0]
    assert list(reply.data.shape) == [1, 2]


def test_fit_transform_is_the_seed_recipe(scaler_server: ScalerServerHandle) -> None:
    """The seed's outlier data: fit on the train split only, transform train and test with that fit."""
    test_rows = [3, 12, 13]  # a small row, the largest outlier and [100, 200, 300]
    train_rows = [i for i in range(len(SEED_X)) if i not in test_rows]
    x_train, x_test = SEED_X[train_rows], SEED_X[test_rows]
    y_train, y_test = SEED_Y[train_rows, None], SEED_Y[test_rows, None]
    results = {}
    for kind in ("minmax", "standard", "robust"):
        reply = scaler_server.stub.FitTransform(
            scaler_pb2.FitTransformRequest(
                spec=spec(kind),
                train=codec.from_numpy(x_train),
                others={"test": codec.from_numpy(x_test)},
            )
        )
        reference = sklearn_scaler(kind).fit(x_train)
        train_out, test_out = codec.to_numpy(reply.train), codec.to_numpy(reply.others["test"])
        np.testing.assert_allclose(train_out, reference.transform(x_train), rtol=1e-12, atol=1e-12)
        np.testing.assert_allclose(test_out, reference.transform(x_test), rtol=1e-12, atol=1e-12)
        # Fitted on train only: the statistics are not those of the whole data set.
        assert reply.scaler.n_samples_seen == len(train_rows)
        assert not np.allclose(test_out, sklearn_scaler(kind).fit(SEED_X).transform(x_test))
        # The stored version transforms exactly as the one-round-trip reply did.
        np.testing.assert_array_equal(transform(scaler_server.stub, reply.scaler.id, x_test), test_out)
        results[kind] = train_out
        if kind == "minmax":  # the test outlier lies beyond the training range, as it would in production
            assert test_out[1].min() > 1.0

        # y is scaled too, as the seed recommends.
        y_reply = scaler_server.stub.FitTransform(
            scaler_pb2.FitTransformRequest(
                spec=spec(kind), train=codec.from_numpy(y_train), others={"test": codec.from_numpy(y_test)}
            )
        )
        np.testing.assert_allclose(
            codec.to_numpy(y_reply.others["test"]),
            sklearn_scaler(kind).fit(y_train).transform(y_test),
            rtol=1e-12,
        )
    # The seed's warning: outliers squash minmax's small rows together; robust keeps them apart.
    small = [train_rows.index(i) for i in range(10) if i in train_rows]
    assert np.ptp(results["minmax"][small, 0]) < 0.001
    assert np.ptp(results["robust"][small, 0]) > 0.1


def test_fit_transform_with_several_others_and_3d(scaler_server: ScalerServerHandle) -> None:
    train = random_data((40, 3, 2), seed=1)
    others = {"test": random_data((7, 3, 2), seed=2), "validation": random_data((5, 3, 2), seed=3)}
    reply = scaler_server.stub.FitTransform(
        scaler_pb2.FitTransformRequest(
            spec=spec("standard", "per_column"),
            train=codec.from_numpy(train),
            others={name: codec.from_numpy(data) for name, data in others.items()},
        )
    )
    reference, to_2d = sklearn_reference("standard", "per_column", train)
    assert set(reply.others) == set(others)
    for name, data in others.items():
        np.testing.assert_allclose(
            codec.to_numpy(reply.others[name]),
            reference.transform(to_2d(data)).reshape(data.shape),
            rtol=1e-12,
            atol=1e-12,
        )


def test_get_list_paging_and_delete(scaler_server: ScalerServerHandle) -> None:
    stub = scaler_server.stub
    data = random_data((10, 2))
    for scaler_id, count in (("a-scaler", 3), ("b-scaler", 2), ("c-scaler", 1)):
        for _ in range(count):
            fit(stub, data, "maxabs", scaler_id=scaler_id)
    assert stub.GetScaler(scaler_pb2.GetScalerRequest(scaler_id="a-scaler")).version == 3

    seen, token, pages = [], "", 0
    while True:
        page = stub.ListScalers(scaler_pb2.ListScalersRequest(page_size=4, page_token=token))
        seen += [(info.id, info.version) for info in page.scalers]
        pages += 1
        token = page.next_page_token
        if not token:
            break
    expected = [
        ("a-scaler", 1),
        ("a-scaler", 2),
        ("a-scaler", 3),
        ("b-scaler", 1),
        ("b-scaler", 2),
        ("c-scaler", 1),
    ]
    assert (seen, pages) == (expected, 2)
    only_b = stub.ListScalers(scaler_pb2.ListScalersRequest(scaler_id="b-scaler"))
    assert [(i.id, i.version) for i in only_b.scalers] == [("b-scaler", 1), ("b-scaler", 2)]
    assert not only_b.next_page_token
    assert not stub.ListScalers(scaler_pb2.ListScalersRequest(scaler_id="nobody")).scalers

    deleted = stub.DeleteScaler(scaler_pb2.DeleteScalerRequest(scaler_id="a-scaler", version=2))
    assert list(deleted.deleted_versions) == [2]
    assert stub.GetScaler(scaler_pb2.GetScalerRequest(scaler_id="a-scaler")).version == 3
    deleted = stub.DeleteScaler(scaler_pb2.DeleteScalerRequest(scaler_id="a-scaler"))
    assert list(deleted.deleted_versions) == [1, 3]
    remaining = stub.ListScalers(scaler_pb2.ListScalersRequest())
    assert [(i.id, i.version) for i in remaining.scalers] == [
        ("b-scaler", 1),
        ("b-scaler", 2),
        ("c-scaler", 1),
    ]
    # Numbers are never reused: a new fit after deleting everything is version 4.
    assert fit(stub, data, "maxabs", scaler_id="a-scaler").version == 4


def test_default_page_size_is_fifty(scaler_server: ScalerServerHandle) -> None:
    data = random_data((3, 1))
    for _ in range(51):
        fit(scaler_server.stub, data, "maxabs", scaler_id="many")
    first = scaler_server.stub.ListScalers(scaler_pb2.ListScalersRequest())
    assert len(first.scalers) == 50 and first.next_page_token
    rest = scaler_server.stub.ListScalers(scaler_pb2.ListScalersRequest(page_token=first.next_page_token))
    assert [i.version for i in rest.scalers] == [51] and not rest.next_page_token


def test_reflection_exposes_the_scaler_contract(scaler_server: ScalerServerHandle) -> None:
    """What grpcurl needs: the service listed and its messages resolvable through reflection."""
    from grpc_reflection.v1alpha.proto_reflection_descriptor_database import ProtoReflectionDescriptorDatabase

    database = ProtoReflectionDescriptorDatabase(scaler_server.channel)
    assert "lstm_stack.v1.ScalerService" in database.get_services()
    found = database.FindFileContainingSymbol("lstm_stack.v1.FitRequest")
    assert found.name == "protos/lstm_stack/v1/scaler.proto"
    assert "protos/lstm_stack/v1/tensor.proto" in found.dependency
