"""What every REST router needs: the app state, the authorised caller, and a JSON body read as sent."""

from __future__ import annotations

import json
from typing import Any

from fastapi import Request
from pydantic import BaseModel

from app_state import AppState
from channels.auth import caller_with
from errors import ValidationError


def state_of(request: Request) -> AppState:
    return request.app.state.external_agents


def caller_input(request: Request, permission: str) -> dict[str, str]:
    """The caller as workflows take it, after checking it holds `permission`."""
    caller = caller_with(request, permission)
    return {"api_key_id": caller.api_key_id, "organization_id": caller.organization_id}


def json_body_schema(model: type[BaseModel] | dict[str, Any], *, required: bool = True) -> dict[str, Any]:
    """OpenAPI for a JSON body that the route reads itself (so values are not coerced before validation)."""
    schema = model if isinstance(model, dict) else model.model_json_schema()
    return {"requestBody": {"required": required, "content": {"application/json": {"schema": schema}}}}


async def read_json_body(request: Request, *, required: bool = True) -> Any:
    raw = await request.body()
    if not raw.strip():
        if required:
            raise ValidationError("Request body is required (JSON)")
        return None
    try:
        return json.loads(raw)
    except json.JSONDecodeError as exc:
        raise ValidationError(f"Malformed JSON body: {exc.msg} at position {exc.pos}") from None
    except UnicodeDecodeError:
        raise ValidationError("Malformed JSON body: not UTF-8") from None
