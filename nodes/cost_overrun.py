"""What one call may be billed when its platform reports its own cost: at most what admission reserved.

`cost_per_execution` is the most one call may cost, and admission reserves exactly that, so the budget holds
however many calls run at once. A platform that reports less is billed what it reported (the rest of the
reservation is released); one that reports more is billed the reservation, and the overrun is kept on the
lineage row (`reported_cost_usd`), audited as `external_agent.cost_overrun` and alerted once a day per agent
(nodes/alerts.py). Before this, 40 concurrent calls estimated at $0.01 that reported $1.00 each, against a
$2.00 daily budget, all succeeded and billed $40.00.
"""

from __future__ import annotations

from external_agents.money import to_micros, to_usd
from external_agents.nodes.invocation_state import AuditEvent, Delivered, Invocation

COST_OVERRUN_EVENT = "external_agent.cost_overrun"


def cap_micros(invocation: Invocation) -> int:
    """The most this call may be billed: its reservation, else (no budget step ran) the agent's estimate."""
    if invocation.reservation is not None:
        return invocation.reservation.amount_micros
    return to_micros(invocation.loaded_agent.cost_per_execution)


def billed_micros(invocation: Invocation, delivery: Delivered) -> int:
    """A delivered call's charge: what the platform reported, never more than the cap; the cap if it reported none."""
    cap = cap_micros(invocation)
    reported = delivery.reported_cost_micros
    return cap if reported is None else min(reported, cap)


def overrun_micros(invocation: Invocation) -> int | None:
    """The platform's reported cost when it is above what the call may be billed; None otherwise."""
    delivery = invocation.delivery
    if not isinstance(delivery, Delivered) or delivery.reported_cost_micros is None:
        return None
    return delivery.reported_cost_micros if delivery.reported_cost_micros > cap_micros(invocation) else None


def overrun_event(invocation: Invocation) -> AuditEvent | None:
    reported = overrun_micros(invocation)
    if reported is None:
        return None
    return AuditEvent(
        event_type=COST_OVERRUN_EVENT,
        details={
            "invocation_id": invocation.invocation_id,
            "reported_cost_usd": to_usd(reported),
            "billed_cost_usd": to_usd(cap_micros(invocation)),
        },
    )
