"""request_models.py's JSON guards: what `load_json` refuses to parse and `reject_unstorable` refuses to store.

The channels' 400s for these are covered end to end in tests/integration/test_bad_input.py; here the functions
themselves, with the exact field paths and limits they report.
"""

from __future__ import annotations

import json

import pytest

from external_agents.errors import ValidationError
from external_agents.request_models import MAX_JSON_DEPTH, load_json, reject_unstorable


def nested(depth: int) -> str:
    return "[" * (depth - 1) + "1" + "]" * (depth - 1)


def test_load_json_keeps_ordinary_values_exactly() -> None:
    text = '{"a": [1, 2.5, "DELETE FROM x; ${id}", null, true], "big": ' + "9" * 4300 + "}"

    value = load_json(text.encode())

    assert value["a"] == [1, 2.5, "DELETE FROM x; ${id}", None, True]
    assert value["big"] == int("9" * 4300)


@pytest.mark.parametrize("constant", ["NaN", "Infinity", "-Infinity"])
def test_load_json_refuses_non_finite_constants(constant: str) -> None:
    with pytest.raises(ValidationError, match=f"{constant} is not valid JSON"):
        load_json(f'{{"x": {constant}}}')


def test_load_json_refuses_numbers_that_overflow_to_infinity() -> None:
    with pytest.raises(ValidationError, match="out of range"):
        load_json('{"x": 1e999}')


def test_load_json_refuses_integers_longer_than_python_reads() -> None:
    with pytest.raises(ValidationError, match="more than 4300 digits"):
        load_json("9" * 4301)


def test_load_json_allows_the_maximum_depth_and_refuses_one_more() -> None:
    assert load_json(nested(MAX_JSON_DEPTH)) is not None
    with pytest.raises(ValidationError, match=f"nested more than {MAX_JSON_DEPTH} levels"):
        load_json(nested(MAX_JSON_DEPTH + 1))


def test_load_json_turns_runaway_nesting_into_a_validation_error() -> None:
    with pytest.raises(ValidationError, match="nested more than"):
        load_json(nested(100_000))


def test_load_json_leaves_malformed_text_to_the_decoder_error() -> None:
    with pytest.raises(json.JSONDecodeError):
        load_json('{"x": ')


@pytest.mark.parametrize(
    ("value", "path"),
    [
        ("a\x00b", "body"),
        ({"input": {"q": ["fine", "bad\x00"]}}, "body.input.q[1]"),
        ({"context": {"k": "\ud800"}}, "body.context.k"),
        ({"bad\x00key": 1}, "body"),
    ],
)
def test_reject_unstorable_names_the_field(value: object, path: str) -> None:
    with pytest.raises(ValidationError) as caught:
        reject_unstorable(value)

    assert caught.value.detail.startswith(f"{path}: ")


def test_reject_unstorable_says_which_character_is_wrong() -> None:
    with pytest.raises(ValidationError, match="NUL character"):
        reject_unstorable("\x00", "input")
    with pytest.raises(ValidationError, match="lone surrogate"):
        reject_unstorable("\udfff", "input")


def test_reject_unstorable_accepts_any_storable_value() -> None:
    reject_unstorable({"text": "Ünïcödé 😀 中文", "n": [1, 2.5, None, True], "nested": {"empty": {}}})
