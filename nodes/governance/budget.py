"""The budget step of an invocation: reserve the estimated cost against the agent's daily and monthly budgets.

The reservation is exact under concurrency (see stores/budgets.py); warning and degradation thresholds are
flagged on every invocation past them, and their audit event is written once per month across instances.
The reservation is settled (or released) by `RecordInvocationNode`, in the transaction that records the call.

Usage in a host workflow::

    builder.add_node("BudgetReserveNode", "budget", {
        "engine": engine, "thresholds": BudgetThresholds(warning=0.8, degradation=0.9)})
    builder.add_connection("rate_limit", "invocation", "budget", "invocation")

Input `invocation`; output `invocation` with its `Reservation` and `BudgetStatus`, or a `BudgetExceeded` denial.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from kailash.nodes.base import NodeParameter, register_node

from external_agents.money import to_micros
from external_agents.nodes.base import dependency
from external_agents.nodes.invocation_state import AgentSnapshot, AuditEvent, BudgetExceeded, BudgetStatus, Invocation
from external_agents.nodes.invocation_step import InvocationStepNode
from external_agents.stores.budgets import AlertKind, BudgetLimits, BudgetRefusal, Reservation, claim_alert, reserve


@dataclass(frozen=True)
class BudgetThresholds:
    warning: float
    degradation: float


def budget_limits(agent: AgentSnapshot) -> BudgetLimits:
    return BudgetLimits(
        daily_micros=to_micros(agent.max_daily_cost),
        monthly_micros=to_micros(agent.max_monthly_cost),
        daily_executions=agent.daily_execution_limit,
        monthly_executions=agent.monthly_execution_limit,
    )


def budget_status(reservation: Reservation, *, limits: BudgetLimits, thresholds: BudgetThresholds) -> BudgetStatus:
    usage = reservation.month_spent_micros / limits.monthly_micros if limits.monthly_micros else 1.0
    return BudgetStatus(usage=usage, warning=usage >= thresholds.warning, degraded=usage >= thresholds.degradation)


def crossed(status: BudgetStatus) -> tuple[AlertKind, ...]:
    """The thresholds this invocation is past, each to be alerted once a month."""
    return tuple(kind for kind, past in (("warning", status.warning), ("degraded", status.degraded)) if past)


def threshold_event(kind: AlertKind, invocation: Invocation, usage: float) -> AuditEvent:
    return AuditEvent(
        event_type=f"external_agent.budget_{kind}",
        details={"usage_percentage": round(usage * 100, 2), "invocation_id": invocation.invocation_id},
    )


def apply_reservation(
    invocation: Invocation, outcome: Reservation | BudgetRefusal, *, limits: BudgetLimits, thresholds: BudgetThresholds
) -> Invocation:
    """The invocation with its reservation and budget standing, or denied by the refusal."""
    if isinstance(outcome, BudgetRefusal):
        return invocation.updated(denial=BudgetExceeded(refusal=outcome))
    status = budget_status(outcome, limits=limits, thresholds=thresholds)
    return invocation.updated(reservation=outcome, budget=status)


@register_node()
class BudgetReserveNode(InvocationStepNode):
    """Reserve `cost_per_execution`, or deny when a budget or execution limit would be exceeded."""

    def dependencies(self) -> dict[str, NodeParameter]:
        return {
            "engine": dependency("engine", "SQLAlchemy AsyncEngine"),
            "thresholds": dependency("thresholds", "BudgetThresholds: warning and degradation fractions"),
        }

    async def step(self, invocation: Invocation, **kw: Any) -> Invocation:
        engine, agent = kw["engine"], invocation.loaded_agent
        now = datetime.now(UTC)
        limits = budget_limits(agent)
        amount = to_micros(agent.cost_per_execution)
        outcome = await reserve(engine, agent_id=agent.id, amount_micros=amount, limits=limits, now=now)
        invocation = apply_reservation(invocation, outcome, limits=limits, thresholds=kw["thresholds"])
        if invocation.budget is None:
            return invocation
        events = [
            threshold_event(kind, invocation, invocation.budget.usage)
            for kind in crossed(invocation.budget)
            if await claim_alert(engine, agent_id=agent.id, now=now, kind=kind)
        ]
        return invocation.updated(*events)
