"""REST routes under /api/lineage: each runs a lineage workflow and turns its result into a response.

Static paths (`/graph`, `/export`, `/user/{email}`) are declared before `/{invocation_id}`, which would
otherwise take them for invocation ids. An export's workflow validates and prepares it; its rows are then
streamed straight from the database in batches, so an export of any size holds one batch in memory.
"""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Query, Request
from starlette.responses import Response, StreamingResponse

from external_agents.channels.route_support import answer, gateway_for
from external_agents.nodes.lineage import DEFAULT_DEPTH, DEFAULT_PAGE_SIZE, MAX_DEPTH, MAX_PAGE, MAX_PAGE_SIZE

router = APIRouter(prefix="/api/lineage", tags=["lineage"])


def _filters(
    *,
    external_user_email: str | None,
    external_agent_id: str | None,
    status: str | None,
    external_system: str | None,
    session_id: str | None,
    start_date: str | None,
    end_date: str | None,
) -> dict[str, Any]:
    return {
        "external_user_email": external_user_email,
        "external_agent_id": external_agent_id,
        "status": status,
        "external_system": external_system,
        "session_id": session_id,
        "start_date": start_date,
        "end_date": end_date,
    }


DATE_HELP = "ISO 8601 with a time zone, e.g. 2025-01-31T00:00:00Z"


@router.get("")
async def list_lineage(
    request: Request,
    external_user_email: str | None = None,
    external_agent_id: str | None = None,
    status: str | None = Query(None, description="pending, success, failure, timeout or denied"),
    external_system: str | None = None,
    session_id: str | None = None,
    start_date: str | None = Query(None, description=f"from this time, inclusive; {DATE_HELP}"),
    end_date: str | None = Query(None, description=f"until this time, exclusive; {DATE_HELP}"),
    page: int = Query(1, ge=1, le=MAX_PAGE),
    limit: int = Query(DEFAULT_PAGE_SIZE, ge=1, le=MAX_PAGE_SIZE),
) -> Response:
    filters = _filters(
        external_user_email=external_user_email,
        external_agent_id=external_agent_id,
        status=status,
        external_system=external_system,
        session_id=session_id,
        start_date=start_date,
        end_date=end_date,
    )
    return await answer(gateway_for(request).list_lineage(filters=filters, page=page, limit=limit))


@router.get("/graph")
async def lineage_graph(
    request: Request,
    session_id: str | None = None,
    trace_id: str | None = None,
    invocation_id: str | None = None,
    workflow_id: str | None = None,
    depth: int = Query(DEFAULT_DEPTH, ge=0, le=MAX_DEPTH, description="hops from the selection"),
) -> Response:
    selectors = {
        "session_id": session_id,
        "trace_id": trace_id,
        "invocation_id": invocation_id,
        "workflow_id": workflow_id,
    }
    return await answer(gateway_for(request).lineage_graph(selectors=selectors, depth=depth))


@router.get("/export")
async def export_lineage(
    request: Request,
    format: str = Query("json", description="json, csv or openlineage (newline-delimited RunEvents)"),
    external_user_email: str | None = None,
    external_agent_id: str | None = None,
    status: str | None = None,
    external_system: str | None = None,
    session_id: str | None = None,
    start_date: str | None = Query(None, description=DATE_HELP),
    end_date: str | None = Query(None, description=DATE_HELP),
) -> StreamingResponse:
    filters = _filters(
        external_user_email=external_user_email,
        external_agent_id=external_agent_id,
        status=status,
        external_system=external_system,
        session_id=session_id,
        start_date=start_date,
        end_date=end_date,
    )
    export = await gateway_for(request).export_lineage(filters=filters, export_format=format)
    return StreamingResponse(
        export.chunks,
        media_type=export.media_type,
        headers={"Content-Disposition": f'attachment; filename="{export.filename}"'},
    )


@router.get("/user/{email:path}")
async def user_lineage(
    request: Request,
    email: str,
    page: int = Query(1, ge=1, le=MAX_PAGE),
    limit: int = Query(MAX_PAGE_SIZE, ge=1, le=MAX_PAGE_SIZE),
) -> Response:
    return await answer(gateway_for(request).user_lineage(email, page=page, limit=limit))


@router.delete("/user/{email:path}")
async def erase_user_lineage(request: Request, email: str) -> Response:
    return await answer(gateway_for(request).erase_user_lineage(email))


@router.get("/{invocation_id}")
async def get_lineage(request: Request, invocation_id: str) -> Response:
    return await answer(gateway_for(request).get_invocation(invocation_id))
