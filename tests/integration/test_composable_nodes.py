"""A host workflow composes some of the invocation's nodes with a node of its own, on SQLite and PostgreSQL.

The host's own node turns a support ticket into an invocation request; the feature's prepare, load, policy,
budget, deliver and record nodes do the rest (no rate limit, no alerts: the host left them out); a second node
of the host's turns the outcome into a reply. It runs on a plain AsyncLocalRuntime, delivering to the local
platform server, and everything the composed steps promise is checked where it lands.
"""

from __future__ import annotations

from datetime import UTC, datetime
from itertools import pairwise
from typing import Any

import sqlalchemy as sa
from kailash.nodes.base import NodeParameter, register_node
from kailash.nodes.base_async import AsyncNode
from kailash.runtime.async_local import AsyncLocalRuntime
from kailash.workflow.builder import WorkflowBuilder

# Importing a node module registers its nodes with Kailash, so the builder can name them.
import external_agents.nodes.delivery
import external_agents.nodes.governance.budget
import external_agents.nodes.governance.policy_check
import external_agents.nodes.invocation
import external_agents.nodes.record_invocation  # noqa: F401
from external_agents.models import TABLES
from external_agents.nodes.governance.budget import BudgetThresholds
from external_agents.nodes.governance.rate_limit import limits_of
from external_agents.nodes.invocation_state import AgentSnapshot
from external_agents.nodes.platforms.auth import OAuth2TokenCache
from external_agents.nodes.platforms.base import DeliveryOptions
from external_agents.stores.agents import get_agent
from external_agents.stores.budgets import period_ids
from tests.factories import register, rows
from tests.platform_server import ScriptedResponse


@register_node()
class TicketToInvocationNode(AsyncNode):
    """The host's own node: a support ticket becomes the request the feature's PrepareInvocationNode takes."""

    def get_parameters(self) -> dict[str, NodeParameter]:
        return {
            "ticket": NodeParameter(name="ticket", type=dict, required=True, description="{id, text, email}"),
            "agent_id": NodeParameter(name="agent_id", type=str, required=True, description="who answers"),
            "organization_id": NodeParameter(name="organization_id", type=str, required=True, description="whose"),
        }

    async def async_run(self, **kw: Any) -> dict[str, Any]:
        ticket = kw["ticket"]
        return {
            "caller": {"api_key_id": "helpdesk", "organization_id": kw["organization_id"]},
            "agent_id": kw["agent_id"],
            "identity": {
                "external_user_id": ticket["email"],
                "external_user_email": ticket["email"],
                "external_system": "helpdesk",
                "external_session_id": f"ticket-{ticket['id']}",
            },
            "body": {"input": ticket["text"], "metadata": {"ticket_id": ticket["id"]}},
        }


@register_node()
class TicketReplyNode(AsyncNode):
    """The host's own node after the feature's: the recorded outcome becomes the ticket's reply."""

    def get_parameters(self) -> dict[str, NodeParameter]:
        return {"outcome": NodeParameter(name="outcome", type=dict, required=True, description="the outcome")}

    async def async_run(self, **kw: Any) -> dict[str, Any]:
        outcome = kw["outcome"]
        return {"reply": {"status": outcome["status"], "answer": outcome["output"], "ref": outcome["invocation_id"]}}


def host_workflow(state: Any) -> Any:
    builder = WorkflowBuilder()
    builder.add_node("TicketToInvocationNode", "ticket", {})
    builder.add_node("PrepareInvocationNode", "prepare", {})
    builder.add_node("LoadInvocationAgentNode", "load_agent", {"engine": state.engine})
    builder.add_node(
        "PolicyCheckNode",
        "policy",
        {
            "policy_cache": state.policy_cache,
            "resolution": state.settings.external_agent_policy_conflict_resolution,
            "fail_mode": state.settings.external_agent_policy_fail_mode,
        },
    )
    builder.add_node(
        "BudgetReserveNode",
        "budget",
        {"engine": state.engine, "thresholds": BudgetThresholds(0.8, 0.9), "lease": state.lease},
    )
    builder.add_node(
        "DeliverInvocationNode",
        "deliver",
        {
            "cipher": state.cipher,
            "client": state.http_client,
            "options": DeliveryOptions(
                timeout_seconds=2, retry_attempts=1, allow_private_webhooks=True, allowed_webhook_domains=()
            ),
            "token_cache": OAuth2TokenCache(),
        },
    )
    builder.add_node("RecordInvocationNode", "record", {"engine": state.engine, "journal": state.journal})
    builder.add_node("TicketReplyNode", "reply", {})
    for output in ("caller", "agent_id", "identity", "body"):
        builder.add_connection("ticket", output, "prepare", output)
    steps = ("prepare", "load_agent", "policy", "budget", "deliver", "record")
    for upstream, downstream in pairwise(steps):
        builder.add_connection(upstream, "invocation", downstream, "invocation")
    builder.add_connection("record", "outcome", "reply", "outcome")
    return builder.build(name="helpdesk_ticket")


