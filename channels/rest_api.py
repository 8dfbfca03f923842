"""REST routes under /api: each translates a request into a workflow run and its result into a response."""

from __future__ import annotations

from importlib.metadata import version
from typing import Any

from fastapi import APIRouter, Query, Request
from starlette.responses import JSONResponse, Response

from channels.error_responses import request_id_of
from channels.invocation_responses import invocation_response
from channels.invocations import run_invocation
from channels.route_support import caller_input, json_body_schema, read_json_body, state_of
from nodes.invocation import CONTEXT_HEADER, OPTIONAL_IDENTITY, REQUIRED_IDENTITY
from request_models import AgentCreate, AgentUpdate, InvocationBody
from stores.database import ping
from workflows.lineage import LIST_NODE

router = APIRouter(prefix="/api")

IDENTITY_HEADERS = (*REQUIRED_IDENTITY, *OPTIONAL_IDENTITY)


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
async def create_agent(request: Request) -> JSONResponse:
    caller = caller_input(request, "create:external_agent")
    state = state_of(request)
    body = await read_json_body(request)
    results = await state.runner.run(state.registry.create, {"create_agent": {"caller": caller, "body": body}})
    return JSONResponse(results["create_agent"]["agent"], status_code=201)


@router.get("/external-agents")
async def list_agents(
    request: Request,
    page: int = Query(1, ge=1, le=1_000_000),
    limit: int = Query(20, ge=1, le=100),
    platform: str | None = Query(None, max_length=50),
    search: str | None = Query(None, max_length=255),
) -> JSONResponse:
    caller = caller_input(request, "read:external_agent")
    state = state_of(request)
    inputs = {"caller": caller, "page": page, "limit": limit, "platform": platform, "search": search}
    results = await state.runner.run(state.registry.list, {"list_agents": inputs})
    return JSONResponse(results["list_agents"]["page_of_agents"])


@router.get("/external-agents/{agent_id}")
async def get_agent(request: Request, agent_id: str) -> JSONResponse:
    caller = caller_input(request, "read:external_agent")
    state = state_of(request)
    results = await state.runner.run(state.registry.get, {"get_agent": {"caller": caller, "agent_id": agent_id}})
    return JSONResponse(results["governance"]["agent"])


@router.get("/external-agents/{agent_id}/governance-status")
async def get_governance_status(request: Request, agent_id: str) -> JSONResponse:
    caller = caller_input(request, "read:external_agent")
    state = state_of(request)
    inputs = {"get_agent": {"caller": caller, "agent_id": agent_id}}
    results = await state.runner.run(state.governance_status, inputs)
    return JSONResponse(results["status"]["governance_status"])


@router.patch("/external-agents/{agent_id}", openapi_extra=json_body_schema(AgentUpdate))
async def update_agent(request: Request, agent_id: str) -> JSONResponse:
    caller = caller_input(request, "update:external_agent")
    state = state_of(request)
    body = await read_json_body(request)
    inputs = {"caller": caller, "agent_id": agent_id, "body": body}
    results = await state.runner.run(state.registry.update, {"update_agent": inputs})
    return JSONResponse(results["update_agent"]["agent"])


@router.delete("/external-agents/{agent_id}", status_code=204)
async def delete_agent(request: Request, agent_id: str) -> Response:
    caller = caller_input(request, "delete:external_agent")
    state = state_of(request)
    await state.runner.run(state.registry.delete, {"delete_agent": {"caller": caller, "agent_id": agent_id}})
    return Response(status_code=204)


@router.post("/external-agents/{agent_id}/invoke", openapi_extra=json_body_schema(InvocationBody, required=False))
async def invoke_agent(request: Request, agent_id: str) -> JSONResponse:
    caller = caller_input(request, "invoke:external_agent")
    state = state_of(request)
    # A missing body is refused after the policy check (nodes/invocation.py), so a denying policy answers 403.
    body = await read_json_body(request, required=False)
    identity: dict[str, Any] = {field: request.headers.get(header) for field, header in IDENTITY_HEADERS}
    identity["external_context"] = request.headers.get(CONTEXT_HEADER)
    outcome = await run_invocation(state, caller=caller, agent_id=agent_id, identity=identity, body=body)
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
) -> JSONResponse:
    caller = caller_input(request, "read:external_agent")
    state = state_of(request)
    # Another organisation's agent is a 404, not an empty page.
    await state.runner.run(state.registry.get, {"get_agent": {"caller": caller, "agent_id": agent_id}})
    filters = {"external_agent_id": agent_id, "status": status, "start_date": start_date, "end_date": end_date}
    inputs = {
        "caller": caller,
        "filters": {k: v for k, v in filters.items() if v is not None},
        "page": page,
        "limit": limit,
    }
    results = await state.runner.run(state.lineage.list, {LIST_NODE: inputs})
    return JSONResponse(results[LIST_NODE]["page_of_lineage"])
