"""The last step of an invocation: record what happened (lineage, billing, budget settlement, audit).

Denied invocations are recorded too, with status `denied` and their reason. The node's output is the
outcome the channels turn into a response. A record the database cannot take in time waits in the journal
(stores/unrecorded.py) and the response stands: the platform has the delivery, and the record follows.
"""

from __future__ import annotations

import time
from datetime import UTC, datetime
from typing import Any

from kailash.nodes.base import register_node

from external_agents.money import to_micros, to_usd
from external_agents.nodes.base import ExternalAgentNode, dependency, value
from external_agents.stores.budgets import Reservation
from external_agents.stores.invocations import record_invocation

DENIAL_EVENTS = {
    "policy": "external_agent.policy_denied",
    "rate_limit": "external_agent.rate_limit_exceeded",
    "budget": "external_agent.budget_exceeded",
}


def _status(invocation: dict[str, Any]) -> str:
    if invocation["denial"] is not None:
        return "denied"
    return invocation["delivery"]["status"]


def _actual_micros(invocation: dict[str, Any]) -> int | None:
    """What the invocation costs: the platform's reported cost, else the estimate; None if nothing is owed."""
    delivery = invocation.get("delivery")
    if delivery is None or not delivery["reached_platform"]:
        return None
    if delivery["reported_cost_micros"] is not None:
        return delivery["reported_cost_micros"]
    return to_micros(invocation["agent"]["cost_per_execution"])


def _event(event_type: str, invocation: dict[str, Any], details: dict[str, Any]) -> dict[str, Any]:
    return {
        "event_type": event_type,
        "organization_id": invocation["caller"]["organization_id"],
        "actor_id": invocation["caller"]["api_key_id"],
        "resource_type": "external_agent",
        "resource_id": invocation["agent"]["id"],
        "details": {"invocation_id": invocation["invocation_id"], **details},
    }


def outcome_of(invocation: dict[str, Any], *, status: str, cost_micros: int, duration_ms: float) -> dict[str, Any]:
    delivery = invocation.get("delivery") or {}
    return {
        "invocation_id": invocation["invocation_id"],
        "trace_id": invocation["trace_id"],
        "status": status,
        "output": delivery.get("output"),
        "cost_usd": to_usd(cost_micros),
        "duration_ms": duration_ms,
        "webhook_delivered": status == "success",
        "delivery_error": delivery.get("error"),
        "denial": invocation["denial"],
        "rate_limit": invocation.get("rate_limit"),
        "budget": invocation.get("budget"),
    }


@register_node()
class RecordInvocationNode(ExternalAgentNode):
    """Write lineage, billing, the budget settlement and audit rows in one transaction; output the outcome."""

    def get_parameters(self) -> dict[str, Any]:
        return {
            "engine": dependency("engine", "SQLAlchemy AsyncEngine"),
            "journal": dependency("journal", "UnrecordedJournal: where records wait while the database is away"),
            "invocation": value("invocation", "the invocation, delivered or denied"),
        }

    async def async_run(self, **kw: Any) -> dict[str, Any]:
        invocation = kw["invocation"]
        status = _status(invocation)
        actual = _actual_micros(invocation)
        cost_micros = actual or 0
        duration_ms = round((time.perf_counter() - invocation["started"]) * 1000, 3)
        identity, agent, caller = invocation["identity"], invocation["agent"], invocation["caller"]
        delivery = invocation.get("delivery") or {}
        denial = invocation["denial"]
        lineage_row = {
            "id": invocation["invocation_id"],
            **{
                k: identity[k]
                for k in (
                    "external_user_id",
                    "external_user_email",
                    "external_user_name",
                    "external_system",
                    "external_session_id",
                    "external_trace_id",
                )
            },
            "external_context": identity["external_context"],
            "api_key_id": caller["api_key_id"],
            "organization_id": caller["organization_id"],
            "external_agent_id": agent["id"],
            "external_agent_name": agent["name"],
            "platform": agent["platform"],
            "trace_id": invocation["trace_id"],
            "workflow_id": invocation["workflow_id"],
            "input": invocation["input"],
            "output": delivery.get("output"),
            "status": status,
            "denial_reason": denial["detail"] if denial else None,
            "cost_usd": to_usd(cost_micros),
            "duration_ms": duration_ms,
            "webhook_delivery_status": None if denial else ("delivered" if status == "success" else status),
            "webhook_delivery_error": delivery.get("error"),
            "webhook_attempts": delivery.get("attempts"),
            "request_timestamp": datetime.fromisoformat(invocation["request_timestamp"]),
            "response_timestamp": datetime.now(UTC),
        }
        billing_row = None
        if actual is not None:
            billing_row = {
                "id": invocation["invocation_id"],
                "organization_id": caller["organization_id"],
                "usage_type": "external_agent_invocation",
                "quantity": 1.0,
                "cost_usd": to_usd(actual),
                "external_agent_id": agent["id"],
            }
        events = list(invocation["audit_events"])
        if denial is not None:
            events.append(_event(DENIAL_EVENTS[denial["kind"]], invocation, {"reason": denial["detail"]}))
        else:
            details = {"status": status, "cost_usd": to_usd(cost_micros)}
            events.append(_event("external_agent.invoked", invocation, details))
        reservation = invocation.get("reservation")
        await record_invocation(
            kw["engine"],
            lineage_row=lineage_row,
            billing_row=billing_row,
            reservation=Reservation.from_dict(reservation) if reservation else None,
            actual_micros=actual,
            audit_events=events,
            journal=kw["journal"],
        )
        return {"outcome": outcome_of(invocation, status=status, cost_micros=cost_micros, duration_ms=duration_ms)}
