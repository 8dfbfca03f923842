"""Budget alerts: when an invocation crosses its agent's warning or degradation threshold, tell the
organisation's alert channel.

The alert channel is the organisation's external agent named EXTERNAL_AGENT_ALERT_CHANNEL_NAME (any platform).
Each threshold alerts once per agent and month (BudgetReserveNode claims it); a cost overrun (a platform
reporting more than cost_per_execution, nodes/cost_overrun.py) alerts once per agent and UTC day, claimed
here. An alert is an operational message, delivered without governance, and its failure never fails the
invocation.
"""

from __future__ import annotations

import logging
import uuid
from typing import Any

from kailash.nodes.base import NodeParameter, register_node
from sqlalchemy.ext.asyncio import AsyncEngine

from external_agents.errors import PlatformError
from external_agents.identity import Identity
from external_agents.nodes.base import dependency
from external_agents.nodes.cost_overrun import COST_OVERRUN_EVENT
from external_agents.nodes.delivery import delivery_request, unseal
from external_agents.nodes.invocation_state import AgentSnapshot, AuditEvent, Invocation
from external_agents.nodes.invocation_step import InvocationStepNode
from external_agents.nodes.platforms import get_adapter
from external_agents.nodes.platforms.auth import OAuth2TokenCache
from external_agents.nodes.platforms.base import DeliveryOptions
from external_agents.nodes.platforms.delivery import deliver
from external_agents.nodes.platforms.http_client import PlatformClient
from external_agents.stores.agents import get_agent_by_name
from external_agents.stores.database import database_unavailable
from external_agents.stores.overrun_alerts import claim_overrun_alert

logger = logging.getLogger(__name__)

ALERT_EVENTS = ("external_agent.budget_warning", "external_agent.budget_degraded")


def alerts_of(invocation: Invocation) -> list[AuditEvent]:
    """The threshold events this invocation claimed (see BudgetReserveNode), each to be sent as an alert."""
    return [event for event in invocation.audit_events if event.event_type in ALERT_EVENTS]


def alert_message(event: AuditEvent, agent: AgentSnapshot) -> dict[str, Any]:
    kind = event.event_type.removeprefix("external_agent.budget_")
    usage = event.details["usage_percentage"]
    return {
        "alert": f"budget_{kind}",
        "agent_id": agent.id,
        "agent_name": agent.name,
        "usage_percentage": usage,
        "message": f"External agent '{agent.name}' has used {usage}% of its monthly budget ({kind}).",
    }


def overrun_message(event: AuditEvent, agent: AgentSnapshot) -> dict[str, Any]:
    reported, billed = event.details["reported_cost_usd"], event.details["billed_cost_usd"]
    return {
        "alert": "cost_overrun",
        "agent_id": agent.id,
        "agent_name": agent.name,
        "reported_cost_usd": reported,
        "billed_cost_usd": billed,
        "message": (
            f"External agent '{agent.name}' reported a cost of ${reported} for one call, above its cost_per_execution;"
            f" ${billed} was billed. Raise cost_per_execution if the platform's price has changed."
        ),
    }


async def claimed_overrun(engine: AsyncEngine, invocation: Invocation) -> AuditEvent | None:
    """This invocation's overrun event, if it has one and is the first of its agent's UTC day to claim the alert."""
    event = next((e for e in invocation.audit_events if e.event_type == COST_OVERRUN_EVENT), None)
    if event is None or invocation.reservation is None:
        return None
    return event if await claim_overrun_alert(engine, day_id=invocation.reservation.day_id) else None


@register_node()
class SendBudgetAlertsNode(InvocationStepNode):
    """Deliver this invocation's threshold and overrun alerts, if any, to the organisation's alert channel."""

    def dependencies(self) -> dict[str, NodeParameter]:
        return {
            "engine": dependency("engine", "SQLAlchemy AsyncEngine"),
            "cipher": dependency("cipher", "CredentialCipher"),
            "client": dependency("client", "PlatformClient"),
            "options": dependency("options", "DeliveryOptions"),
            "token_cache": dependency("token_cache", "OAuth2TokenCache"),
            "channel_name": dependency("channel_name", "name of the organisation's alert agent"),
        }

    async def step(self, invocation: Invocation, **kw: Any) -> Invocation:
        alerts = alerts_of(invocation)
        try:
            # Claimed before the alert channel is looked up: the claim is what limits overrun alerts to one a day.
            overrun = await claimed_overrun(kw["engine"], invocation)
            if not alerts and overrun is None:
                return invocation
            channel = await get_agent_by_name(
                kw["engine"], organization_id=invocation.caller.organization_id, name=kw["channel_name"]
            )
        except Exception as exc:
            # The invocation is delivered: losing its alert beats losing its record, which comes next.
            if not database_unavailable(exc):
                raise
            logger.warning("budget_alert.skipped reason=database_unavailable error=%s", type(exc).__name__)
            return invocation
        if channel is None:
            return invocation
        client: PlatformClient = kw["client"]
        options: DeliveryOptions = kw["options"]
        token_cache: OAuth2TokenCache = kw["token_cache"]
        view = AgentSnapshot.from_row(channel)
        sealed = unseal(kw["cipher"], view)
        agent = invocation.loaded_agent
        messages = [alert_message(event, agent) for event in alerts]
        if overrun is not None:
            messages.append(overrun_message(overrun, agent))
        for message in messages:
            request = delivery_request(
                agent=view,
                sealed=sealed,
                invocation_id=f"alert-{uuid.uuid4()}",
                trace_id=invocation.trace_id,
                input=message,
                context={},
                identity=Identity(external_system="external-agents"),
            )
            try:
                await deliver(
                    request, adapter=get_adapter(view.platform), client=client, options=options, token_cache=token_cache
                )
            except PlatformError as exc:
                logger.warning("budget_alert.failed channel=%s error=%s", view.id, type(exc).__name__)
        return invocation
