"""REST routes under /api/lineage: each runs a lineage workflow and turns its result into a response.

Static paths (`/graph`, `/export`, `/user/{email}`) are declared before `/{invocation_id}`, which would
otherwise take them for invocation ids. An export's workflow validates and prepares it; its rows are then
streamed straight from the database in batches, so an export of any size holds one batch in memory.
"""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Query, Request
from starlette.responses import Response, StreamingResponse

from external_agents.channels.route_support import answer, gateway_for
from external_agents.lineage_filters import GraphSelectors, LineageFilterParams
from external_agents.nodes.lineage import DEFAULT_DEPTH, DEFAULT_PAGE_SIZE, MAX_DEPTH, MAX_PAGE, MAX_PAGE_SIZE

router = APIRouter(prefix="/api/lineage", tags=["lineage"])


@router.get("")
async def list_lineage(
    request: Request,
    filters: Annotated[LineageFilterParams, Query()],
    page: int = Query(1, ge=1, le=MAX_PAGE),
    limit: int = Query(DEFAULT_PAGE_SIZE, ge=1, le=MAX_PAGE_SIZE),
) -> Response:
    return await answer(gateway_for(request).list_lineage(filters=filters.model_dump(), page=page, limit=limit))


@router.get("/graph")
async def lineage_graph(
    request: Request,
    selectors: Annotated[GraphSelectors, Query()],
    depth: int = Query(DEFAULT_DEPTH, ge=0, le=MAX_DEPTH, description="hops from the selection"),
) -> Response:
    return await answer(gateway_for(request).lineage_graph(selectors=selectors.model_dump(), depth=depth))


@router.get("/export")
async def export_lineage(
    request: Request,
    filters: Annotated[LineageFilterParams, Query()],
    format: str = Query("json", description="json, csv or openlineage (newline-delimited RunEvents)"),
) -> StreamingResponse:
    export = await gateway_for(request).export_lineage(filters=filters.model_dump(), export_format=format)
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
