"""What error messages repeat of a caller's input stays short (gRPC's 8 KiB metadata soft limit)."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from service_common.errors import ECHO_LIMIT, MAX_MESSAGE_BYTES, InvalidArgument, NotFound, echo


def test_short_values_are_echoed_whole() -> None:
    assert echo("model-1") == "'model-1'"
    assert echo([2, 3, 1]) == "[2, 3, 1]"
    assert echo("FP32", quote=False) == "FP32"


def test_a_long_string_is_cut_and_says_how_long_it_was() -> None:
    text = echo("x" * 10_000)
    assert text == repr("x" * ECHO_LIMIT) + "…(10000 chars)"


def test_control_characters_stay_escaped_with_or_without_quotes() -> None:
    assert echo("id\n") == "'id\\n'"
    assert echo("id\r\n\x00", quote=False) == "id\\r\\n\\x00"


def test_a_long_sequence_is_cut_and_says_how_many_items_it_had() -> None:
    text = echo([1] * 300)
    assert text.startswith("[1, 1, ") and text.endswith("…(300 items)]")
    assert len(text) <= ECHO_LIMIT + 20


@settings(max_examples=200, deadline=None)
@given(
    st.one_of(
        st.text(max_size=5000),
        st.lists(st.integers(), max_size=2000),
        st.lists(st.text(max_size=300), max_size=50),
        st.binary(max_size=3000),
    )
)
def test_echo_is_bounded_whatever_it_is_given(value: object) -> None:
    # repr escapes grow a character to at most 10 (\U0001f600); the '…(N …)' suffix adds a few more.
    assert len(echo(value)) <= 10 * ECHO_LIMIT + 40


def test_service_errors_bound_the_whole_message_as_a_last_resort() -> None:
    error = NotFound("model " + "ü" * 20_000 + " not found")
    message = str(error)
    assert len(message.encode()) <= MAX_MESSAGE_BYTES
    assert message.startswith("model üü") and message.endswith("bytes)")
    assert str(InvalidArgument("fine")) == "fine"


@pytest.mark.parametrize("cls", [InvalidArgument, NotFound])
def test_short_messages_are_untouched(cls: type[Exception]) -> None:
    assert str(cls("x has shape [2, 4, 1]; the model expects (batch, 3, 1)")).endswith("(batch, 3, 1)")