async def test_a_host_workflow_of_some_nodes_and_its_own_delivers_records_bills_and_settles(
    client, org, gateway, platform_server
):
    state = gateway.external_agents
    platform_server.script("/composed", ScriptedResponse(200, body={"answer": "restart it", "cost_usd": 0.02}))
    agent = await register(
        client, org, platform_server, path="/composed", name="composed", cost_per_execution=0.05, max_daily_cost=1.0
    )
    runtime = AsyncLocalRuntime(enable_monitoring=False)
    ticket = {"id": 7, "text": "my printer is on fire", "email": "ada@example.com"}

    results, _ = await runtime.execute_workflow_async(
        host_workflow(state),
        inputs={"ticket": {"ticket": ticket, "agent_id": agent["id"], "organization_id": org.organization_id}},
    )

    reply = results["reply"]["reply"]
    assert reply["status"] == "success" and reply["answer"] == {"answer": "restart it", "cost_usd": 0.02}
    [delivered] = platform_server.requests("/composed")
    assert delivered.json()["input"] == "my printer is on fire"
    assert delivered.headers["authorization"] == "Bearer platform-secret-token"
    [lineage] = await rows(gateway, "SELECT * FROM invocation_lineage WHERE id = :id", id=reply["ref"])
    assert (lineage["status"], lineage["external_system"], lineage["external_session_id"]) == (
        "success",
        "helpdesk",
        "ticket-7",
    )
    assert lineage["api_key_id"] == "helpdesk"
    record = (await client.get(f"/api/lineage/{reply['ref']}", headers=org.headers)).json()
    assert record["metadata"] == {"ticket_id": 7}
    [billing] = await rows(
        gateway, "SELECT cost_usd, external_agent_id FROM billing_usage WHERE id = :id", id=reply["ref"]
    )
    assert billing == {"cost_usd": 0.02, "external_agent_id": agent["id"]}
    # Reserved at the estimate (0.05), settled at the platform's reported cost (0.02), in both periods.
    day_id, month_id = period_ids(agent["id"], datetime.now(UTC))
    counters = TABLES["budget_counters"]
    async with state.engine.connect() as connection:
        spent = dict(
            (
                await connection.execute(
                    sa.select(counters.c.id, counters.c.spent_micros).where(counters.c.id.in_([day_id, month_id]))
                )
            ).all()
        )
    assert spent == {day_id: 20_000, month_id: 20_000}
    # The host left the rate limit out: nothing was counted against the agent's windows.
    row = await get_agent(state.engine, organization_id=org.organization_id, agent_id=agent["id"])
    standing = await state.limiter.peek(agent["id"], limits_of(AgentSnapshot.from_row(row)))
    assert standing.remaining == agent["requests_per_minute"]


async def test_a_policy_denial_in_the_host_workflow_skips_budget_and_delivery_and_is_recorded(
    client, org, gateway, platform_server
):
    state = gateway.external_agents
    agent = await register(client, org, platform_server, path="/composed-denied", name="composed-denied")
    policy = {
        "name": "no-helpdesk",
        "effect": "deny",
        "external_agent_id": agent["id"],
        "conditions": [{"type": "external_system", "systems": ["helpdesk"]}],
    }
    assert (await client.post("/api/policies", json=policy, headers=org.headers)).status_code == 201
    runtime = AsyncLocalRuntime(enable_monitoring=False)

    results, _ = await runtime.execute_workflow_async(
        host_workflow(state),
        inputs={
            "ticket": {
                "ticket": {"id": 8, "text": "hi", "email": "bob@example.com"},
                "agent_id": agent["id"],
                "organization_id": org.organization_id,
            }
        },
    )

    outcome = results["record"]["outcome"]
    assert outcome["status"] == "denied" and outcome["result"]["kind"] == "policy"
    assert "status_code" not in outcome["result"]
    assert platform_server.requests("/composed-denied") == []
    [lineage] = await rows(
        gateway, "SELECT status, denial_reason FROM invocation_lineage WHERE id = :id", id=outcome["invocation_id"]
    )
    assert lineage["status"] == "denied" and lineage["denial_reason"].startswith("Invocation denied by policy")
    assert await rows(gateway, "SELECT id FROM billing_usage WHERE id = :id", id=outcome["invocation_id"]) == []
    day_id, _ = period_ids(agent["id"], datetime.now(UTC))
    assert await rows(gateway, "SELECT spent_micros FROM budget_counters WHERE id = :id", id=day_id) in (
        [],
        [{"spent_micros": 0}],
    )
