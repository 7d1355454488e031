"""Page tokens round-trip or are refused (version numbers: tests/service_common/test_store.py)."""

from __future__ import annotations

import pytest

from service_common.errors import InvalidArgument
from service_common.versioning import decode_page_token, encode_page_token


def test_page_tokens_round_trip_and_foreign_tokens_are_refused() -> None:
    assert decode_page_token(encode_page_token("my/id", 12), "ListModels") == ("my/id", 12)
    with pytest.raises(InvalidArgument, match="next_page_token from ListScalers"):
        decode_page_token("not-a-token", "ListScalers")
