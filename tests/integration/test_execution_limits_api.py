"""Per-agent daily and monthly execution limits, set through the API, on SQLite and PostgreSQL.

Registered or patched like any other limit, shown on the agent and in governance-status, enforced by the
budget step with a 402 that names the limit, exact under concurrency, and cleared by PATCHing null.
"""

from __future__ import annotations

import asyncio

import pytest

from tests.factories import invoke, register, rows

ROOMY = {"requests_per_minute": 1_000, "max_daily_cost": 100.0, "max_monthly_cost": 1_000.0}


async def status_of(client, org, agent_id: str) -> dict:
    response = await client.get(f"/api/external-agents/{agent_id}/governance-status", headers=org.headers)
    assert response.status_code == 200, response.text
    return response.json()["budget"]


async def test_no_execution_limit_unless_one_is_set(client, org, platform_server):
    agent = await register(client, org, platform_server, **ROOMY)

    assert (agent["daily_execution_limit"], agent["monthly_execution_limit"]) == (None, None)
    budget = await status_of(client, org, agent["id"])
    assert (budget["monthly_execution_limit"], budget["remaining_executions"]) == (None, None)


@pytest.mark.parametrize(
    ("field", "period"), [("monthly_execution_limit", "Monthly"), ("daily_execution_limit", "Daily")]
)
async def test_limit_admits_exactly_that_many_then_402_naming_it(client, org, gateway, platform_server, field, period):
    agent = await register(client, org, platform_server, cost_per_execution=0.01, **ROOMY, **{field: 2})
    assert agent[field] == 2

    codes = [(await invoke(client, org, agent["id"])).status_code for _ in range(2)]
    refused = await invoke(client, org, agent["id"])

    assert codes == [200, 200]
    body = refused.json()
    assert refused.status_code == 402 and body["error_code"] == "BUDGET_EXCEEDED"
    assert body["detail"] == f"{period} execution limit exceeded for this agent"
    assert len(platform_server.requests("/hook")) == 2
    [row] = await rows(
        gateway, "SELECT status, denial_reason FROM invocation_lineage WHERE id = :id", id=body["invocation_id"]
    )
    assert row["status"] == "denied" and "execution limit" in row["denial_reason"]
    events = await rows(
        gateway,
        "SELECT event_type FROM audit_log WHERE resource_id = :id AND event_type = 'external_agent.budget_exceeded'",
        id=agent["id"],
    )
    assert len(events) == 1
    billed = await rows(gateway, "SELECT cost_usd FROM billing_usage WHERE external_agent_id = :id", id=agent["id"])
    assert len(billed) == 2


async def test_governance_status_counts_against_the_monthly_limit(client, org, platform_server):
    agent = await register(client, org, platform_server, monthly_execution_limit=5, **ROOMY)
    for _ in range(2):
        assert (await invoke(client, org, agent["id"])).status_code == 200

    budget = await status_of(client, org, agent["id"])

    assert budget["monthly_execution_limit"] == 5
    assert budget["monthly_execution_count"] == 2
    assert budget["remaining_executions"] == 3


async def test_concurrent_invocations_admit_exactly_the_limit(client, org, gateway, platform_server):
    agent = await register(client, org, platform_server, daily_execution_limit=7, **ROOMY)

    responses = await asyncio.gather(*(invoke(client, org, agent["id"]) for _ in range(20)))

    codes = sorted(r.status_code for r in responses)
    assert codes == [200] * 7 + [402] * 13
    assert len(platform_server.requests("/hook")) == 7
    statuses = await rows(
        gateway, "SELECT status FROM invocation_lineage WHERE external_agent_id = :id", id=agent["id"]
    )
    assert sorted(s["status"] for s in statuses) == ["denied"] * 13 + ["success"] * 7


