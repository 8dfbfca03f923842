"""How an invocation's outcome becomes an HTTP response: status code, body and the X-Kaizen-* headers."""

from __future__ import annotations

import json
import math
from datetime import UTC, datetime
from typing import Any

from starlette.responses import JSONResponse

from external_agents.channels.error_responses import error_body

FAILED_DELIVERY_STATUS = {"failure": 502, "timeout": 504}
FAILED_DELIVERY_CODES = {"failure": "PLATFORM_ERROR", "timeout": "PLATFORM_TIMEOUT"}


def _iso(epoch_seconds: float) -> str:
    return datetime.fromtimestamp(epoch_seconds, UTC).isoformat()


def invocation_headers(outcome: dict[str, Any]) -> dict[str, str]:
    headers = {
        "X-Kaizen-Invocation-ID": outcome["invocation_id"],
        "X-Kaizen-Trace-ID": outcome["trace_id"],
        "X-Kaizen-Cost-USD": f"{outcome['cost_usd']:.6f}",
        "X-Kaizen-Duration-MS": f"{outcome['duration_ms']:.3f}",
    }
    rate_limit = outcome.get("rate_limit")
    if rate_limit:
        headers["X-RateLimit-Limit"] = str(rate_limit["limit"])
        headers["X-RateLimit-Remaining"] = str(rate_limit["remaining"])
        headers["X-RateLimit-Reset"] = str(math.ceil(rate_limit["reset_at"]))
    budget = outcome.get("budget")
    if budget and budget.get("degraded"):
        headers["X-Kaizen-Budget-Degraded"] = "true"
    return headers


def success_body(outcome: dict[str, Any]) -> dict[str, Any]:
    return {
        "invocation_id": outcome["invocation_id"],
        "trace_id": outcome["trace_id"],
        "status": outcome["status"],
        "output": outcome["output"],
        "metadata": {
            "duration_ms": outcome["duration_ms"],
            "cost_usd": outcome["cost_usd"],
            "webhook_delivered": outcome["webhook_delivered"],
        },
    }


def denial_extras(denial: dict[str, Any]) -> dict[str, Any]:
    """The fields SPEC §4 gives each denial, beside the standard error fields."""
    if denial["kind"] == "policy":
        return {"policy_id": denial["policy_id"], "matched_policies": denial["matched_policies"]}
    if denial["kind"] == "rate_limit":
        return {
            "retry_after_seconds": denial["retry_after_seconds"],
            "limit": denial["limit"],
            "remaining": denial["remaining"],
            "reset_time": _iso(denial["reset_time"]),
        }
    return {"budget_remaining": denial["budget_remaining"], "budget_limit": denial["budget_limit"]}


def invocation_response(outcome: dict[str, Any], *, request_id: str) -> JSONResponse:
    headers = {**invocation_headers(outcome), "X-Request-ID": request_id}
    ids = {"invocation_id": outcome["invocation_id"], "trace_id": outcome["trace_id"]}
    denial = outcome["denial"]
    if denial is not None:
        if denial["kind"] == "rate_limit" and denial["retry_after_seconds"]:
            headers["Retry-After"] = str(denial["retry_after_seconds"])
        body = error_body(
            denial["status_code"], denial["detail"], request_id=request_id, **denial_extras(denial), **ids
        )
        return JSONResponse(body, status_code=denial["status_code"], headers=headers)
    if outcome["status"] != "success":
        status_code = FAILED_DELIVERY_STATUS[outcome["status"]]
        body = error_body(
            status_code,
            f"Delivery to the platform failed: {outcome['delivery_error']}",
            request_id=request_id,
            error_code=FAILED_DELIVERY_CODES[outcome["status"]],
            **ids,
        )
        return JSONResponse(body, status_code=status_code, headers=headers)
    return JSONResponse(success_body(outcome), headers=headers)


def invocation_answer(outcome: dict[str, Any], *, request_id: str) -> tuple[int, dict[str, Any]]:
    """The status code and JSON body REST answers an outcome with, for channels without headers (MCP, the CLI):
    the REST mapping itself, so status, detail and denial fields cannot drift apart between channels."""
    response = invocation_response(outcome, request_id=request_id)
    return response.status_code, json.loads(response.body)
