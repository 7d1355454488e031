"""Version numbers are never reused (across restarts too) and page tokens round-trip or are refused."""

from __future__ import annotations

from pathlib import Path

import pytest

from service_common.errors import InvalidArgument
from service_common.versioning import (
    HIGH_WATER_FILE,
    VersionCounter,
    decode_page_token,
    encode_page_token,
)


def test_numbers_grow_per_id_and_survive_a_restart_after_save(tmp_path: Path) -> None:
    counter = VersionCounter(tmp_path)
    assert [counter.next("a"), counter.next("a"), counter.next("b")] == [1, 2, 1]
    counter.save()
    reloaded = VersionCounter(tmp_path)
    assert reloaded.next("a") == 3 and reloaded.next("b") == 2


def test_observe_only_raises_the_mark(tmp_path: Path) -> None:
    counter = VersionCounter(tmp_path)
    counter.observe("a", 7)
    counter.observe("a", 3)
    assert counter.next("a") == 8


def test_an_unreadable_file_is_ignored_and_replaced_on_save(tmp_path: Path) -> None:
    (tmp_path / HIGH_WATER_FILE).write_text("{not json")
    counter = VersionCounter(tmp_path)
    assert counter.next("a") == 1
    counter.save()
    assert VersionCounter(tmp_path).next("a") == 2
    assert [p.name for p in tmp_path.iterdir()] == [HIGH_WATER_FILE]  # no temp file left behind


def test_new_ids_are_fresh(tmp_path: Path) -> None:
    counter = VersionCounter(tmp_path)
    first = counter.new_id("model")
    counter.next(first)
    assert first.startswith("model-") and counter.new_id("model") != first


def test_page_tokens_round_trip_and_foreign_tokens_are_refused() -> None:
    assert decode_page_token(encode_page_token("my/id", 12), "ListModels") == ("my/id", 12)
    with pytest.raises(InvalidArgument, match="next_page_token from ListScalers"):
        decode_page_token("not-a-token", "ListScalers")
