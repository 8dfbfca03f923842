"""The agent registry over REST, on SQLite and PostgreSQL: bodies, status codes, scoping, secrets, audit."""

from __future__ import annotations

import json

import pytest
import sqlalchemy as sa
from cryptography.fernet import Fernet

from tests.factories import TEST_FERNET_KEY, new_org

TEAMS = {"webhook_url": "https://example.com/webhook"}


def agent_body(**overrides: object) -> dict:
    body = {
        "name": "Test Agent",
        "platform": "teams",
        "platform_config": dict(TEAMS),
        "auth_config": {"auth_type": "none", "credentials": {}},
        "max_monthly_cost": 100.0,
    }
    body.update(overrides)
    return body


async def stored_agent(gateway, agent_id: str) -> dict:
    async with gateway.external_agents.engine.connect() as connection:
        row = (
            await connection.execute(sa.text("SELECT * FROM external_agents WHERE id = :id"), {"id": agent_id})
        ).one()
    return dict(row._mapping)


async def test_create_returns_201_with_defaults_and_masked_credentials(client, org, gateway):
    body = agent_body(auth_config={"auth_type": "bearer_token", "credentials": {"token": "s3cret-token-value"}})
    response = await client.post("/api/external-agents", json=body, headers=org.headers)
    assert response.status_code == 201, response.text
    agent = response.json()
    assert agent["auth_config"] == {"auth_type": "bearer_token", "credentials": "***"}
    assert "s3cret-token-value" not in response.text
    assert agent["organization_id"] == org.organization_id
    assert (agent["max_monthly_cost"], agent["max_daily_cost"], agent["cost_per_execution"]) == (100.0, 10.0, 0.05)
    assert (agent["requests_per_minute"], agent["requests_per_hour"], agent["requests_per_day"]) == (10, 100, 500)
    row = await stored_agent(gateway, agent["id"])
    token = bytes(row["encrypted_credentials"])
    assert len(token) > 100 and b"s3cret" not in token
    assert "s3cret" not in json.dumps(row["auth_config"])
    sealed = json.loads(Fernet(TEST_FERNET_KEY.encode()).decrypt(token))
    assert sealed["credentials"]["auth"] == {"token": "s3cret-token-value"}


async def test_empty_credentials_are_still_sealed_over_100_bytes(client, org, gateway):
    response = await client.post("/api/external-agents", json=agent_body(), headers=org.headers)
    row = await stored_agent(gateway, response.json()["id"])
    assert len(bytes(row["encrypted_credentials"])) > 100


@pytest.mark.parametrize(
    ("change", "fragment"),
    [
        ({"platform": "myspace"}, "Unknown platform 'myspace'"),
        ({"platform_config": {}}, "platform_config.webhook_url"),
        ({"auth_config": {"auth_type": "voodoo", "credentials": {}}}, "voodoo"),
        ({"auth_config": {"auth_type": "bearer_token", "credentials": {}}}, "token"),
        ({"auth_config": {"auth_type": "basic", "credentials": {"username": "u"}}}, "password"),
        ({"max_monthly_cost": "100"}, "max_monthly_cost"),
        ({"max_monthly_cost": -1}, "max_monthly_cost"),
        ({"requests_per_minute": 1.5}, "requests_per_minute"),
        ({"requests_per_minute": 0}, "requests_per_minute"),
        ({"name": ""}, "name"),
        ({"name": "x" * 256}, "name"),
        ({"unexpected": 1}, "unexpected: unknown field"),
        ({"description": "nul \x00 byte"}, "U+0000"),
    ],
)
async def test_bad_registration_is_400_naming_the_field(client, org, change, fragment):
    response = await client.post("/api/external-agents", json=agent_body(**change), headers=org.headers)
    assert response.status_code == 400, response.text
    error = response.json()
    assert error["error_code"] == "VALIDATION_ERROR" and error["status_code"] == 400
    assert fragment in error["detail"]
    assert {"timestamp", "request_id"} <= error.keys()
    listing = await client.get("/api/external-agents", headers=org.headers)
    assert listing.json()["total"] == 0


