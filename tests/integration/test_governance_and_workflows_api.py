"""Governance status of an agent, and running the host's existing workflows through /api/workflows."""

from __future__ import annotations

import pytest

from tests.factories import IDENTITY, invoke, new_org, register, rows


async def test_governance_status_reports_budget_rate_limit_and_policies(client, org, platform_server):
    agent = await register(
        client,
        org,
        platform_server,
        cost_per_execution=0.25,
        max_monthly_cost=1.0,
        max_daily_cost=1.0,
        requests_per_minute=5,
    )
    await client.post("/api/policies", json={"name": "allow all", "effect": "allow"}, headers=org.headers)
    for _ in range(2):
        assert (await invoke(client, org, agent["id"])).status_code == 200
    response = await client.get(f"/api/external-agents/{agent['id']}/governance-status", headers=org.headers)
    assert response.status_code == 200
    status = response.json()
    assert status["external_agent_id"] == agent["id"] and status["organization_id"] == org.organization_id
    budget = status["budget"]
    assert (budget["monthly_spent_usd"], budget["remaining_monthly_usd"], budget["daily_spent_usd"]) == (0.5, 0.5, 0.5)
    assert (budget["usage_percentage"], budget["warning_triggered"], budget["degraded_mode"]) == (50.0, False, False)
    assert budget["monthly_execution_count"] == 2
    rate = status["rate_limit"]
    assert rate["current_usage"] == {"minute": 2, "hour": 2, "day": 2}
    assert (rate["remaining"], rate["allowed"], rate["limit_exceeded"]) == (3, True, False)
    assert status["policy"]["total_policies"] == 1 and status["policy"]["active_policies"][0]["effect"] == "allow"
    again = (await client.get(f"/api/external-agents/{agent['id']}/governance-status", headers=org.headers)).json()
    assert again["rate_limit"]["current_usage"]["minute"] == 2  # reading the status counts nothing


async def test_governance_status_of_another_organisations_agent_is_404(client, org, gateway, platform_server):
    agent = await register(client, org, platform_server)
    other = await new_org(gateway)
    response = await client.get(f"/api/external-agents/{agent['id']}/governance-status", headers=other.headers)
    assert response.status_code == 404


async def test_existing_workflow_without_agents_still_runs(client, org):
    response = await client.post("/api/workflows/greeting/execute", headers=org.headers)
    assert response.status_code == 200, response.text
    assert response.json()["outputs"]["greet"]["greeting"] == "Hello, world!"
    named = await client.post(
        "/api/workflows/greeting/execute", json={"inputs": {"greet": {"name": "Ada"}}}, headers=org.headers
    )
    assert named.json()["outputs"]["greet"]["greeting"] == "Hello, Ada!"


async def test_workflow_errors(client, org):
    assert (await client.post("/api/workflows/nope/execute", headers=org.headers)).status_code == 404
    bad = await client.post("/api/workflows/greeting/execute", json={"inputs": {"ghost": {}}}, headers=org.headers)
    assert bad.status_code == 400 and "ghost" in bad.json()["detail"]
    malformed = await client.post("/api/workflows/greeting/execute", content=b"{", headers=org.headers)
    assert malformed.status_code == 400


async def test_existing_workflow_can_invoke_an_agent_under_governance(client, org, gateway, platform_server):
    agent = await register(client, org, platform_server)
    identity = {
        field: value
        for field, value in zip(
            ("external_user_id", "external_user_email", "external_system", "external_session_id"),
            IDENTITY.values(),
            strict=True,
        )
    }
    inputs = {"notify": {"agent_id": agent["id"], "input": {"text": "from a workflow"}, "identity": identity}}
    response = await client.post("/api/workflows/notify_agent/execute", json={"inputs": inputs}, headers=org.headers)
    assert response.status_code == 200, response.text
    outcome = response.json()["outputs"]["notify"]["invocation"]
    assert outcome["status"] == "success"
    assert platform_server.requests("/hook")[0].json()["input"] == {"text": "from a workflow"}
    [row] = await rows(
        gateway,
        "SELECT workflow_id, organization_id FROM invocation_lineage WHERE id = :id",
        id=outcome["invocation_id"],
    )
    assert row == {"workflow_id": "notify_agent", "organization_id": org.organization_id}


@pytest.mark.parametrize(
    ("inputs", "field", "message"),
    [
        ({}, "inputs.notify.agent_id", "is required"),
        ({"notify": {"agent_id": "a", "input": "x"}}, "inputs.notify.identity", "is required"),
        ({"notify": {"input": "x", "identity": {}}}, "inputs.notify.agent_id", "is required"),
        ({"notify": {"agent_id": 42, "input": "x", "identity": {}}}, "inputs.notify.agent_id", "must be a string"),
        ({"notify": {"agent_id": "a", "input": "x", "identity": "me"}}, "inputs.notify.identity", "must be an object"),
        (
            {"notify": {"agent_id": "a", "input": "x", "identity": {}, "context": [1]}},
            "inputs.notify.context",
            "must be an object",
        ),
        ({"greet": {"name": 7}}, "inputs.greet.name", "must be a string"),
    ],
)
async def test_workflow_inputs_are_validated_with_a_400_naming_the_field(client, org, inputs, field, message):
    workflow = "greeting" if "greet" in inputs else "notify_agent"
    response = await client.post(f"/api/workflows/{workflow}/execute", json={"inputs": inputs}, headers=org.headers)
    assert response.status_code == 400, response.text
    assert response.json()["detail"] == f"{field} {message}"


@pytest.mark.parametrize("dependency", ["runner", "invoke_workflow"])
async def test_a_request_cannot_replace_a_nodes_injected_dependency(client, org, gateway, platform_server, dependency):
    agent = await register(client, org, platform_server, path="/injected", name=f"injected-{dependency}")
    identity = dict(
        zip(
            ("external_user_id", "external_user_email", "external_system", "external_session_id"),
            IDENTITY.values(),
            strict=True,
        )
    )
    node = {"agent_id": agent["id"], "input": "x", "identity": identity}
    hostile = {"notify": {**node, dependency: "not the real one"}}

    refused = await client.post("/api/workflows/notify_agent/execute", json={"inputs": hostile}, headers=org.headers)

    assert refused.status_code == 400, refused.text
    assert refused.json()["detail"] == (
        f"inputs.notify.{dependency} is the node's injected dependency; a request cannot set it"
    )
    assert platform_server.requests("/injected") == []
    # The same request without the override runs the node with its real dependencies.
    ran = await client.post(
        "/api/workflows/notify_agent/execute", json={"inputs": {"notify": node}}, headers=org.headers
    )
    assert ran.status_code == 200, ran.text
    assert ran.json()["outputs"]["notify"]["invocation"]["status"] == "success"
    assert len(platform_server.requests("/injected")) == 1
