"""How an invocation's outcome becomes an HTTP response: status code, body and the X-Kaizen-* headers.

The one place an outcome (nodes/invocation_state.py) is given an HTTP status: MCP and the command line reuse
this mapping through the gateway, so the three channels answer alike.
"""

from __future__ import annotations

import json
import math
from datetime import UTC, datetime
from typing import Any

from starlette.responses import JSONResponse

from external_agents.channels.error_responses import error_body
from external_agents.nodes.invocation_state import (
    BudgetExceeded,
    Delivered,
    DeliveryFailed,
    InvocationOutcome,
    PolicyDenied,
    RateLimited,
)

DENIAL_STATUS: dict[type[Any], int] = {PolicyDenied: 403, RateLimited: 429, BudgetExceeded: 402}
FAILED_DELIVERY_STATUS = {"failure": 502, "timeout": 504}
FAILED_DELIVERY_CODES = {"failure": "PLATFORM_ERROR", "timeout": "PLATFORM_TIMEOUT"}
# A delivery the bulkhead turned away was never attempted: the caller may simply retry in a moment.
SATURATED_RETRY_AFTER_SECONDS = 1


def _iso(epoch_seconds: float) -> str:
    return datetime.fromtimestamp(epoch_seconds, UTC).isoformat()


def invocation_headers(outcome: InvocationOutcome) -> dict[str, str]:
    headers = {
        "X-Kaizen-Invocation-ID": outcome.invocation_id,
        "X-Kaizen-Trace-ID": outcome.trace_id,
        "X-Kaizen-Cost-USD": f"{outcome.cost_usd:.6f}",
        "X-Kaizen-Duration-MS": f"{outcome.duration_ms:.3f}",
    }
    rate_limit = outcome.rate_limit
    if rate_limit is not None:
        headers["X-RateLimit-Limit"] = str(rate_limit.limit)
        headers["X-RateLimit-Remaining"] = str(rate_limit.remaining)
        headers["X-RateLimit-Reset"] = str(math.ceil(rate_limit.reset_at))
    if outcome.budget is not None and outcome.budget.degraded:
        headers["X-Kaizen-Budget-Degraded"] = "true"
    return headers


def success_body(outcome: InvocationOutcome) -> dict[str, Any]:
    return {
        "invocation_id": outcome.invocation_id,
        "trace_id": outcome.trace_id,
        "status": outcome.status,
        "output": outcome.output,
        "metadata": {
            "duration_ms": outcome.duration_ms,
            "cost_usd": outcome.cost_usd,
            "webhook_delivered": outcome.status == "success",
        },
    }


def denial_extras(denial: PolicyDenied | RateLimited | BudgetExceeded) -> dict[str, Any]:
    """The fields SPEC §4 gives each denial, beside the standard error fields."""
    if isinstance(denial, PolicyDenied):
        return {"policy_id": denial.policy_id, "matched_policies": list(denial.matched_policies)}
    if isinstance(denial, RateLimited):
        decision = denial.decision
        return {
            "retry_after_seconds": decision.retry_after_seconds,
            "limit": decision.limit,
            "remaining": decision.remaining,
            "reset_time": _iso(decision.reset_at),
        }
    return {"budget_remaining": denial.budget_remaining_usd, "budget_limit": denial.budget_limit_usd}


def invocation_response(outcome: InvocationOutcome, *, request_id: str) -> JSONResponse:
    headers = {**invocation_headers(outcome), "X-Request-ID": request_id}
    ids = {"invocation_id": outcome.invocation_id, "trace_id": outcome.trace_id}
    result = outcome.result
    if isinstance(result, Delivered):
        return JSONResponse(success_body(outcome), headers=headers)
    if isinstance(result, DeliveryFailed) and result.saturated:
        headers["Retry-After"] = str(SATURATED_RETRY_AFTER_SECONDS)
        body = error_body(503, result.error, request_id=request_id, error_code="SERVICE_UNAVAILABLE", **ids)
        return JSONResponse(body, status_code=503, headers=headers)
    if isinstance(result, DeliveryFailed):
        status = outcome.status
        status_code = FAILED_DELIVERY_STATUS[status]
        body = error_body(
            status_code,
            f"Delivery to the platform failed: {result.error}",
            request_id=request_id,
            error_code=FAILED_DELIVERY_CODES[status],
            **ids,
        )
        return JSONResponse(body, status_code=status_code, headers=headers)
    if isinstance(result, RateLimited) and result.decision.retry_after_seconds:
        headers["Retry-After"] = str(result.decision.retry_after_seconds)
    status_code = DENIAL_STATUS[type(result)]
    body = error_body(status_code, result.detail, request_id=request_id, **denial_extras(result), **ids)
    return JSONResponse(body, status_code=status_code, headers=headers)


def invocation_answer(outcome: InvocationOutcome, *, request_id: str) -> tuple[int, dict[str, Any]]:
    """The status code and JSON body REST answers an outcome with, for channels without headers (MCP, the CLI):
    the REST mapping itself, so status, detail and denial fields cannot drift apart between channels."""
    response = invocation_response(outcome, request_id=request_id)
    return response.status_code, json.loads(response.body)
