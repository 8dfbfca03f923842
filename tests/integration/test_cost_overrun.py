"""Never overspent when platforms report their own cost: cost_per_execution is the most a call is billed, on
SQLite and PostgreSQL (issue 11, point 5).

Before: 40 concurrent calls estimated at $0.01 that reported $1.00 each, against a $2.00 daily budget, all
succeeded and billed $40.00.
"""

from __future__ import annotations

import asyncio

from tests.factories import invoke, register, rows
from tests.platform_server import ScriptedResponse

CALLS = 40


async def test_forty_calls_reporting_more_than_their_estimate_bill_at_most_the_budget(
    gateway, client, org, platform_server
) -> None:
    path = f"/overrun-{org.organization_id}"
    platform_server.script(path, *[ScriptedResponse(200, headers={"X-Cost-USD": "1.00"}, body={"ok": True})] * CALLS)
    alerts_path = f"/alerts-{org.organization_id}"
    platform_server.script(alerts_path, ScriptedResponse(200, body="ok"))
    await register(client, org, platform_server, path=alerts_path, name="alerts")
    agent = await register(
        client,
        org,
        platform_server,
        path=path,
        cost_per_execution=0.01,
        max_daily_cost=2.0,
        max_monthly_cost=100.0,
        requests_per_minute=1000,
        requests_per_hour=1000,
        requests_per_day=1000,
    )

    responses = await asyncio.gather(*(invoke(client, org, agent["id"]) for _ in range(CALLS)))

    assert [r.status_code for r in responses] == [200] * CALLS
    assert {r.json()["metadata"]["cost_usd"] for r in responses} == {0.01}
    billed = await rows(gateway, "SELECT cost_usd FROM billing_usage WHERE external_agent_id = :id", id=agent["id"])
    assert len(billed) == CALLS and round(sum(b["cost_usd"] for b in billed), 6) == 0.40 <= 2.0
    lineage = await rows(
        gateway,
        "SELECT cost_usd, reported_cost_usd FROM invocation_lineage WHERE external_agent_id = :id",
        id=agent["id"],
    )
    assert [(row["cost_usd"], row["reported_cost_usd"]) for row in lineage] == [(0.01, 1.0)] * CALLS
    overruns = await rows(
        gateway,
        "SELECT details FROM audit_log WHERE resource_id = :id AND event_type = 'external_agent.cost_overrun'",
        id=agent["id"],
    )
    assert len(overruns) == CALLS
    one = (await client.get(f"/api/lineage/{responses[0].json()['invocation_id']}", headers=org.headers)).json()
    assert (one["cost_usd"], one["reported_cost_usd"]) == (0.01, 1.0)
    # One alert for the agent's day, however many overruns and concurrent calls.
    alerts = platform_server.requests(alerts_path)
    assert len(alerts) == 1
    assert alerts[0].json()["input"]["alert"] == "cost_overrun"
    status = (await client.get(f"/api/external-agents/{agent['id']}/governance-status", headers=org.headers)).json()
    assert status["budget"]["daily_spent_usd"] == 0.40
    assert status["budget"]["max_billed_per_call_usd"] == 0.01


async def test_a_call_reporting_the_whole_budget_cannot_take_more_than_its_reservation(
    gateway, client, org, platform_server
) -> None:
    path = f"/overrun-big-{org.organization_id}"
    platform_server.script(path, *[ScriptedResponse(200, headers={"X-Cost-USD": "999"}, body={"ok": True})] * 2)
    agent = await register(
        client, org, platform_server, path=path, cost_per_execution=0.5, max_daily_cost=1.0, requests_per_minute=100
    )

    statuses = [(await invoke(client, org, agent["id"])).status_code for _ in range(3)]

    # $0.50 a call against $1.00 a day: two calls, then 402, whatever the platform says it charged.
    assert statuses == [200, 200, 402]
    billed = await rows(gateway, "SELECT cost_usd FROM billing_usage WHERE external_agent_id = :id", id=agent["id"])
    assert sorted(b["cost_usd"] for b in billed) == [0.5, 0.5]
