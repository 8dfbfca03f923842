"""Policies over REST: CRUD with validation, and their enforcement on invoke (SPEC §4, §5)."""

from __future__ import annotations

import pytest

from tests.factories import IDENTITY, invoke, new_org, register, rows

DENY_TEST_SYSTEM = {
    "name": "Block the test system",
    "effect": "deny",
    "priority": 10,
    "conditions": [{"type": "external_system", "systems": ["test"]}],
}


async def test_policy_crud(client, org):
    created = await client.post("/api/policies", json=DENY_TEST_SYSTEM, headers=org.headers)
    assert created.status_code == 201, created.text
    policy = created.json()
    assert policy["effect"] == "deny" and policy["enabled"] is True and policy["external_agent_id"] is None
    assert policy["conditions"] == DENY_TEST_SYSTEM["conditions"]
    listed = (await client.get("/api/policies", headers=org.headers)).json()
    assert [p["policy_id"] for p in listed["items"]] == [policy["policy_id"]]
    patched = await client.patch(f"/api/policies/{policy['policy_id']}", json={"enabled": False}, headers=org.headers)
    assert patched.status_code == 200 and patched.json()["enabled"] is False
    fetched = (await client.get(f"/api/policies/{policy['policy_id']}", headers=org.headers)).json()
    assert fetched["enabled"] is False and fetched["name"] == DENY_TEST_SYSTEM["name"]
    assert (await client.delete(f"/api/policies/{policy['policy_id']}", headers=org.headers)).status_code == 204
    assert (await client.get(f"/api/policies/{policy['policy_id']}", headers=org.headers)).status_code == 404


@pytest.mark.parametrize(
    ("body", "fragment"),
    [
        ({"effect": "deny"}, "name"),
        ({"name": "x", "effect": "maybe"}, "effect"),
        ({"name": "x", "effect": "deny", "conditions": [{"type": "weather"}]}, "conditions[0].type"),
        (
            {
                "name": "x",
                "effect": "deny",
                "conditions": [
                    {
                        "type": "time_window",
                        "business_hours": {"start_time": "09:00", "end_time": "17:00", "timezone": "Mars/Base"},
                    }
                ],
            },
            "Mars/Base",
        ),
        ({"name": "x", "effect": "deny", "priority": "high"}, "priority"),
        ({"name": "x", "effect": "deny", "colour": "red"}, "colour"),
        ({"name": "x", "effect": "deny", "external_agent_id": "no-such-agent"}, "external_agent_id"),
    ],
)
async def test_bad_policy_is_400(client, org, body, fragment):
    response = await client.post("/api/policies", json=body, headers=org.headers)
    assert response.status_code == 400, response.text
    assert fragment in response.json()["detail"]
    assert (await client.get("/api/policies", headers=org.headers)).json()["total"] == 0


async def test_policy_routes_need_manage_policy_and_are_scoped(client, org, gateway):
    reader = await new_org(gateway, permissions=["read:external_agent", "invoke:external_agent"])
    assert (await client.get("/api/policies", headers=reader.headers)).status_code == 403
    policy = (await client.post("/api/policies", json=DENY_TEST_SYSTEM, headers=org.headers)).json()
    other = await new_org(gateway)
    assert (await client.get(f"/api/policies/{policy['policy_id']}", headers=other.headers)).status_code == 404
    assert (await client.delete(f"/api/policies/{policy['policy_id']}", headers=other.headers)).status_code == 404


async def test_deny_policy_is_403_and_stops_the_chain(client, org, gateway, platform_server):
    agent = await register(client, org, platform_server)
    policy = (await client.post("/api/policies", json=DENY_TEST_SYSTEM, headers=org.headers)).json()
    response = await invoke(client, org, agent["id"])
    assert response.status_code == 403, response.text
    body = response.json()
    assert body["error_code"] == "FORBIDDEN" and body["policy_id"] == policy["policy_id"]
    assert body["matched_policies"] == [policy["policy_id"]]
    assert platform_server.requests("/hook") == []
    [row] = await rows(
        gateway, "SELECT status, denial_reason FROM invocation_lineage WHERE id = :id", id=body["invocation_id"]
    )
    assert row["status"] == "denied" and "Block the test system" in row["denial_reason"]
    events = await rows(gateway, "SELECT event_type FROM audit_log WHERE resource_id = :id", id=agent["id"])
    assert "external_agent.policy_denied" in [e["event_type"] for e in events]
    status = (await client.get(f"/api/external-agents/{agent['id']}/governance-status", headers=org.headers)).json()
    assert status["rate_limit"]["current_usage"]["minute"] == 0  # a denied request leaves no rate-limit hit
    assert await rows(gateway, "SELECT id FROM billing_usage WHERE external_agent_id = :id", id=agent["id"]) == []


