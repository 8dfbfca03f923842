"""The budget step of an invocation: reserve the estimated cost against the agent's daily and monthly budgets.

The reservation is exact under concurrency (see stores/budgets.py); warning and degradation thresholds are
flagged on every invocation past them, and their audit event is written once per month across instances.
With the reservation, in its transaction, the invocation's lineage row is written as `pending`, owned by this
process and leased until its delivery's deadline (stores/pending.py): a process that dies mid-delivery leaves
a row any instance settles. The reservation is settled (or released) and the row completed by
`RecordInvocationNode`, in the transaction that records the call.

Usage in a host workflow::

    builder.add_node("BudgetReserveNode", "budget", {
        "engine": engine, "thresholds": BudgetThresholds(warning=0.8, degradation=0.9),
        "lease": PendingLease(instance_id="...", seconds=delivery_lease_seconds(options))})
    builder.add_connection("rate_limit", "invocation", "budget", "invocation")

Input `invocation`; output `invocation` with its `Reservation` and `BudgetStatus`, or a `BudgetExceeded` denial.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

from kailash.nodes.base import NodeParameter, register_node

from external_agents.money import to_micros, to_usd
from external_agents.nodes.base import dependency
from external_agents.nodes.invocation_state import AgentSnapshot, AuditEvent, BudgetExceeded, BudgetStatus, Invocation
from external_agents.nodes.invocation_step import InvocationStepNode
from external_agents.nodes.platforms.base import DeliveryOptions
from external_agents.stores.budgets import AlertKind, BudgetLimits, BudgetRefusal, Reservation, claim_alert, reserve


@dataclass(frozen=True)
class BudgetThresholds:
    warning: float
    degradation: float


# Beyond the delivery itself: the alert step, the record step's retries of a lost database
# (stores/invocations.py RECORD_RETRY_SECONDS) and clock differences between instances.
LEASE_MARGIN_SECONDS = 60.0


@dataclass(frozen=True)
class PendingLease:
    """Who owns this process's pending rows, and for how long after reserving before others may settle them."""

    instance_id: str
    seconds: float


def delivery_lease_seconds(options: DeliveryOptions, *, margin_seconds: float = LEASE_MARGIN_SECONDS) -> float:
    """The longest a delivery can take (every attempt timing out, the longest wait between attempts) plus
    `margin_seconds`: a pending row older than this has lost its process."""
    attempts = 1 + options.retry_attempts
    longest_wait = max(options.max_retry_after_seconds, options.backoff_base_seconds * 2**options.retry_attempts)
    waits = options.retry_attempts * (longest_wait + options.backoff_base_seconds)
    return attempts * options.timeout_seconds + waits + margin_seconds


def pending_row(invocation: Invocation, *, amount_micros: int, lease: PendingLease, now: datetime) -> dict[str, Any]:
    """The lineage row written with the reservation: everything known before delivery, the reservation as
    its cost (stores/pending.py PENDING_COLUMNS)."""
    return {
        **invocation.request_columns(),
        "cost_usd": to_usd(amount_micros),
        "instance_id": lease.instance_id,
        "lease_expires_at": now + timedelta(seconds=lease.seconds),
    }


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
            "lease": dependency("lease", "PendingLease: this process's id and its pending rows' lease"),
        }

    async def step(self, invocation: Invocation, **kw: Any) -> Invocation:
        engine, agent = kw["engine"], invocation.loaded_agent
        now = datetime.now(UTC)
        limits = budget_limits(agent)
        amount = to_micros(agent.cost_per_execution)
        row = pending_row(invocation, amount_micros=amount, lease=kw["lease"], now=now)
        outcome = await reserve(
            engine, agent_id=agent.id, amount_micros=amount, limits=limits, now=now, pending_row=row
        )
        invocation = apply_reservation(invocation, outcome, limits=limits, thresholds=kw["thresholds"])
        if invocation.budget is None:
            return invocation
        events = [
            threshold_event(kind, invocation, invocation.budget.usage)
            for kind in crossed(invocation.budget)
            if await claim_alert(engine, agent_id=agent.id, now=now, kind=kind)
        ]
        return invocation.updated(*events)
