"""`GET /metrics`: the gateway's Prometheus series (gateway.metrics) for the caller's organisation.

The route needs a bearer key with `read:metrics` (or `admin`); the auth middleware already answers 401 without
one. `redis_up` is refreshed by a ping on each scrape.
"""

from __future__ import annotations

from fastapi import APIRouter, Request
from prometheus_client import CONTENT_TYPE_LATEST
from starlette.responses import Response

from external_agents.channels.auth import caller_with
from external_agents.channels.route_support import state_of

router = APIRouter()


@router.get("/metrics", include_in_schema=False)
async def get_metrics(request: Request) -> Response:
    caller = caller_with(request, "read:metrics")
    state = state_of(request)
    metrics = state.metrics
    if metrics.redis_up is not None and state.redis is not None:
        try:
            await state.redis.ping()
            metrics.redis_up.set(1)
        except Exception:
            metrics.redis_up.set(0)
    return Response(metrics.exposition(caller.organization_id), media_type=CONTENT_TYPE_LATEST)
