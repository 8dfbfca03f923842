"""REST routes of /api/policies (permission `manage:policy`)."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Query, Request
from starlette.responses import Response

from external_agents.channels.route_support import answer, gateway_for, json_body_schema, read_json_body
from external_agents.nodes.governance.policy_engine import EFFECTS

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


@router.post("", status_code=201, openapi_extra=json_body_schema(POLICY_SCHEMA))
async def create_policy(request: Request) -> Response:
    return await answer(gateway_for(request).create_policy(await read_json_body(request)), status_code=201)


@router.get("")
async def list_policies(request: Request, external_agent_id: str | None = Query(None, max_length=255)) -> Response:
    return await answer(gateway_for(request).list_policies(external_agent_id=external_agent_id))


@router.get("/{policy_id}")
async def get_policy(request: Request, policy_id: str) -> Response:
    return await answer(gateway_for(request).get_policy(policy_id))


@router.patch("/{policy_id}", openapi_extra=json_body_schema(POLICY_SCHEMA))
async def update_policy(request: Request, policy_id: str) -> Response:
    return await answer(gateway_for(request).update_policy(policy_id, await read_json_body(request)))


@router.delete("/{policy_id}", status_code=204)
async def delete_policy(request: Request, policy_id: str) -> Response:
    return await answer(gateway_for(request).delete_policy(policy_id), status_code=204)