async def test_policy_change_takes_effect_on_the_next_invocation(client, org, platform_server):
    agent = await register(client, org, platform_server)
    policy = (await client.post("/api/policies", json=DENY_TEST_SYSTEM, headers=org.headers)).json()
    assert (await invoke(client, org, agent["id"])).status_code == 403
    await client.patch(f"/api/policies/{policy['policy_id']}", json={"enabled": False}, headers=org.headers)
    assert (await invoke(client, org, agent["id"])).status_code == 200


async def test_unmatched_allow_list_denies_under_deny_overrides(client, org, platform_server):
    agent = await register(client, org, platform_server)
    allow = {"name": "Only Alice", "effect": "allow", "conditions": [{"type": "user", "emails": ["alice@example.com"]}]}
    assert (await client.post("/api/policies", json=allow, headers=org.headers)).status_code == 201
    refused = await invoke(client, org, agent["id"])
    assert refused.status_code == 403 and refused.json()["policy_id"] is None
    allowed = await invoke(client, org, agent["id"], headers={"X-External-User-Email": "Alice@Example.com"})
    assert allowed.status_code == 200


async def test_agent_scoped_policy_applies_to_that_agent_only(client, org, platform_server):
    first = await register(client, org, platform_server, path="/one")
    second = await register(client, org, platform_server, path="/two")
    scoped = {**DENY_TEST_SYSTEM, "external_agent_id": first["id"]}
    assert (await client.post("/api/policies", json=scoped, headers=org.headers)).status_code == 201
    assert (await invoke(client, org, first["id"])).status_code == 403
    assert (await invoke(client, org, second["id"])).status_code == 200


async def test_context_attributes_reach_policies(client, org, platform_server):
    agent = await register(client, org, platform_server)
    prod = {
        "name": "No prod",
        "effect": "deny",
        "conditions": [{"type": "environment", "environments": ["production"]}],
    }
    await client.post("/api/policies", json=prod, headers=org.headers)
    assert (
        await invoke(client, org, agent["id"], headers={"X-External-Context": '{"environment": "production"}'})
    ).status_code == 403
    body = {"input": "x", "context": {"environment": "staging"}}
    assert (
        await invoke(
            client, org, agent["id"], body=body, headers={"X-External-Context": '{"environment": "production"}'}
        )
    ).status_code == 200
    assert IDENTITY["X-External-System"] == "test"


async def test_the_guides_abac_check_gets_403_even_without_identity_or_body(client, org, gateway, platform_server):
    """The migration guide invokes with only the Authorization header and expects 403 when a policy denies."""
    agent = await register(client, org, platform_server)
    deny_all = {"name": "Deny everything", "effect": "deny", "external_agent_id": agent["id"]}
    assert (await client.post("/api/policies", json=deny_all, headers=org.headers)).status_code == 201
    response = await client.post(f"/api/external-agents/{agent['id']}/invoke", headers=org.headers)
    assert response.status_code == 403, response.text
    assert response.json()["error_code"] == "FORBIDDEN"
    assert platform_server.requests("/hook") == []
    [row] = await rows(
        gateway,
        "SELECT status, external_user_email FROM invocation_lineage WHERE id = :id",
        id=response.json()["invocation_id"],
    )
    assert row == {"status": "denied", "external_user_email": None}


async def test_an_allowed_request_without_body_is_400_and_counts_nothing(client, org, platform_server):
    agent = await register(client, org, platform_server)
    response = await client.post(f"/api/external-agents/{agent['id']}/invoke", headers={**org.headers, **IDENTITY})
    assert response.status_code == 400 and "body is required" in response.json()["detail"]
    status = (await client.get(f"/api/external-agents/{agent['id']}/governance-status", headers=org.headers)).json()
    assert status["rate_limit"]["current_usage"]["minute"] == 0
    assert platform_server.requests("/hook") == []
