"""What both registries share: pages and their tokens, refused versions, deletes (version numbers:
tests/service_common/test_store.py)."""

from __future__ import annotations

from pathlib import Path

import pytest

from service_common.artifacts import ArtifactStore
from service_common.errors import InvalidArgument, NotFound
from service_common.versioning import (
    DEFAULT_PAGE_SIZE,
    MAX_PAGE_SIZE,
    Page,
    RefusedVersions,
    decode_page_token,
    delete_versions,
    encode_page_token,
    no_such_version,
)


def test_page_tokens_round_trip_and_foreign_tokens_are_refused() -> None:
    assert decode_page_token(encode_page_token("my/id", 12), "ListModels") == ("my/id", 12)
    with pytest.raises(InvalidArgument, match="next_page_token from ListScalers"):
        decode_page_token("not-a-token", "ListScalers")


def test_a_page_takes_the_keys_after_its_token_and_names_the_next_one() -> None:
    keys = [("a", 1), ("a", 2), ("b", 1), ("c", 4)]
    first, token = Page.of(2, "", "ListModels").take(keys)
    assert first == [("a", 1), ("a", 2)] and token
    second, token = Page.of(2, token, "ListModels").take(keys)
    assert second == [("b", 1), ("c", 4)] and token == ""
    assert Page.of(0, "", "ListModels").size == DEFAULT_PAGE_SIZE
    assert Page.of(10**6, "", "ListModels").size == MAX_PAGE_SIZE
    with pytest.raises(InvalidArgument, match=r"page_size must be >= 0 \(0 means 50\), got -1"):
        Page.of(-1, "", "ListScalers")


def test_a_refused_version_stays_refused_until_it_is_no_longer_stored(
    caplog: pytest.LogCaptureFixture,
) -> None:
    refused = RefusedVersions("scaler")

    def bad() -> int:
        raise ValueError("signature mismatch")

    def gone() -> int:
        raise FileNotFoundError("deleted meanwhile")

    assert refused.attempt(("a", 1), "store/a/1", lambda: 7) == 7 and ("a", 1) not in refused
    assert refused.attempt(("a", 2), "store/a/2", bad) is None
    assert refused.attempt(("b", 1), "store/b/1", gone) is None
    assert ("a", 2) in refused and ("b", 1) in refused
    assert [r.getMessage() for r in caplog.records] == [
        "skipping scaler artifact store/a/2: signature mismatch"
    ]  # a version deleted while we looked is not an error
    refused.keep_stored({("a", 2)}, only="a")  # looking at "a" only: "b" is kept
    assert ("a", 2) in refused and ("b", 1) in refused
    refused.keep_stored(set(), only=None)
    assert len(refused) == 0


def test_deleting_versions_reports_what_went_and_refuses_when_nothing_did(tmp_path: Path) -> None:
    store = ArtifactStore(tmp_path, b"test-signing-key-0123456789")
    for _ in range(2):
        reservation = store.allocate("x")
        store.commit(reservation, {"f": b"1"})
        reservation.release()
    synced: list[str] = []
    assert delete_versions(store, "scaler", "x", [1, 2], synced.append) == [1, 2]
    assert synced == ["x"]
    with pytest.raises(NotFound, match="scaler 'x' version 1, 2 not found"):
        delete_versions(store, "scaler", "x", [1, 2], synced.append)
    reservation = store.allocate("x")
    assert reservation.version == 3  # the high-water mark: numbers are never reused
    reservation.release()


def test_no_such_version_lists_the_versions_the_id_has() -> None:
    assert str(no_such_version("model", "m", 4, [3, 1])) == "model 'm' has no version 4; it has versions 1, 3"