@pytest.mark.parametrize("raw", [b"{not json", b"", b"[1, 2]", '"caf\xe9"'.encode("latin-1")])
async def test_malformed_body_is_400(client, org, raw):
    response = await client.post(
        "/api/external-agents", content=raw, headers={**org.headers, "Content-Type": "application/json"}
    )
    assert response.status_code == 400
    assert response.json()["error_code"] == "VALIDATION_ERROR"


async def test_private_webhook_refused_unless_allowed(client, org, gateway):
    settings = gateway.external_agents.settings
    assert settings.external_agent_allow_private_webhooks  # the test app allows 127.0.0.1 for local platforms
    response = await client.post(
        "/api/external-agents", json=agent_body(platform_config={"webhook_url": "ftp://x"}), headers=org.headers
    )
    assert response.status_code == 400


async def test_duplicate_name_is_409_and_names_are_per_organisation(client, org, gateway):
    assert (await client.post("/api/external-agents", json=agent_body(), headers=org.headers)).status_code == 201
    again = await client.post("/api/external-agents", json=agent_body(), headers=org.headers)
    assert again.status_code == 409 and again.json()["error_code"] == "CONFLICT"
    other = await new_org(gateway)
    assert (await client.post("/api/external-agents", json=agent_body(), headers=other.headers)).status_code == 201


async def test_list_paginates_filters_and_searches_with_true_total(client, org):
    for i in range(7):
        platform = "slack" if i % 2 else "teams"
        body = agent_body(
            name=f"Agent {i} 100%_done" if i == 3 else f"Agent {i}",
            platform=platform,
            platform_config={"webhook_url": "https://hooks.example.com/x"},
        )
        assert (await client.post("/api/external-agents", json=body, headers=org.headers)).status_code == 201
    first = (await client.get("/api/external-agents?page=1&limit=3", headers=org.headers)).json()
    assert (first["total"], first["page"], first["limit"], first["has_more"], len(first["items"])) == (7, 1, 3, True, 3)
    last = (await client.get("/api/external-agents?page=3&limit=3", headers=org.headers)).json()
    assert (len(last["items"]), last["has_more"]) == (1, False)
    seen = {
        a["id"]
        for p in (1, 2, 3)
        for a in (await client.get(f"/api/external-agents?page={p}&limit=3", headers=org.headers)).json()["items"]
    }
    assert len(seen) == 7
    slack = (await client.get("/api/external-agents?platform=slack", headers=org.headers)).json()
    assert slack["total"] == 3 and all(a["platform"] == "slack" for a in slack["items"])
    found = (await client.get("/api/external-agents", params={"search": "100%_"}, headers=org.headers)).json()
    assert [a["name"] for a in found["items"]] == ["Agent 3 100%_done"]
    item = first["items"][0]
    assert item["current_monthly_cost"] == 0.0 and item["usage_percentage"] == 0.0


@pytest.mark.parametrize("query", ["limit=101", "limit=0", "page=0", "page=abc"])
async def test_bad_pagination_is_400(client, org, query):
    response = await client.get(f"/api/external-agents?{query}", headers=org.headers)
    assert response.status_code == 400 and response.json()["error_code"] == "VALIDATION_ERROR"


async def test_other_organisation_gets_404_and_never_the_data(client, org, gateway):
    agent = (await client.post("/api/external-agents", json=agent_body(), headers=org.headers)).json()
    other = await new_org(gateway)
    for method in ("GET", "PATCH", "DELETE"):
        kwargs = {"json": {"description": "x"}} if method == "PATCH" else {}
        response = await client.request(method, f"/api/external-agents/{agent['id']}", headers=other.headers, **kwargs)
        assert response.status_code == 404, method
        assert agent["name"] not in response.text
    assert (await client.get("/api/external-agents", headers=other.headers)).json()["total"] == 0
    assert (await client.get(f"/api/external-agents/{agent['id']}", headers=org.headers)).status_code == 200


