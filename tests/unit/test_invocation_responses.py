"""The channel's mapping of a typed outcome to an HTTP status, body and headers: the only place statuses are chosen."""

from __future__ import annotations

import json

import pytest

from external_agents.channels.invocation_responses import invocation_response
from external_agents.nodes.invocation_state import (
    BudgetExceeded,
    BudgetStatus,
    Delivered,
    DeliveryFailed,
    InvocationOutcome,
    PolicyDenied,
    RateLimited,
    Result,
)
from tests.factories import DECISION, REFUSAL


def outcome(result: Result, **overrides) -> InvocationOutcome:
    fields = {
        "invocation_id": "i-1",
        "trace_id": "trc_1",
        "result": result,
        "cost_usd": 0.05,
        "duration_ms": 12.5,
        "rate_limit": None,
        "budget": None,
    }
    return InvocationOutcome(**{**fields, **overrides})


@pytest.mark.parametrize(
    ("result", "status", "fields"),
    [
        (
            PolicyDenied(reason="weekdays", policy_id="p-1", matched_policies=("p-1",)),
            403,
            {"policy_id": "p-1", "matched_policies": ["p-1"]},
        ),
        (
            RateLimited(decision=DECISION),
            429,
            {"retry_after_seconds": 12, "limit": 10, "remaining": 0, "reset_time": "2025-12-06T05:46:40.250000+00:00"},
        ),
        (BudgetExceeded(refusal=REFUSAL), 402, {"budget_remaining": 0.01, "budget_limit": 1.0}),
        (
            DeliveryFailed(timed_out=True, status_code=None, attempts=3, reached_platform=True, error="slow"),
            504,
            {"error_code": "PLATFORM_TIMEOUT"},
        ),
        (
            DeliveryFailed(timed_out=False, status_code=500, attempts=3, reached_platform=True, error="boom"),
            502,
            {"error_code": "PLATFORM_ERROR"},
        ),
    ],
    ids=["policy", "rate_limit", "budget", "timeout", "failure"],
)
def test_each_refusal_has_its_status_and_fields(result, status, fields):
    response = invocation_response(outcome(result), request_id="req-1")
    body = json.loads(response.body)

    assert response.status_code == status == body["status_code"]
    assert {key: body[key] for key in fields} == fields
    assert (body["invocation_id"], body["trace_id"], body["request_id"]) == ("i-1", "trc_1", "req-1")


def test_a_rate_limit_denial_says_when_to_retry():
    response = invocation_response(outcome(RateLimited(decision=DECISION), rate_limit=DECISION), request_id="r")

    assert response.headers["Retry-After"] == "12"
    assert (response.headers["X-RateLimit-Limit"], response.headers["X-RateLimit-Remaining"]) == ("10", "0")
    assert response.headers["X-RateLimit-Reset"] == "1765000001"


def test_a_delivery_answers_200_with_its_output_and_the_budget_degraded_header():
    delivered = Delivered(status_code=200, output={"answer": 42}, reported_cost_micros=None, attempts=1)

    response = invocation_response(
        outcome(delivered, budget=BudgetStatus(usage=0.95, warning=True, degraded=True)), request_id="r"
    )

    assert response.status_code == 200
    assert json.loads(response.body) == {
        "invocation_id": "i-1",
        "trace_id": "trc_1",
        "status": "success",
        "output": {"answer": 42},
        "metadata": {"duration_ms": 12.5, "cost_usd": 0.05, "webhook_delivered": True},
    }
    assert response.headers["X-Kaizen-Budget-Degraded"] == "true"
    assert (response.headers["X-Kaizen-Cost-USD"], response.headers["X-Kaizen-Duration-MS"]) == ("0.050000", "12.500")
    assert "Retry-After" not in response.headers and "X-RateLimit-Limit" not in response.headers
