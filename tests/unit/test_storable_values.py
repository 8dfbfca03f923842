"""What the database can store of a platform's answer, and the text that stands in for what it cannot."""

from __future__ import annotations

from typing import Any

import pytest

from external_agents.storable_values import StorableOutput, json_text, storable_output, storable_text, unstorable_reason


def nested(depth: int) -> list[Any]:
    value: list[Any] = []
    for _ in range(depth - 1):
        value = [value]
    return value


@pytest.mark.parametrize(
    "value",
    [None, True, 0, -(10**4299), 1.5, 1e308, "zoë 😀", {"a": [1, {"b": None}]}, [], {}, nested(64)],
)
def test_storable_values_are_kept_as_they_are(value: Any) -> None:
    assert unstorable_reason(value) is None
    assert storable_output(value) == StorableOutput(value)


@pytest.mark.parametrize(
    ("value", "reason"),
    [
        ({"r": float("nan")}, "output.r: nan is not a JSON number"),
        ([1, float("-inf")], "output[1]: -inf is not a JSON number"),
        ({"r": "\ud800"}, "output.r: it contains a lone surrogate"),
        ({"r": "a\x00b"}, "output.r: it contains U+0000"),
        ({"k\x00": 1}, "output: a key that is not storable text"),
        ({"r": 10**4300}, "output.r: an integer of more than 4300 digits"),
        ({"r": b"bytes"}, "output.r: a bytes is not JSON"),
        (nested(65), "nested more than 64 levels deep"),
    ],
)
def test_unstorable_values_name_where(value: Any, reason: str) -> None:
    assert unstorable_reason(value) == reason


def test_an_unstorable_answer_becomes_the_platforms_text_with_a_note() -> None:
    assert storable_output({"r": float("nan")}, raw_text='{"r": NaN}') == StorableOutput(
        '{"r": NaN}', note="output kept as text, not storable as JSON: output.r: nan is not a JSON number"
    )
    # Without the platform's text, ASCII JSON text with escapes stands in.
    assert storable_output({"r": "\ud800"}).value == '{"r": "\\ud800"}'


def test_text_keeps_everything_but_nul_and_lone_surrogates() -> None:
    assert storable_text("zoë\x00\ud800 😀") == "zoë\ufffd\ufffd 😀"
    assert storable_output("a\x00") == StorableOutput(
        "a\ufffd", note="output text changed: output: it contains U+0000, replaced by U+FFFD"
    )


def test_a_long_reason_is_cut_to_a_line() -> None:
    note = storable_output({"k" * 10_000: float("nan")}).note

    assert note is not None and len(note) < 300


def test_json_text_of_an_integer_too_long_to_print() -> None:
    assert json_text(10**5000) == "<int not representable as JSON>"
