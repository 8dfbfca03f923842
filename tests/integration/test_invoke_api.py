"""Invoking an agent over REST against a real local platform server, on SQLite and PostgreSQL.

Covers the response contract, governance denials (403, 429, 402) and what each leaves behind: lineage,
billing, budget counters, audit rows, and whether the platform was reached.
"""

from __future__ import annotations

import pytest

from tests.factories import IDENTITY, invoke, new_org, register, rows
from tests.platform_server import ScriptedResponse, closed_port_url


async def test_invoke_delivers_and_records_everything(client, org, gateway, platform_server):
    platform_server.script("/hook", ScriptedResponse(200, body={"answer": 42, "cost_usd": 0.02}))
    agent = await register(client, org, platform_server, cost_per_execution=0.05)
    text = "please delete from my calendar -- ${agent_id} 😀"
    response = await invoke(
        client,
        org,
        agent["id"],
        body={"input": {"q": text}, "context": {"role": "ops"}},
        headers={"X-External-User-Name": "Ada", "X-External-Context": '{"environment": "prod"}'},
    )
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["status"] == "success" and body["output"] == {"answer": 42, "cost_usd": 0.02}
    assert body["metadata"]["webhook_delivered"] is True and body["metadata"]["cost_usd"] == 0.02
    assert response.headers["X-Kaizen-Invocation-ID"] == body["invocation_id"]
    assert response.headers["X-Kaizen-Trace-ID"] == body["trace_id"]
    assert response.headers["X-Kaizen-Cost-USD"] == "0.020000"
    assert float(response.headers["X-Kaizen-Duration-MS"]) > 0
    assert (response.headers["X-RateLimit-Limit"], response.headers["X-RateLimit-Remaining"]) == ("10", "9")
    assert "platform-secret-token" not in response.text

    [received] = platform_server.requests("/hook")
    assert received.headers["authorization"] == "Bearer platform-secret-token"
    sent = received.json()
    assert sent["input"] == {"q": text}
    assert sent["context"] == {"environment": "prod", "role": "ops"}

    [row] = await rows(gateway, "SELECT * FROM invocation_lineage WHERE id = :id", id=body["invocation_id"])
    assert (row["status"], row["external_user_email"], row["external_user_name"]) == (
        "success",
        "test@example.com",
        "Ada",
    )
    assert (row["external_system"], row["external_session_id"], row["platform"]) == (
        "test",
        "test-session-123",
        "custom_http",
    )
    assert row["organization_id"] == org.organization_id and row["external_agent_id"] == agent["id"]
    assert row["cost_usd"] == 0.02 and row["webhook_delivery_status"] == "delivered"
    [billing] = await rows(gateway, "SELECT * FROM billing_usage WHERE id = :id", id=body["invocation_id"])
    assert billing["cost_usd"] == 0.02 and billing["external_agent_id"] == agent["id"]
    events = await rows(gateway, "SELECT event_type, details FROM audit_log WHERE resource_id = :id", id=agent["id"])
    types = [e["event_type"] for e in events]
    assert "external_agent.invoked" in types and "external_agent.credentials_accessed" in types
    assert "platform-secret-token" not in repr(events)

    detail = (await client.get(f"/api/external-agents/{agent['id']}", headers=org.headers)).json()
    assert detail["governance"]["monthly_spent_usd"] == 0.02


@pytest.mark.parametrize("missing", list(IDENTITY))
async def test_missing_identity_header_is_400_naming_it(client, org, platform_server, missing):
    agent = await register(client, org, platform_server)
    headers = {**org.headers, **{k: v for k, v in IDENTITY.items() if k != missing}}
    response = await client.post(f"/api/external-agents/{agent['id']}/invoke", json={"input": "x"}, headers=headers)
    assert response.status_code == 400
    assert missing in response.json()["detail"]
    assert platform_server.requests("/hook") == []


@pytest.mark.parametrize(
    ("body", "headers", "fragment"),
    [
        ({}, {}, "input"),
        ({"input": "x", "extra": 1}, {}, "extra"),
        ({"input": "x"}, {"X-External-Context": "[1]"}, "X-External-Context"),
        ({"input": "x"}, {"X-External-Context": "{bad"}, "X-External-Context"),
        ({"input": "x"}, {"X-External-User-Email": "not-an-email"}, "X-External-User-Email"),
        ({"input": "x", "context": "ctx"}, {}, "context"),
    ],
)
async def test_bad_invocation_is_400_and_delivers_nothing(client, org, platform_server, body, headers, fragment):
    agent = await register(client, org, platform_server)
    response = await invoke(client, org, agent["id"], body=body, headers=headers)
    assert response.status_code == 400, response.text
    assert fragment in response.json()["detail"]
    assert platform_server.requests("/hook") == []


