"""What the database can store of a value a platform sent, and the stand-in for what it cannot.

A platform's answer becomes the invocation's output, in the caller's response and in a lineage row. Python's
JSON reader accepts things PostgreSQL's jsonb, SQLite's JSON text read back by our strict loader, or the
caller's JSON parser do not: NaN, Infinity (also `1e400`, which overflows to it), lone surrogates (`"\\ud800"`,
not UTF-8), U+0000 (PostgreSQL's text and jsonb refuse it), integers past 4,300 digits, nesting past
MAX_JSON_DEPTH. One such value used to lose the whole record while the platform had the call. Now the answer
is checked here before anything stores it; when it is not storable as JSON it is kept as text (the platform's
own text where an adapter has it), and the record's note says why. Text is made storable by replacing NUL
and lone surrogates with U+FFFD.
"""

from __future__ import annotations

import json
import math
import re
from dataclasses import dataclass
from typing import Any

from external_agents.request_models import MAX_JSON_DEPTH

REPLACEMENT = "\ufffd"
# Python refuses to read (and to print) longer integers, so a stored one could never be read back.
MAX_INTEGER_DIGITS = 4300
_INTEGER_LIMIT = 10**MAX_INTEGER_DIGITS
MAX_REASON_LENGTH = 200
_UNSTORABLE_CHARACTERS = re.compile("[\x00\ud800-\udfff]")


@dataclass(frozen=True, slots=True)
class StorableOutput:
    """The output as it will be stored and answered, and why it differs from what the platform sent (if it does)."""

    value: Any
    note: str | None = None


def _text_problem(text: str) -> str | None:
    if "\x00" in text:
        return "it contains U+0000"
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return "it contains a lone surrogate"
    return None


def unstorable_reason(value: Any) -> str | None:
    """Why `value` cannot be stored as JSON, naming where in it; None when it can."""
    level: list[tuple[str, Any]] = [("output", value)]
    for _depth in range(MAX_JSON_DEPTH + 1):
        if not level:
            return None
        deeper: list[tuple[str, Any]] = []
        for path, item in level:
            if isinstance(item, str):
                problem = _text_problem(item)
                if problem:
                    return f"{path}: {problem}"
            elif isinstance(item, bool) or item is None:
                continue
            elif isinstance(item, int):
                if not -_INTEGER_LIMIT < item < _INTEGER_LIMIT:
                    return f"{path}: an integer of more than {MAX_INTEGER_DIGITS} digits"
            elif isinstance(item, float):
                if not math.isfinite(item):
                    return f"{path}: {item} is not a JSON number"
            elif isinstance(item, dict):
                for key, child in item.items():
                    if not isinstance(key, str) or _text_problem(key):
                        return f"{path}: a key that is not storable text"
                    deeper.append((f"{path}.{key}", child))
            elif isinstance(item, list | tuple):
                deeper.extend((f"{path}[{index}]", child) for index, child in enumerate(item))
            else:
                return f"{path}: a {type(item).__name__} is not JSON"
        level = deeper
    return f"nested more than {MAX_JSON_DEPTH} levels deep"


def storable_text(text: str) -> str:
    """`text` with NUL and lone surrogates replaced by U+FFFD; everything else kept exactly."""
    return _UNSTORABLE_CHARACTERS.sub(REPLACEMENT, text)


def storable_output(value: Any, *, raw_text: str | None = None) -> StorableOutput:
    """`value` when it can be stored as JSON; else the answer as text (`raw_text`, the platform's own, when given)."""
    reason = unstorable_reason(value)
    if reason is None:
        return StorableOutput(value)
    # The path names the platform's keys, which may be long: the note stays a line.
    reason = reason if len(reason) <= MAX_REASON_LENGTH else f"{reason[:MAX_REASON_LENGTH]}..."
    if isinstance(value, str):
        return StorableOutput(storable_text(value), note=f"output text changed: {reason}, replaced by U+FFFD")
    text = raw_text if raw_text is not None else json_text(value)
    return StorableOutput(storable_text(text), note=f"output kept as text, not storable as JSON: {reason}")


def json_text(value: Any) -> str:
    """`value` as JSON text that any database stores: ASCII, NaN and lone surrogates written as escapes."""
    try:
        # ASCII escapes keep lone surrogates and NUL readable as the platform sent them.
        return json.dumps(value, ensure_ascii=True, default=repr)
    except (ValueError, RecursionError):
        return f"<{type(value).__name__} not representable as JSON>"
