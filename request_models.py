"""Shapes of the requests every channel accepts (REST bodies, MCP tool arguments, CLI options); the agent's
fields are declared in agent_fields.py.

Validated here once, so a bad value gets the same 400 and the same message whichever channel sent it.
"""

from __future__ import annotations

import json
import math
from typing import Any, TypeVar

from pydantic import BaseModel, ConfigDict
from pydantic import ValidationError as PydanticValidationError

from external_agents.errors import ValidationError

ModelT = TypeVar("ModelT", bound=BaseModel)


def _field_path(loc: tuple[Any, ...]) -> str:
    path = ""
    for part in loc:
        path += f"[{part}]" if isinstance(part, int) else (f".{part}" if path else str(part))
    return path or "body"


def describe_validation_error(exc: PydanticValidationError) -> str:
    """'field: message' for the first few errors, one line."""
    parts = []
    for error in exc.errors()[:3]:
        message = str(error.get("msg", "invalid value")).removeprefix("Value error, ")
        if error.get("type") == "extra_forbidden":
            message = "unknown field"
        parts.append(f"{_field_path(tuple(error.get('loc', ())))}: {message}")
    return "; ".join(parts)


def parse(model: type[ModelT], data: Any) -> ModelT:
    """Validate `data` as `model`, raising our ValidationError naming the field."""
    if not isinstance(data, dict):
        raise ValidationError("Request body must be a JSON object")
    try:
        return model.model_validate(data)
    except PydanticValidationError as exc:
        raise ValidationError(describe_validation_error(exc)) from None


MAX_JSON_DEPTH = 64


def _no_constant(name: str) -> Any:
    raise ValidationError(f"{name} is not valid JSON (numbers must be finite)")


def _finite_float(text: str) -> float:
    number = float(text)
    if math.isinf(number):
        raise ValidationError(f"the number {text[:40]} is out of range (numbers must be finite)")
    return number


def _depth(value: Any) -> int:
    depth, level = 0, [value]
    while level:
        depth += 1
        if depth > MAX_JSON_DEPTH:
            break
        level = [
            item
            for container in level
            if isinstance(container, dict | list)
            for item in (container.values() if isinstance(container, dict) else container)
        ]
    return depth


def load_json(text: str | bytes) -> Any:
    """Strict JSON: no NaN or Infinity (PostgreSQL's jsonb and other JSON readers refuse them), integers of at most
    4,300 digits, nesting at most MAX_JSON_DEPTH deep. Raises ValidationError (or json.JSONDecodeError)."""
    try:
        value = json.loads(text, parse_constant=_no_constant, parse_float=_finite_float)
    except RecursionError:
        raise ValidationError(f"JSON nested more than {MAX_JSON_DEPTH} levels deep") from None
    except json.JSONDecodeError:
        raise
    except ValueError:  # Python's limit on the digits of an integer
        raise ValidationError("a JSON number has more than 4300 digits") from None
    if _depth(value) > MAX_JSON_DEPTH:
        raise ValidationError(f"JSON nested more than {MAX_JSON_DEPTH} levels deep")
    return value


def reject_unstorable(value: Any, path: str = "body") -> None:
    """Text a database cannot store: U+0000 (PostgreSQL's text and jsonb refuse it) and lone surrogates (not
    UTF-8). Refused up front with the field's path, rather than failing on write."""
    if isinstance(value, str):
        if "\x00" in value:
            raise ValidationError(f"{path}: the NUL character (U+0000) is not allowed")
        try:
            value.encode("utf-8")
        except UnicodeEncodeError:
            raise ValidationError(f"{path}: lone surrogate characters are not valid Unicode text") from None
    elif isinstance(value, dict):
        for key, item in value.items():
            reject_unstorable(key, path)
            reject_unstorable(item, f"{path}.{key}")
    elif isinstance(value, list):
        for index, item in enumerate(value):
            reject_unstorable(item, f"{path}[{index}]")


class InvocationBody(BaseModel):
    model_config = ConfigDict(extra="forbid")

    input: Any
    context: dict[str, Any] | None = None
    metadata: dict[str, Any] | None = None
