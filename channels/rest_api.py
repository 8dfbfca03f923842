"""REST routes under /api: each translates a request into a workflow run and its result into a response."""

from __future__ import annotations

from importlib.metadata import version
from typing import Any

from fastapi import APIRouter, Query, Request
from starlette.responses import JSONResponse, Response

from external_agents.agent_fields import AgentCreate, AgentUpdate
from external_agents.channels.error_responses import request_id_of
from external_agents.channels.invocation_responses import invocation_response
from external_agents.channels.route_support import (
    answer,
    caller_input,
    gateway_for,
    json_body_schema,
    read_json_body,
    state_of,
)
from external_agents.errors import ValidationError
from external_agents.gateway.operations import run_invocation
from external_agents.identity import CONTEXT_HEADER, IDENTITY_HEADERS, decode_header_value
from external_agents.request_models import InvocationBody
from external_agents.stores.database import ping

router = APIRouter(prefix="/api")


@router.get("/version")
async def get_version() -> dict[str, str]:
    return {
        "name": "external-agents",
        "version": version("external-agents"),
        "kailash": version("kailash"),
        "kailash_dataflow": version("kailash-dataflow"),
        "kailash_nexus": version("kailash-nexus"),
    }


@router.get("/health")
async def get_health(request: Request) -> JSONResponse:
    state = state_of(request)
    services = {"database": "connected", "redis": "not_configured", "external_agents": "enabled"}
    healthy = True
    try:
        await ping(state.engine)
    except Exception:
        services["database"] = "disconnected"
        healthy = False
    if state.redis is not None:
        try:
            await state.redis.ping()
            services["redis"] = "connected"
        except Exception:
            services["redis"] = "disconnected"
            if not state.settings.external_agent_rate_limit_fail_open:
                healthy = False
    degraded = services["redis"] == "disconnected"
    status = "unhealthy" if not healthy else ("degraded" if degraded else "healthy")
    return JSONResponse({"status": status, "services": services}, status_code=200 if healthy else 503)


@router.post("/external-agents", status_code=201, openapi_extra=json_body_schema(AgentCreate))
async def create_agent(request: Request) -> Response:
    return await answer(gateway_for(request).create_agent(await read_json_body(request)), status_code=201)


@router.get("/external-agents")
async def list_agents(
    request: Request,
    page: int = Query(1, ge=1, le=1_000_000),
    limit: int = Query(20, ge=1, le=100),
    platform: str | None = Query(None, max_length=50),
    search: str | None = Query(None, max_length=255),
) -> Response:
    return await answer(gateway_for(request).list_agents(page=page, limit=limit, platform=platform, search=search))


@router.get("/external-agents/{agent_id}")
async def get_agent(request: Request, agent_id: str) -> Response:
    return await answer(gateway_for(request).get_agent(agent_id))


@router.get("/external-agents/{agent_id}/governance-status")
async def get_governance_status(request: Request, agent_id: str) -> Response:
    return await answer(gateway_for(request).governance_status(agent_id))


@router.patch("/external-agents/{agent_id}", openapi_extra=json_body_schema(AgentUpdate))
async def update_agent(request: Request, agent_id: str) -> Response:
    return await answer(gateway_for(request).update_agent(agent_id, await read_json_body(request)))


@router.delete("/external-agents/{agent_id}", status_code=204)
async def delete_agent(request: Request, agent_id: str) -> Response:
    return await answer(gateway_for(request).delete_agent(agent_id), status_code=204)


def utf8_header(request: Request, name: str) -> str | None:
    """The header's value decoded as UTF-8 (see identity.decode_header_value); a 400 naming it when it is not."""
    value = request.headers.get(name)
    if value is None:
        return None
    decoded = decode_header_value(value)
    if decoded is None:
        raise ValidationError(f"{name}: the header value is not valid UTF-8")
    return decoded


@router.post("/external-agents/{agent_id}/invoke", openapi_extra=json_body_schema(InvocationBody, required=False))
async def invoke_agent(request: Request, agent_id: str) -> JSONResponse:
    caller = caller_input(request, "invoke:external_agent")
    state = state_of(request)
    # A missing body is refused after the policy check (nodes/invocation.py), so a denying policy answers 403.
    body = await read_json_body(request, required=False)
    identity: dict[str, Any] = {h.field: utf8_header(request, h.header) for h in IDENTITY_HEADERS}
    identity["external_context"] = utf8_header(request, CONTEXT_HEADER)
    outcome = await run_invocation(state, caller=caller, agent_id=agent_id, identity=identity, body=body)
    # Unlike the other operations, the response carries the invocation's X-Kaizen-* and rate-limit headers.
    return invocation_response(outcome, request_id=request_id_of(request))


@router.get("/external-agents/{agent_id}/invocations")
async def list_agent_invocations(
    request: Request,
    agent_id: str,
    page: int = Query(1, ge=1, le=1_000_000),
    limit: int = Query(20, ge=1, le=100),
    status: str | None = Query(None, max_length=50),
    start_date: str | None = Query(None, max_length=64),
    end_date: str | None = Query(None, max_length=64),
) -> Response:
    operation = gateway_for(request).list_invocations(
        agent_id, page=page, limit=limit, status=status, start_date=start_date, end_date=end_date
    )
    return await answer(operation)
