"""The budget step of an invocation: reserve the estimated cost against the agent's daily and monthly budgets.

The reservation is exact under concurrency (see stores/budgets.py); warning and degradation thresholds are
flagged on every invocation past them, and their audit event is written once per month across instances.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from kailash.nodes.base import register_node

from external_agents.money import to_micros, to_usd
from external_agents.nodes.base import ExternalAgentNode, dependency, value
from external_agents.nodes.invocation import denied
from external_agents.stores.budgets import BudgetLimits, BudgetRefusal, claim_alert, reserve


@dataclass(frozen=True)
class BudgetThresholds:
    warning: float
    degradation: float


def budget_limits(agent: dict[str, Any]) -> BudgetLimits:
    return BudgetLimits(
        daily_micros=to_micros(agent["max_daily_cost"]),
        monthly_micros=to_micros(agent["max_monthly_cost"]),
        daily_executions=agent["daily_execution_limit"],
        monthly_executions=agent["monthly_execution_limit"],
    )


def budget_denial(refusal: BudgetRefusal) -> dict[str, Any]:
    limit = "budget" if refusal.reason == "cost" else "execution limit"
    return {
        "kind": "budget",
        "status_code": 402,
        "detail": f"{refusal.period.capitalize()} {limit} exceeded for this agent",
        "budget_remaining": to_usd(refusal.remaining_micros),
        "budget_limit": to_usd(refusal.limit_micros),
    }


def threshold_event(kind: str, invocation: dict[str, Any], usage: float) -> dict[str, Any]:
    return {
        "event_type": f"external_agent.budget_{kind}",
        "organization_id": invocation["caller"]["organization_id"],
        "actor_id": invocation["caller"]["api_key_id"],
        "resource_type": "external_agent",
        "resource_id": invocation["agent"]["id"],
        "details": {"usage_percentage": round(usage * 100, 2), "invocation_id": invocation["invocation_id"]},
    }


@register_node()
class BudgetReserveNode(ExternalAgentNode):
    """Reserve `cost_per_execution`, or deny with 402 when a budget would be overspent."""

    def get_parameters(self) -> dict[str, Any]:
        return {
            "engine": dependency("engine", "SQLAlchemy AsyncEngine"),
            "thresholds": dependency("thresholds", "BudgetThresholds"),
            "invocation": value("invocation", "the invocation so far"),
        }

    async def async_run(self, **kw: Any) -> dict[str, Any]:
        invocation = kw["invocation"]
        if denied(invocation):
            return {"invocation": invocation}
        engine, thresholds, agent = kw["engine"], kw["thresholds"], invocation["agent"]
        now = datetime.now(UTC)
        limits = budget_limits(agent)
        outcome = await reserve(
            engine, agent_id=agent["id"], amount_micros=to_micros(agent["cost_per_execution"]), limits=limits, now=now
        )
        if isinstance(outcome, BudgetRefusal):
            return {"invocation": {**invocation, "denial": budget_denial(outcome)}}
        usage = outcome.month_spent_micros / limits.monthly_micros if limits.monthly_micros else 1.0
        flags = {"usage": usage, "warning": usage >= thresholds.warning, "degraded": usage >= thresholds.degradation}
        events = list(invocation["audit_events"])
        for kind, crossed in (("warning", flags["warning"]), ("degraded", flags["degraded"])):
            if crossed and await claim_alert(engine, agent_id=agent["id"], now=now, kind=kind):
                events.append(threshold_event(kind, invocation, usage))
        return {"invocation": {**invocation, "reservation": outcome.to_dict(), "budget": flags, "audit_events": events}}