async def test_patch_updates_fields_and_rotates_credentials(client, org, gateway):
    body = agent_body(auth_config={"auth_type": "api_key", "credentials": {"api_key": "first-key-value"}})
    agent = (await client.post("/api/external-agents", json=body, headers=org.headers)).json()
    before = bytes((await stored_agent(gateway, agent["id"]))["encrypted_credentials"])
    patch = {"description": "updated", "auth_config": {"auth_type": "api_key", "credentials": {"api_key": "second"}}}
    response = await client.patch(f"/api/external-agents/{agent['id']}", json=patch, headers=org.headers)
    assert response.status_code == 200, response.text
    updated = response.json()
    assert updated["description"] == "updated" and updated["name"] == agent["name"]
    assert updated["updated_at"] is not None and "second" not in response.text
    after = bytes((await stored_agent(gateway, agent["id"]))["encrypted_credentials"])
    assert after != before
    sealed = json.loads(Fernet(TEST_FERNET_KEY.encode()).decrypt(after))
    assert sealed["credentials"]["auth"] == {"api_key": "second"}


async def test_patch_bad_values_are_400_and_change_nothing(client, org):
    agent = (await client.post("/api/external-agents", json=agent_body(), headers=org.headers)).json()
    for patch in ({"name": None}, {"requests_per_minute": -5}, {"platform": "slack"}, {"platform_config": {}}):
        response = await client.patch(f"/api/external-agents/{agent['id']}", json=patch, headers=org.headers)
        assert response.status_code == 400, (patch, response.text)
    fetched = (await client.get(f"/api/external-agents/{agent['id']}", headers=org.headers)).json()
    assert {k: v for k, v in fetched.items() if k != "governance"} == agent


async def test_delete_is_204_then_404(client, org):
    agent = (await client.post("/api/external-agents", json=agent_body(), headers=org.headers)).json()
    assert (await client.delete(f"/api/external-agents/{agent['id']}", headers=org.headers)).status_code == 204
    assert (await client.get(f"/api/external-agents/{agent['id']}", headers=org.headers)).status_code == 404
    assert (await client.delete(f"/api/external-agents/{agent['id']}", headers=org.headers)).status_code == 404


async def test_audit_rows_for_create_update_delete_hold_no_secret(client, org, gateway):
    body = agent_body(auth_config={"auth_type": "basic", "credentials": {"username": "u", "password": "pw-secret"}})
    agent = (await client.post("/api/external-agents", json=body, headers=org.headers)).json()
    await client.patch(f"/api/external-agents/{agent['id']}", json={"description": "d"}, headers=org.headers)
    await client.delete(f"/api/external-agents/{agent['id']}", headers=org.headers)
    async with gateway.external_agents.engine.connect() as connection:
        rows = (
            await connection.execute(
                sa.text(
                    "SELECT event_type, actor_id, organization_id, resource_id, details FROM audit_log "
                    "WHERE resource_id = :id ORDER BY created_at"
                ),
                {"id": agent["id"]},
            )
        ).all()
    assert [r.event_type for r in rows] == [
        "external_agent.created",
        "external_agent.updated",
        "external_agent.deleted",
    ]
    assert all(r.organization_id == org.organization_id and r.actor_id for r in rows)
    assert "pw-secret" not in repr(rows)


FIDELITY = [
    "please delete from my calendar",
    "insert into x values (1); select * from x -- ",
    "update x set a=1 /* comment */ --",
    "${agent_id} ${body} {{name}} %s %(x)s",
    "Ünïcödé ✓ 😀 中文 العربية \u200b",
    "trailing --",
]


@pytest.mark.parametrize("text", FIDELITY)
async def test_text_round_trips_exactly(client, org, text):
    body = agent_body(
        name=text,
        description=text,
        platform="custom_http",
        platform_config={"url": "https://api.example.com/hook", "headers": {"X-Note": "a"}, "method": "POST"},
        max_monthly_cost=0.1 + 0.2,
        cost_per_execution=123.456789012345,
    )
    created = await client.post("/api/external-agents", json=body, headers=org.headers)
    assert created.status_code == 201, created.text
    fetched = (await client.get(f"/api/external-agents/{created.json()['id']}", headers=org.headers)).json()
    assert fetched["name"] == text and fetched["description"] == text
    assert fetched["max_monthly_cost"] == 0.1 + 0.2
    assert fetched["cost_per_execution"] == 123.456789012345
    assert fetched["platform_config"]["headers"] == {"X-Note": "a"}