async def test_other_organisations_agent_is_404(client, org, gateway, platform_server):
    agent = await register(client, org, platform_server)
    other = await new_org(gateway)
    response = await invoke(client, other, agent["id"])
    assert response.status_code == 404 and platform_server.requests("/hook") == []


async def test_rate_limit_is_429_with_retry_after_and_recorded(client, org, gateway, platform_server):
    agent = await register(client, org, platform_server, requests_per_minute=2)
    assert [(await invoke(client, org, agent["id"])).status_code for _ in range(2)] == [200, 200]
    refused = await invoke(client, org, agent["id"])
    assert refused.status_code == 429
    body = refused.json()
    assert body["error_code"] == "RATE_LIMIT_EXCEEDED" and body["limit"] == 2 and body["remaining"] == 0
    assert body["retry_after_seconds"] >= 1 and refused.headers["Retry-After"] == str(body["retry_after_seconds"])
    assert "reset_time" in body and refused.headers["X-RateLimit-Remaining"] == "0"
    assert len(platform_server.requests("/hook")) == 2
    [row] = await rows(
        gateway,
        "SELECT status, denial_reason, cost_usd FROM invocation_lineage WHERE id = :id",
        id=body["invocation_id"],
    )
    assert row["status"] == "denied" and "Rate limit" in row["denial_reason"] and row["cost_usd"] == 0
    events = await rows(
        gateway,
        "SELECT event_type FROM audit_log WHERE resource_id = :id "
        "AND event_type = 'external_agent.rate_limit_exceeded'",
        id=agent["id"],
    )
    assert len(events) == 1


async def test_budget_allows_exactly_three_then_402(client, org, gateway, platform_server):
    agent = await register(
        client, org, platform_server, max_daily_cost=0.30, cost_per_execution=0.10, requests_per_minute=100
    )
    codes = [(await invoke(client, org, agent["id"])).status_code for _ in range(4)]
    assert codes == [200, 200, 200, 402]
    refused = await invoke(client, org, agent["id"])
    body = refused.json()
    assert refused.status_code == 402 and body["error_code"] == "BUDGET_EXCEEDED"
    assert body["budget_limit"] == 0.3 and body["budget_remaining"] == 0.0
    assert len(platform_server.requests("/hook")) == 3
    billed = await rows(gateway, "SELECT cost_usd FROM billing_usage WHERE external_agent_id = :id", id=agent["id"])
    assert sorted(b["cost_usd"] for b in billed) == [0.1, 0.1, 0.1]


async def test_failure_before_reaching_platform_releases_the_reservation(client, org, gateway, platform_server):
    agent = await register(client, org, platform_server, url=closed_port_url("/gone"), name="unreachable")
    response = await invoke(client, org, agent["id"])
    assert response.status_code == 502 and response.json()["error_code"] == "PLATFORM_ERROR"
    assert "platform-secret-token" not in response.text
    [row] = await rows(
        gateway,
        "SELECT status, cost_usd, webhook_delivery_error FROM invocation_lineage WHERE id = :id",
        id=response.json()["invocation_id"],
    )
    assert row["status"] == "failure" and row["cost_usd"] == 0 and row["webhook_delivery_error"]
    assert await rows(gateway, "SELECT id FROM billing_usage WHERE external_agent_id = :id", id=agent["id"]) == []
    detail = (await client.get(f"/api/external-agents/{agent['id']}", headers=org.headers)).json()
    assert detail["governance"]["daily_spent_usd"] == 0.0


async def test_platform_error_after_reaching_it_is_billed_at_the_estimate(client, org, gateway, platform_server):
    platform_server.script("/hook", *[ScriptedResponse(400, body="bad request")])
    agent = await register(client, org, platform_server, cost_per_execution=0.07)
    response = await invoke(client, org, agent["id"])
    assert response.status_code == 502
    assert len(platform_server.requests("/hook")) == 1  # a 400 is never retried
    [billing] = await rows(gateway, "SELECT cost_usd FROM billing_usage WHERE external_agent_id = :id", id=agent["id"])
    assert billing["cost_usd"] == 0.07


