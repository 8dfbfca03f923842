"""REST routes under /api: each translates a request into a workflow run and its result into a response."""

from __future__ import annotations

import json
from importlib.metadata import version
from typing import Any

from fastapi import APIRouter, Query, Request
from pydantic import BaseModel
from starlette.responses import JSONResponse, Response

from app_state import AppState
from channels.auth import caller_with
from errors import ValidationError
from request_models import AgentCreate, AgentUpdate
from stores.database import ping

router = APIRouter(prefix="/api")


def _state(request: Request) -> AppState:
    return request.app.state.external_agents


def _caller_input(request: Request, permission: str) -> dict[str, str]:
    caller = caller_with(request, permission)
    return {"api_key_id": caller.api_key_id, "organization_id": caller.organization_id}


def _body_schema(model: type[BaseModel]) -> dict[str, Any]:
    """OpenAPI for a JSON body that the route reads itself (so values are not coerced before validation)."""
    return {"requestBody": {"required": True, "content": {"application/json": {"schema": model.model_json_schema()}}}}


async def _json_body(request: Request) -> Any:
    raw = await request.body()
    if not raw:
        raise ValidationError("Request body is required (JSON)")
    try:
        return json.loads(raw)
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise ValidationError(f"Malformed JSON body: {exc.msg if hasattr(exc, 'msg') else 'not UTF-8'}") from None


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
    state = _state(request)
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


@router.post("/external-agents", status_code=201, openapi_extra=_body_schema(AgentCreate))
async def create_agent(request: Request) -> JSONResponse:
    caller = _caller_input(request, "create:external_agent")
    state = _state(request)
    body = await _json_body(request)
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
    caller = _caller_input(request, "read:external_agent")
    state = _state(request)
    inputs = {"caller": caller, "page": page, "limit": limit, "platform": platform, "search": search}
    results = await state.runner.run(state.registry.list, {"list_agents": inputs})
    return JSONResponse(results["list_agents"]["page_of_agents"])


@router.get("/external-agents/{agent_id}")
async def get_agent(request: Request, agent_id: str) -> JSONResponse:
    caller = _caller_input(request, "read:external_agent")
    state = _state(request)
    results = await state.runner.run(state.registry.get, {"get_agent": {"caller": caller, "agent_id": agent_id}})
    return JSONResponse(results["get_agent"]["agent"])


@router.patch("/external-agents/{agent_id}", openapi_extra=_body_schema(AgentUpdate))
async def update_agent(request: Request, agent_id: str) -> JSONResponse:
    caller = _caller_input(request, "update:external_agent")
    state = _state(request)
    body = await _json_body(request)
    inputs = {"caller": caller, "agent_id": agent_id, "body": body}
    results = await state.runner.run(state.registry.update, {"update_agent": inputs})
    return JSONResponse(results["update_agent"]["agent"])


@router.delete("/external-agents/{agent_id}", status_code=204)
async def delete_agent(request: Request, agent_id: str) -> Response:
    caller = _caller_input(request, "delete:external_agent")
    state = _state(request)
    await state.runner.run(state.registry.delete, {"delete_agent": {"caller": caller, "agent_id": agent_id}})
    return Response(status_code=204)