async def test_nested_json_round_trips(client, org):
    nested = {"url": "https://api.example.com/x", "headers": {"A": "1"}, "method": "PUT"}
    body = agent_body(name="nested", platform="custom_http", platform_config=nested)
    created = (await client.post("/api/external-agents", json=body, headers=org.headers)).json()
    assert created["platform_config"]["headers"] == {"A": "1"} and created["platform_config"]["method"] == "PUT"


async def test_requests_without_valid_key_are_401(client, gateway, org):
    assert (await client.get("/api/external-agents")).status_code == 401
    assert (await client.get("/api/external-agents", headers={"Authorization": "Bearer nope"})).status_code == 401
    assert (await client.get("/api/external-agents", headers={"Authorization": org.api_key})).status_code == 401
    assert (await client.get("/workflows", headers={})).status_code == 401  # Nexus's own routes are closed too
    health = await client.get("/api/health")
    assert health.status_code == 200 and health.json()["status"] == "healthy"
    assert (await client.get("/api/version")).status_code == 200


async def test_revoked_key_is_401(client, gateway):
    from external_agents.stores.api_keys import create_api_key, revoke_api_key

    row, key = await create_api_key(
        gateway.external_agents.engine, organization_id="org-r", name="r", permissions=["admin"]
    )
    headers = {"Authorization": f"Bearer {key}"}
    assert (await client.get("/api/external-agents", headers=headers)).status_code == 200
    assert await revoke_api_key(gateway.external_agents.engine, key_id=row["id"])
    assert (await client.get("/api/external-agents", headers=headers)).status_code == 401


async def test_key_without_permission_is_403(client, gateway):
    reader = await new_org(gateway, permissions=["read:external_agent"])
    assert (await client.get("/api/external-agents", headers=reader.headers)).status_code == 200
    response = await client.post("/api/external-agents", json=agent_body(), headers=reader.headers)
    assert response.status_code == 403 and "create:external_agent" in response.json()["detail"]


async def test_secret_in_platform_config_is_sealed_masked_and_kept_by_mask(client, org, gateway):
    token = "123456789:AAH-secret-bot-token_abcdefghijklmnopq"
    body = agent_body(name="tg", platform="telegram", platform_config={"bot_token": token, "chat_id": "42"})
    created = await client.post("/api/external-agents", json=body, headers=org.headers)
    assert created.status_code == 201, created.text
    agent = created.json()
    assert agent["platform_config"]["bot_token"] == "***" and token not in created.text
    row = await stored_agent(gateway, agent["id"])
    assert token not in json.dumps(row["platform_config"])
    sealed = json.loads(Fernet(TEST_FERNET_KEY.encode()).decrypt(bytes(row["encrypted_credentials"])))
    assert sealed["credentials"]["platform"] == {"bot_token": token}
    patch = {"platform_config": {"bot_token": "***", "chat_id": "43"}}
    updated = await client.patch(f"/api/external-agents/{agent['id']}", json=patch, headers=org.headers)
    assert updated.status_code == 200, updated.text
    assert updated.json()["platform_config"] == {"bot_token": "***", "chat_id": "43"}
    row = await stored_agent(gateway, agent["id"])
    sealed = json.loads(Fernet(TEST_FERNET_KEY.encode()).decrypt(bytes(row["encrypted_credentials"])))
    assert sealed["credentials"]["platform"] == {"bot_token": token}


async def test_mask_without_a_stored_secret_is_400(client, org):
    body = agent_body(name="tg2", platform="telegram", platform_config={"bot_token": "***", "chat_id": "42"})
    response = await client.post("/api/external-agents", json=body, headers=org.headers)
    assert response.status_code == 400 and "platform_config.bot_token" in response.json()["detail"]
