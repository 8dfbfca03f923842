"""The last step of an invocation: record what happened (lineage, billing, budget settlement, audit).

Denied invocations are recorded too, with status `denied` and their reason. The node's output is the
outcome the channels turn into a response. A record the database cannot take in time waits in the journal
(stores/unrecorded.py) and the response stands: the platform has the delivery, and the record follows.

Usage in a host workflow, as the last step::

    builder.add_node("RecordInvocationNode", "record", {"engine": engine, "journal": None})
    builder.add_connection("deliver", "invocation", "record", "invocation")

Input `invocation` (delivered or denied); output `outcome`: `InvocationOutcome.to_json()`. The budget
reservation is settled at the cost the platform reported, never above the reservation (else the estimate;
nodes/cost_overrun.py), or released when the platform was never reached, in the same transaction as the
lineage and billing rows.
"""

from __future__ import annotations

import time
from datetime import UTC, datetime
from typing import Any

from kailash.nodes.base import NodeParameter, register_node

from external_agents.money import to_micros, to_usd
from external_agents.nodes.base import dependency
from external_agents.nodes.cost_overrun import billed_micros, overrun_micros
from external_agents.nodes.invocation_state import (
    AuditEvent,
    BudgetExceeded,
    Delivered,
    DeliveryFailed,
    Invocation,
    InvocationOutcome,
    PolicyDenied,
    RateLimited,
    Result,
    status_of,
)
from external_agents.nodes.invocation_step import InvocationStepNode
from external_agents.stores.invocations import record_invocation

DENIAL_EVENTS: dict[type[Any], str] = {
    PolicyDenied: "external_agent.policy_denied",
    RateLimited: "external_agent.rate_limit_exceeded",
    BudgetExceeded: "external_agent.budget_exceeded",
}


def result_of(invocation: Invocation) -> Result:
    """How the invocation ended: its denial, else its delivery."""
    result = invocation.denial or invocation.delivery
    if result is None:
        raise RuntimeError("an invocation is recorded once denied or delivered (DeliverInvocationNode runs first)")
    return result


def actual_micros(invocation: Invocation) -> int | None:
    """What the invocation costs: the platform's reported cost up to the reservation (cost_overrun.py), else the
    estimate; None if nothing is owed."""
    delivery = invocation.delivery
    if invocation.denied or delivery is None:
        return None
    if isinstance(delivery, DeliveryFailed):
        return to_micros(invocation.loaded_agent.cost_per_execution) if delivery.reached_platform else None
    return billed_micros(invocation, delivery)


def recorded_cost_fields(invocation: Invocation) -> dict[str, Any]:
    """The platform's reported cost where it differs from the billed one (an overrun), and the answer's note."""
    delivery = invocation.delivery
    overrun = overrun_micros(invocation)
    return {
        "reported_cost_usd": to_usd(overrun) if overrun is not None else None,
        "record_note": delivery.record_note if isinstance(delivery, Delivered) else None,
    }


def lineage_row(
    invocation: Invocation, *, cost_micros: int, duration_ms: float, response_timestamp: datetime
) -> dict[str, Any]:
    result = result_of(invocation)
    status = status_of(result)
    delivery = invocation.delivery
    denied = invocation.denial is not None
    return {
        **invocation.request_columns(),
        "output": delivery.output if isinstance(delivery, Delivered) else None,
        "status": status,
        "denial_reason": invocation.denial.detail if invocation.denial is not None else None,
        "cost_usd": to_usd(cost_micros),
        "duration_ms": duration_ms,
        "webhook_delivery_status": None if denied else ("delivered" if status == "success" else status),
        "webhook_delivery_error": delivery.error if isinstance(delivery, DeliveryFailed) else None,
        "webhook_attempts": delivery.attempts if delivery is not None and not denied else None,
        "response_timestamp": response_timestamp,
        **recorded_cost_fields(invocation),
    }


def billing_row(invocation: Invocation, *, actual: int) -> dict[str, Any]:
    return {
        "id": invocation.invocation_id,
        "organization_id": invocation.caller.organization_id,
        "usage_type": "external_agent_invocation",
        "quantity": 1.0,
        "cost_usd": to_usd(actual),
        "external_agent_id": invocation.loaded_agent.id,
    }


def audit_events(invocation: Invocation, *, cost_micros: int) -> list[dict[str, Any]]:
    """The invocation's audit events as `stores.audit.audit_row` takes them, its closing event last."""
    result = result_of(invocation)
    if invocation.denial is not None:
        closing = AuditEvent(
            event_type=DENIAL_EVENTS[type(invocation.denial)],
            details={"invocation_id": invocation.invocation_id, "reason": invocation.denial.detail},
        )
    else:
        details = {"status": status_of(result), "cost_usd": to_usd(cost_micros)}
        closing = AuditEvent(
            event_type="external_agent.invoked", details={"invocation_id": invocation.invocation_id, **details}
        )
    return [
        {
            "event_type": event.event_type,
            "organization_id": invocation.caller.organization_id,
            "actor_id": invocation.caller.api_key_id,
            "resource_type": "external_agent",
            "resource_id": invocation.loaded_agent.id,
            "details": event.details,
        }
        for event in (*invocation.audit_events, closing)
    ]


def outcome_of(invocation: Invocation, *, cost_micros: int, duration_ms: float) -> InvocationOutcome:
    return InvocationOutcome(
        invocation_id=invocation.invocation_id,
        trace_id=invocation.trace_id,
        result=result_of(invocation),
        cost_usd=to_usd(cost_micros),
        duration_ms=duration_ms,
        rate_limit=invocation.rate_limit,
        budget=invocation.budget,
    )


@register_node()
class RecordInvocationNode(InvocationStepNode):
    """Write lineage, billing, the budget settlement and audit rows in one transaction; output the outcome."""

    runs_after_denial = True

    def dependencies(self) -> dict[str, NodeParameter]:
        return {
            "engine": dependency("engine", "SQLAlchemy AsyncEngine"),
            "journal": dependency("journal", "UnrecordedJournal: where records wait while the database is away"),
        }

    async def step(self, invocation: Invocation, **kw: Any) -> InvocationOutcome:
        actual = actual_micros(invocation)
        cost_micros = actual or 0
        duration_ms = round((time.perf_counter() - invocation.started) * 1000, 3)
        row = lineage_row(
            invocation, cost_micros=cost_micros, duration_ms=duration_ms, response_timestamp=datetime.now(UTC)
        )
        await record_invocation(
            kw["engine"],
            lineage_row=row,
            billing_row=billing_row(invocation, actual=actual) if actual is not None else None,
            reservation=invocation.reservation,
            actual_micros=actual,
            audit_events=audit_events(invocation, cost_micros=cost_micros),
            journal=kw["journal"],
        )
        return outcome_of(invocation, cost_micros=cost_micros, duration_ms=duration_ms)