async def test_patch_sets_changes_and_clears_a_limit(client, org, platform_server):
    agent = await register(client, org, platform_server, **ROOMY)
    url = f"/api/external-agents/{agent['id']}"

    limited = await client.patch(url, json={"monthly_execution_limit": 1}, headers=org.headers)
    assert limited.status_code == 200 and limited.json()["monthly_execution_limit"] == 1
    assert (await invoke(client, org, agent["id"])).status_code == 200
    assert (await invoke(client, org, agent["id"])).status_code == 402

    both = await client.patch(
        url, json={"daily_execution_limit": 10, "monthly_execution_limit": 3}, headers=org.headers
    )
    assert (both.json()["daily_execution_limit"], both.json()["monthly_execution_limit"]) == (10, 3)
    # A PATCH of one limit leaves the other as it was.
    one = await client.patch(url, json={"daily_execution_limit": 9}, headers=org.headers)
    assert (one.json()["daily_execution_limit"], one.json()["monthly_execution_limit"]) == (9, 3)

    cleared = await client.patch(url, json={"monthly_execution_limit": None}, headers=org.headers)
    assert cleared.status_code == 200 and cleared.json()["monthly_execution_limit"] is None
    fetched = (await client.get(url, headers=org.headers)).json()
    assert (fetched["daily_execution_limit"], fetched["monthly_execution_limit"]) == (9, None)
    codes = [(await invoke(client, org, agent["id"])).status_code for _ in range(3)]
    assert codes == [200, 200, 200]


async def test_patching_other_fields_keeps_the_limits(client, org, platform_server):
    agent = await register(client, org, platform_server, daily_execution_limit=4, monthly_execution_limit=40, **ROOMY)

    response = await client.patch(
        f"/api/external-agents/{agent['id']}", json={"description": "renamed"}, headers=org.headers
    )

    assert response.status_code == 200
    assert (response.json()["daily_execution_limit"], response.json()["monthly_execution_limit"]) == (4, 40)


@pytest.mark.parametrize("bad", [0, -1, 1.5, "3", True, 10**10])
async def test_bad_limit_is_400_naming_the_field_and_stores_nothing(client, org, gateway, platform_server, bad):
    created = await client.post(
        "/api/external-agents",
        json={
            "name": "bad-limit",
            "platform": "custom_http",
            "platform_config": {"url": platform_server.url("/hook")},
            "daily_execution_limit": bad,
        },
        headers=org.headers,
    )
    assert created.status_code == 400 and "daily_execution_limit" in created.json()["detail"]
    assert await rows(gateway, "SELECT id FROM external_agents WHERE name = 'bad-limit'") == []

    agent = await register(client, org, platform_server, monthly_execution_limit=6, **ROOMY)
    patched = await client.patch(
        f"/api/external-agents/{agent['id']}", json={"monthly_execution_limit": bad}, headers=org.headers
    )
    assert patched.status_code == 400 and "monthly_execution_limit" in patched.json()["detail"]
    fetched = (await client.get(f"/api/external-agents/{agent['id']}", headers=org.headers)).json()
    assert fetched["monthly_execution_limit"] == 6


async def test_deleting_an_agent_deletes_its_limits(client, org, gateway, platform_server):
    agent = await register(client, org, platform_server, daily_execution_limit=3, **ROOMY)
    assert await rows(gateway, "SELECT * FROM external_agent_limits WHERE external_agent_id = :id", id=agent["id"])

    response = await client.delete(f"/api/external-agents/{agent['id']}", headers=org.headers)

    assert response.status_code == 204
    assert (
        await rows(gateway, "SELECT * FROM external_agent_limits WHERE external_agent_id = :id", id=agent["id"]) == []
    )


async def test_limits_are_listed_with_the_agent(client, org, platform_server):
    await register(client, org, platform_server, name="listed", monthly_execution_limit=12, **ROOMY)

    listing = (await client.get("/api/external-agents?search=listed", headers=org.headers)).json()

    [item] = listing["items"]
    assert (item["daily_execution_limit"], item["monthly_execution_limit"]) == (None, 12)
