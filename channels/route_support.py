"""What every REST router needs: the app state, the authorised caller, a JSON body read as sent, and the
gateway that runs each operation exactly as MCP and the command line run it."""

from __future__ import annotations

import json
from collections.abc import Awaitable
from typing import Any

from fastapi import Request
from pydantic import BaseModel
from starlette.responses import JSONResponse, Response

from external_agents.app_state import AppState
from external_agents.channels.auth import caller_with
from external_agents.channels.error_responses import request_id_of
from external_agents.errors import ValidationError
from external_agents.gateway.operations import LocalGateway
from external_agents.request_models import load_json


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
        return load_json(raw)
    except json.JSONDecodeError as exc:
        raise ValidationError(f"Malformed JSON body: {exc.msg} at position {exc.pos}") from None
    except UnicodeDecodeError:
        raise ValidationError("Malformed JSON body: not UTF-8") from None
    except ValidationError as exc:
        raise ValidationError(f"Malformed JSON body: {exc.detail}") from None


def gateway_for(request: Request) -> LocalGateway:
    """The operations as the authenticated caller of this request (permissions are checked per operation)."""
    return LocalGateway(state_of(request), request.state.caller, request_id=request_id_of(request))


async def answer(operation: Awaitable[Any], *, status_code: int = 200) -> Response:
    """The operation's JSON; an error it raises is answered by the app's error handlers (channels/error_responses)."""
    result = await operation
    if result is None:
        return Response(status_code=status_code)
    return JSONResponse(result, status_code=status_code)
