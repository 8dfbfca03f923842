"""The record step's plain functions: what an invocation costs, and the lineage, billing and audit rows it writes."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest

from external_agents.nodes.invocation_state import (
    AuditEvent,
    BudgetExceeded,
    Delivered,
    DeliveryFailed,
    PolicyDenied,
    RateLimited,
)
from external_agents.nodes.record_invocation import (
    actual_micros,
    audit_events,
    billing_row,
    lineage_row,
    outcome_of,
)
from tests.factories import DECISION, INVOCATION_STARTED, REFUSAL, RESERVATION, invocation

ENDED = datetime(2026, 12, 1, 9, 30, 1, tzinfo=UTC)
DELIVERED = Delivered(status_code=200, output={"answer": 42}, reported_cost_micros=None, attempts=1)


def test_the_cost_is_the_reported_one_else_the_estimate_and_nothing_when_never_reached():
    reported = Delivered(status_code=200, output=None, reported_cost_micros=20_000, attempts=1)

    assert actual_micros(invocation().updated(delivery=DELIVERED)) == 50_000
    assert actual_micros(invocation().updated(delivery=reported)) == 20_000
    failed_there = DeliveryFailed(timed_out=True, status_code=None, attempts=2, reached_platform=True, error="t")
    never_sent = DeliveryFailed(timed_out=False, status_code=None, attempts=1, reached_platform=False, error="r")
    assert actual_micros(invocation().updated(delivery=failed_there)) == 50_000
    assert actual_micros(invocation().updated(delivery=never_sent)) is None
    assert actual_micros(invocation().updated(denial=BudgetExceeded(refusal=REFUSAL))) is None


def test_a_delivered_invocations_lineage_row_keeps_identity_request_metadata_and_timestamps():
    current = invocation(external_user_name="Ada").updated(delivery=DELIVERED, reservation=RESERVATION)

    row = lineage_row(current, cost_micros=50_000, duration_ms=12.5, response_timestamp=ENDED)

    assert row["id"] == current.invocation_id and row["trace_id"] == current.trace_id
    assert (row["external_user_email"], row["external_user_name"], row["external_trace_id"]) == (
        "user@example.com",
        "Ada",
        None,
    )
    assert (row["input"], row["output"], row["metadata"]) == ({"q": "hello"}, {"answer": 42}, {"ticket": 7})
    assert (row["status"], row["webhook_delivery_status"], row["webhook_attempts"]) == ("success", "delivered", 1)
    assert (row["cost_usd"], row["denial_reason"]) == (0.05, None)
    assert (row["request_timestamp"], row["response_timestamp"]) == (INVOCATION_STARTED, ENDED)


@pytest.mark.parametrize(
    ("denial", "event_type"),
    [
        (PolicyDenied(reason="no", policy_id=None, matched_policies=()), "external_agent.policy_denied"),
        (RateLimited(decision=DECISION), "external_agent.rate_limit_exceeded"),
        (BudgetExceeded(refusal=REFUSAL), "external_agent.budget_exceeded"),
    ],
)
def test_a_denied_invocation_is_recorded_denied_with_its_reason_and_audit_event(denial, event_type):
    current = invocation().updated(denial=denial)

    row = lineage_row(current, cost_micros=0, duration_ms=1.0, response_timestamp=ENDED)
    [event] = audit_events(current, cost_micros=0)

    assert (row["status"], row["denial_reason"], row["webhook_delivery_status"]) == ("denied", denial.detail, None)
    assert row["metadata"] == {"ticket": 7}
    assert event == {
        "event_type": event_type,
        "organization_id": "org-1",
        "actor_id": "key-1",
        "resource_type": "external_agent",
        "resource_id": "agent-1",
        "details": {"invocation_id": current.invocation_id, "reason": denial.detail},
    }


def test_billing_row_and_closing_audit_event_of_a_delivered_invocation():
    current = invocation().updated(
        AuditEvent(event_type="external_agent.credentials_accessed", details={"purpose": "delivery"}),
        delivery=DELIVERED,
    )

    billing = billing_row(current, actual=50_000)
    events = audit_events(current, cost_micros=50_000)

    assert billing == {
        "id": current.invocation_id,
        "organization_id": "org-1",
        "usage_type": "external_agent_invocation",
        "quantity": 1.0,
        "cost_usd": 0.05,
        "external_agent_id": "agent-1",
    }
    assert [e["event_type"] for e in events] == ["external_agent.credentials_accessed", "external_agent.invoked"]
    assert events[-1]["details"] == {"invocation_id": current.invocation_id, "status": "success", "cost_usd": 0.05}


def test_the_outcome_is_the_result_with_the_standing_for_the_headers():
    current = invocation().updated(delivery=DELIVERED, rate_limit=DECISION)

    outcome = outcome_of(current, cost_micros=50_000, duration_ms=3.25)

    assert (outcome.status, outcome.output, outcome.cost_usd) == ("success", {"answer": 42}, 0.05)
    assert outcome.rate_limit is DECISION and outcome.budget is None


def test_an_invocation_neither_denied_nor_delivered_cannot_be_recorded():
    with pytest.raises(RuntimeError, match="DeliverInvocationNode"):
        outcome_of(invocation(), cost_micros=0, duration_ms=0.0)
