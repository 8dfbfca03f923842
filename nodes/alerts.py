"""Budget alerts: when an invocation crosses its agent's warning or degradation threshold, tell the
organisation's alert channel.

The alert channel is the organisation's external agent named EXTERNAL_AGENT_ALERT_CHANNEL_NAME (any platform).
Each threshold alerts once per agent and month (BudgetReserveNode claims it); an alert is an operational
message, delivered without governance, and its failure never fails the invocation.
"""

from __future__ import annotations

import logging
import uuid
from typing import Any

import httpx
from kailash.nodes.base import register_node

from external_agents.errors import PlatformError
from external_agents.nodes.base import ExternalAgentNode, dependency, value
from external_agents.nodes.delivery import delivery_request, unseal
from external_agents.nodes.invocation import agent_view, denied
from external_agents.nodes.platforms import get_adapter
from external_agents.nodes.platforms.auth import OAuth2TokenCache
from external_agents.nodes.platforms.base import DeliveryOptions
from external_agents.nodes.platforms.delivery import deliver
from external_agents.stores.agents import get_agent_by_name
from external_agents.stores.database import database_unavailable

logger = logging.getLogger(__name__)

ALERT_EVENTS = ("external_agent.budget_warning", "external_agent.budget_degraded")


def alert_message(event: dict[str, Any], agent: dict[str, Any]) -> dict[str, Any]:
    kind = event["event_type"].removeprefix("external_agent.budget_")
    usage = event["details"]["usage_percentage"]
    return {
        "alert": f"budget_{kind}",
        "agent_id": agent["id"],
        "agent_name": agent["name"],
        "usage_percentage": usage,
        "message": f"External agent '{agent['name']}' has used {usage}% of its monthly budget ({kind}).",
    }


@register_node()
class SendBudgetAlertsNode(ExternalAgentNode):
    """Deliver this invocation's threshold alerts, if any, to the organisation's alert channel."""

    def get_parameters(self) -> dict[str, Any]:
        return {
            "engine": dependency("engine", "SQLAlchemy AsyncEngine"),
            "cipher": dependency("cipher", "CredentialCipher"),
            "client": dependency("client", "httpx.AsyncClient"),
            "options": dependency("options", "DeliveryOptions"),
            "token_cache": dependency("token_cache", "OAuth2TokenCache"),
            "channel_name": dependency("channel_name", "name of the organisation's alert agent"),
            "invocation": value("invocation", "the invocation so far"),
        }

    async def async_run(self, **kw: Any) -> dict[str, Any]:
        invocation = kw["invocation"]
        alerts = [e for e in invocation["audit_events"] if e["event_type"] in ALERT_EVENTS]
        if denied(invocation) or not alerts:
            return {"invocation": invocation}
        try:
            channel = await get_agent_by_name(
                kw["engine"], organization_id=invocation["caller"]["organization_id"], name=kw["channel_name"]
            )
        except Exception as exc:
            # The invocation is delivered: losing its alert beats losing its record, which comes next.
            if not database_unavailable(exc):
                raise
            logger.warning("budget_alert.skipped reason=database_unavailable error=%s", type(exc).__name__)
            return {"invocation": invocation}
        if channel is None:
            return {"invocation": invocation}
        client: httpx.AsyncClient = kw["client"]
        options: DeliveryOptions = kw["options"]
        token_cache: OAuth2TokenCache = kw["token_cache"]
        view = agent_view(channel)
        sealed = unseal(kw["cipher"], view)
        sent = []
        for event in alerts:
            request = delivery_request(
                agent=view,
                sealed=sealed,
                invocation_id=f"alert-{uuid.uuid4()}",
                trace_id=invocation["trace_id"],
                input=alert_message(event, invocation["agent"]),
                context={},
                identity={"external_system": "external-agents"},
            )
            try:
                await deliver(
                    request,
                    adapter=get_adapter(view["platform"]),
                    client=client,
                    options=options,
                    token_cache=token_cache,
                )
                sent.append(event["event_type"])
            except PlatformError as exc:
                logger.warning("budget_alert.failed channel=%s error=%s", view["id"], type(exc).__name__)
        return {"invocation": {**invocation, "alerts_sent": sent}}
