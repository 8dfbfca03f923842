"""The pipeline's typed state survives the JSON crossing between nodes exactly, secrets sealed and types kept."""

from __future__ import annotations

import json
from datetime import datetime

import pytest

from external_agents.nodes.governance.rate_limiter import RateLimitDecision
from external_agents.nodes.invocation_state import (
    AuditEvent,
    BudgetExceeded,
    BudgetStatus,
    Delivered,
    DeliveryFailed,
    Invocation,
    InvocationOutcome,
    PolicyDenied,
    RateLimited,
    Result,
    status_of,
)
from external_agents.stores.budgets import BudgetRefusal, Reservation
from tests.factories import DECISION, REFUSAL, RESERVATION, agent_snapshot, invocation

RESULTS: list[Result] = [
    PolicyDenied(reason="weekdays only", policy_id="p-1", matched_policies=("p-1", "p-2")),
    RateLimited(decision=DECISION),
    BudgetExceeded(refusal=REFUSAL),
    Delivered(status_code=200, output={"answer": [1, 2.5, None]}, reported_cost_micros=20_000, attempts=2),
    DeliveryFailed(timed_out=True, status_code=None, attempts=3, reached_platform=True, error="timed out"),
]


def through_kailash(data: dict) -> dict:
    """What the next node receives: Kailash passes only JSON."""
    return json.loads(json.dumps(data))


def test_a_fully_stepped_invocation_round_trips_through_json():
    sealed = b"gAAAA-sealed-token-\x00\xff"
    original = invocation(agent=agent_snapshot(sealed_credentials=sealed)).updated(
        AuditEvent(event_type="external_agent.budget_warning", details={"usage_percentage": 90.0}),
        rate_limit=DECISION,
        reservation=RESERVATION,
        budget=BudgetStatus(usage=0.9, warning=True, degraded=True),
        delivery=RESULTS[3],
    )

    back = Invocation.from_json(through_kailash(original.to_json()))

    assert back == original
    assert back.loaded_agent.sealed_credentials == sealed
    assert isinstance(back.request_timestamp, datetime) and back.request_timestamp.tzinfo is not None
    assert isinstance(back.reservation, Reservation) and isinstance(back.rate_limit, RateLimitDecision)


def test_the_sealed_credentials_cross_as_base64_never_as_text():
    data = invocation(agent=agent_snapshot(sealed_credentials=b"\x00secret")).to_json()

    assert data["agent"]["sealed_credentials"] == "AHNlY3JldA=="


@pytest.mark.parametrize("result", RESULTS, ids=lambda r: type(r).__name__)
def test_every_result_round_trips_as_denial_or_delivery_and_in_the_outcome(result: Result):
    field = "delivery" if isinstance(result, Delivered | DeliveryFailed) else "denial"
    original = invocation().updated(**{field: result})
    outcome = InvocationOutcome(
        invocation_id="i-1",
        trace_id="trc_1",
        result=result,
        cost_usd=0.02,
        duration_ms=12.5,
        rate_limit=DECISION,
        budget=None,
    )

    assert Invocation.from_json(through_kailash(original.to_json())) == original
    assert InvocationOutcome.from_json(through_kailash(outcome.to_json())) == outcome


def test_an_outcome_as_json_says_its_status_and_output_for_host_workflows():
    outcome = InvocationOutcome(
        invocation_id="i-1",
        trace_id="trc_1",
        result=RESULTS[3],
        cost_usd=0.02,
        duration_ms=1.0,
        rate_limit=None,
        budget=None,
    )

    data = outcome.to_json()

    assert (data["status"], data["output"], data["result"]["kind"]) == (
        "success",
        {"answer": [1, 2.5, None]},
        "delivered",
    )


def test_results_carry_no_http_status_and_map_to_lineage_statuses():
    assert [status_of(r) for r in RESULTS] == ["denied", "denied", "denied", "success", "timeout"]
    assert status_of(
        DeliveryFailed(timed_out=False, status_code=500, attempts=1, reached_platform=True, error="x")
    ) == ("failure")
    for result in RESULTS[:3]:
        assert "status_code" not in json.dumps(
            InvocationOutcome(
                invocation_id="i", trace_id="t", result=result, cost_usd=0, duration_ms=0, rate_limit=None, budget=None
            ).to_json()["result"]
        )


def test_denials_say_why_in_the_words_rest_answers():
    assert RESULTS[0].detail == "Invocation denied by policy: weekdays only"
    assert RESULTS[1].detail == "Rate limit exceeded for this agent (minute window)"
    assert RESULTS[2].detail == "Daily budget exceeded for this agent"
    assert BudgetExceeded(refusal=BudgetRefusal("monthly", 5, 5, 0, "executions")).detail == (
        "Monthly execution limit exceeded for this agent"
    )
    assert (RESULTS[2].budget_remaining_usd, RESULTS[2].budget_limit_usd) == (0.01, 1.0)


def test_the_invocation_is_immutable():
    with pytest.raises(AttributeError):
        invocation().agent_id = "other"  # type: ignore[misc]


def test_loaded_agent_refuses_an_invocation_whose_agent_was_not_loaded():
    with pytest.raises(RuntimeError, match="LoadInvocationAgentNode"):
        _ = invocation().updated(agent=None).loaded_agent