async def test_trace_id_links_child_to_parent(client, org, gateway, platform_server):
    agent = await register(client, org, platform_server)
    first = (await invoke(client, org, agent["id"])).json()
    second = (await invoke(client, org, agent["id"], headers={"X-External-Trace-ID": first["trace_id"]})).json()
    third = (await invoke(client, org, agent["id"], headers={"X-External-Trace-ID": second["trace_id"]})).json()
    found = await rows(
        gateway,
        "SELECT id, parent_invocation_id FROM invocation_lineage WHERE id IN (:a, :b, :c)",
        a=first["invocation_id"],
        b=second["invocation_id"],
        c=third["invocation_id"],
    )
    parents = {r["id"]: r["parent_invocation_id"] for r in found}
    assert parents == {
        first["invocation_id"]: None,
        second["invocation_id"]: first["invocation_id"],
        third["invocation_id"]: second["invocation_id"],
    }


async def test_degraded_header_past_the_threshold(client, org, gateway, platform_server):
    agent = await register(
        client,
        org,
        platform_server,
        max_monthly_cost=1.0,
        max_daily_cost=1.0,
        cost_per_execution=0.45,
        requests_per_minute=100,
    )
    first = await invoke(client, org, agent["id"])
    assert "X-Kaizen-Budget-Degraded" not in first.headers
    second = await invoke(client, org, agent["id"])
    assert second.status_code == 200 and second.headers["X-Kaizen-Budget-Degraded"] == "true"
    events = await rows(
        gateway,
        "SELECT event_type FROM audit_log WHERE resource_id = :id AND event_type LIKE 'external_agent.budget_%'",
        id=agent["id"],
    )
    assert sorted(e["event_type"] for e in events) == [
        "external_agent.budget_degraded",
        "external_agent.budget_warning",
    ]
    third = await invoke(client, org, agent["id"])
    assert third.status_code == 402


async def test_invocations_of_an_agent_are_listed_with_filters(client, org, gateway, platform_server):
    agent = await register(client, org, platform_server, requests_per_minute=2)
    for _ in range(3):
        await invoke(client, org, agent["id"])
    page = (await client.get(f"/api/external-agents/{agent['id']}/invocations", headers=org.headers)).json()
    assert page["total"] == 3 and {i["status"] for i in page["items"]} == {"success", "denied"}
    denied = await client.get(f"/api/external-agents/{agent['id']}/invocations?status=denied", headers=org.headers)
    assert denied.json()["total"] == 1
    future = await client.get(
        f"/api/external-agents/{agent['id']}/invocations",
        params={"start_date": "2999-01-01T00:00:00+00:00"},
        headers=org.headers,
    )
    assert future.json()["total"] == 0
    naive = await client.get(
        f"/api/external-agents/{agent['id']}/invocations",
        params={"start_date": "2020-01-01T00:00:00"},
        headers=org.headers,
    )
    assert naive.status_code == 400
    other = await new_org(gateway)
    assert (
        await client.get(f"/api/external-agents/{agent['id']}/invocations", headers=other.headers)
    ).status_code == 404


async def test_threshold_alerts_reach_the_alert_channel_once_each(client, org, platform_server):
    await register(client, org, platform_server, path="/alerts", name="alerts")
    agent = await register(
        client,
        org,
        platform_server,
        path="/spend",
        max_monthly_cost=1.0,
        max_daily_cost=1.0,
        cost_per_execution=0.3,
        requests_per_minute=100,
    )
    codes = [(await invoke(client, org, agent["id"])).status_code for _ in range(4)]
    assert codes == [200, 200, 200, 402]  # 30%, 60%, 90% (warning and degraded at once), then over budget
    alerts = [r.json()["input"] for r in platform_server.requests("/alerts")]
    assert sorted(a["alert"] for a in alerts) == ["budget_degraded", "budget_warning"]
    assert all(a["agent_id"] == agent["id"] and a["usage_percentage"] == 90.0 for a in alerts)
    assert len(platform_server.requests("/spend")) == 3


async def test_no_alert_without_an_alert_channel(client, org, platform_server):
    agent = await register(
        client,
        org,
        platform_server,
        path="/quiet",
        max_monthly_cost=1.0,
        max_daily_cost=1.0,
        cost_per_execution=0.9,
        requests_per_minute=100,
    )
    response = await invoke(client, org, agent["id"])
    assert response.status_code == 200 and response.headers["X-Kaizen-Budget-Degraded"] == "true"
    assert platform_server.requests("/alerts") == []
