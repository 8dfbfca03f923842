"""REST routes of /api/policies (permission `manage:policy`)."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Query, Request
from starlette.responses import JSONResponse, Response

from channels.route_support import caller_input, json_body_schema, read_json_body, state_of
from nodes.governance.policy_engine import EFFECTS

router = APIRouter(prefix="/api/policies")

POLICY_SCHEMA: dict[str, Any] = {
    "type": "object",
    "required": ["name", "effect"],
    "properties": {
        "name": {"type": "string"},
        "description": {"type": ["string", "null"]},
        "effect": {"enum": list(EFFECTS)},
        "priority": {"type": "integer"},
        "enabled": {"type": "boolean"},
        "external_agent_id": {"type": ["string", "null"]},
        "conditions": {"type": "array", "items": {"type": "object"}},
    },
}


async def _run(request: Request, operation: str, node_inputs: dict[str, Any]) -> dict[str, Any]:
    caller = caller_input(request, "manage:policy")
    state = state_of(request)
    workflow = getattr(state.policies, operation)
    results = await state.runner.run(workflow, {"policy": {"caller": caller, **node_inputs}})
    return results["policy"]


@router.post("", status_code=201, openapi_extra=json_body_schema(POLICY_SCHEMA))
async def create_policy(request: Request) -> JSONResponse:
    result = await _run(request, "create", {"body": await read_json_body(request)})
    return JSONResponse(result["policy"], status_code=201)


@router.get("")
async def list_policies(request: Request, external_agent_id: str | None = Query(None, max_length=255)) -> JSONResponse:
    result = await _run(request, "list", {"external_agent_id": external_agent_id})
    return JSONResponse(result["policies"])


@router.get("/{policy_id}")
async def get_policy(request: Request, policy_id: str) -> JSONResponse:
    return JSONResponse((await _run(request, "get", {"policy_id": policy_id}))["policy"])


@router.patch("/{policy_id}", openapi_extra=json_body_schema(POLICY_SCHEMA))
async def update_policy(request: Request, policy_id: str) -> JSONResponse:
    result = await _run(request, "update", {"policy_id": policy_id, "body": await read_json_body(request)})
    return JSONResponse(result["policy"])


@router.delete("/{policy_id}", status_code=204)
async def delete_policy(request: Request, policy_id: str) -> Response:
    await _run(request, "delete", {"policy_id": policy_id})
    return Response(status_code=204)
