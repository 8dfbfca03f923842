"""`GET /metrics`: who may read it, that ours answers rather than Nexus's, and what each invocation records.

Runs over SQLite and over PostgreSQL+Redis (the `gateway` fixture). The gateway is shared by the session, so
counters are compared before and after, never against absolute values.
"""

from __future__ import annotations

import httpx
from prometheus_client.parser import text_string_to_metric_families

from tests.factories import IDENTITY, invoke, make_settings, new_org, register
from tests.platform_server import ScriptedResponse, closed_port_url

Samples = dict[tuple[str, tuple[tuple[str, str], ...]], float]


async def scrape(client: httpx.AsyncClient, org) -> Samples:
    response = await client.get("/metrics", headers=org.headers)
    assert response.status_code == 200, response.text
    assert response.headers["content-type"].startswith("text/plain")
    samples: Samples = {}
    for family in text_string_to_metric_families(response.text):
        for sample in family.samples:
            samples[(sample.name, tuple(sorted(sample.labels.items())))] = sample.value
    return samples


def value(samples: Samples, name: str, **labels: str) -> float:
    return samples.get((name, tuple(sorted(labels.items()))), 0.0)


async def test_metrics_need_a_key_with_read_metrics_or_admin(client, gateway):
    assert (await client.get("/metrics")).status_code == 401
    reader = await new_org(gateway, permissions=["read:external_agent"])
    refused = await client.get("/metrics", headers=reader.headers)
    assert refused.status_code == 403
    assert "read:metrics" in refused.json()["detail"]
    for permissions in (["read:metrics"], ["admin"]):
        allowed = await client.get("/metrics", headers=(await new_org(gateway, permissions=permissions)).headers)
        assert allowed.status_code == 200


async def test_ours_answers_not_nexus(client, gateway, org):
    paths = [getattr(route, "path", None) for route in gateway.fastapi_app.router.routes]
    assert paths.count("/metrics") == 0  # Nexus's own route is gone; ours is in an included router
    response = await client.get("/metrics", headers=org.headers)
    assert "# TYPE external_agent_invocations_total counter" in response.text
    assert "# TYPE external_agent_invocation_duration_seconds histogram" in response.text


async def test_invocations_are_recorded_from_their_outcome(client, gateway, org, platform_server):
    platform_server.script("/metered", ScriptedResponse(200, body={"ok": True}))
    agent = await register(
        client,
        org,
        platform_server,
        path="/metered",
        name="metered",
        requests_per_minute=2,
        max_monthly_cost=1.0,
        cost_per_execution=0.25,
    )
    broken = await register(client, org, platform_server, url=closed_port_url("/gone"), name="broken")
    before = await scrape(client, org)

    assert [(await invoke(client, org, agent["id"])).status_code for _ in range(3)] == [200, 200, 429]
    assert (await invoke(client, org, broken["id"])).status_code == 502
    policy = {
        "name": "no-test-system",
        "effect": "deny",
        "external_agent_id": broken["id"],
        "conditions": [{"type": "external_system", "systems": ["test"]}],
    }
    assert (await client.post("/api/policies", json=policy, headers=org.headers)).status_code == 201
    assert (await invoke(client, org, broken["id"])).status_code == 403

    after = await scrape(client, org)

    def delta(name: str, **labels: str) -> float:
        return value(after, name, **labels) - value(before, name, **labels)

    assert delta("external_agent_invocations_total", status="success") == 2
    assert delta("external_agent_invocations_total", status="denied") == 2
    assert delta("external_agent_invocations_total", status="failure") == 1
    assert delta("external_agent_policy_denials_total") == 1
    assert delta("external_agent_webhook_failures_total") == 1
    assert delta("external_agent_invocation_duration_seconds_count") == 5
    assert delta("external_agent_invocation_duration_seconds_sum") > 0
    # Two calls of $0.25 against $1.00 a month; the third was refused before the budget step.
    assert value(after, "external_agent_budget_usage_percentage", agent_id=agent["id"]) == 50.0
    assert value(after, "external_agent_rate_limit_remaining", agent_id=agent["id"]) == 0


async def test_invocations_inside_a_host_workflow_are_recorded(client, org, platform_server):
    agent = await register(client, org, platform_server, path="/from-workflow", name="from-workflow")
    identity = {
        "external_user_id": IDENTITY["X-External-User-ID"],
        "external_user_email": IDENTITY["X-External-User-Email"],
        "external_system": IDENTITY["X-External-System"],
        "external_session_id": IDENTITY["X-External-Session-ID"],
    }
    before = await scrape(client, org)
    inputs = {"notify": {"agent_id": agent["id"], "input": "from a workflow", "identity": identity}}
    response = await client.post("/api/workflows/notify_agent/execute", json={"inputs": inputs}, headers=org.headers)
    assert response.status_code == 200, response.text
    after = await scrape(client, org)
    assert (
        value(after, "external_agent_invocations_total", status="success")
        - value(before, "external_agent_invocations_total", status="success")
        == 1
    )
    assert value(after, "external_agent_rate_limit_remaining", agent_id=agent["id"]) == 9


async def test_redis_up_follows_a_ping(client, gateway, org):
    samples = await scrape(client, org)
    if gateway.external_agents.redis is None:
        assert ("redis_up", ()) not in samples  # embedded mode: no Redis, no series
    else:
        assert value(samples, "redis_up") == 1.0


async def test_each_app_has_its_own_registry_and_sees_redis_down(tmp_path):
    from external_agents.models.migrate import upgrade
    from external_agents.nexus_app import build_app
    from external_agents.stores.api_keys import create_api_key

    settings = make_settings(
        f"sqlite:///{tmp_path}/other.db", str(tmp_path), redis_url=closed_port_url("/0").replace("http", "redis")
    )
    upgrade(settings, report=lambda _line: None)
    other = build_app(settings)
    async with other.fastapi_app.router.lifespan_context(other.fastapi_app):
        _row, key = await create_api_key(
            other.external_agents.engine, organization_id="metrics-org", name="m", permissions=["read:metrics"]
        )
        transport = httpx.ASGITransport(app=other.fastapi_app)
        async with httpx.AsyncClient(transport=transport, base_url="http://other.test") as http:
            response = await http.get("/metrics", headers={"Authorization": f"Bearer {key}"})
    assert response.status_code == 200
    samples = {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for family in text_string_to_metric_families(response.text)
        for s in family.samples
    }
    assert samples[("redis_up", ())] == 0.0
    # A new app counts from zero, whatever other apps in this process have recorded.
    assert not any(name == "external_agent_invocations_total" for name, _labels in samples)
