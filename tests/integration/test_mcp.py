"""The MCP channel with the official `mcp` client: streamable HTTP at /mcp (in-process ASGI and a real server
process) and stdio (`python -m channels.cli mcp --stdio`).

Each tool must give what its REST route gives: the same results, the same organisation scoping and permission
checks, and refusals whose text carries REST's error body (detail, error_code, denial fields).
"""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import httpx
import httpx2
import pytest
import sqlalchemy as sa
from mcp import Client
from mcp.client.stdio import StdioServerParameters
from mcp.client.streamable_http import streamable_http_client

from tests.factories import INVOKE_METADATA, Org, assert_exact_metadata, invoke, make_settings, new_org, register, rows
from tests.platform_server import ScriptedResponse
from tests.process_servers import BENCH_API_KEY, ROOT, app_env, app_server

SEED_AGENT = {
    "name": "Test Agent",
    "platform": "teams",
    "platform_config": {"webhook_url": "https://example.com/webhook"},
    "auth_config": {"auth_type": "none", "credentials": {}},
    "max_monthly_cost": 100.0,
}
SEED_IDENTITY = {
    "external_user_id": "test@example.com",
    "external_user_email": "test@example.com",
    "external_system": "test",
    "external_session_id": "test-session-123",
}
TOOLS = {
    "list_agents",
    "get_agent",
    "register_agent",
    "invoke_agent",
    "governance_status",
    "list_invocations",
    "lineage_graph",
    "list_lineage",
    "get_invocation",
    "user_lineage",
    "erase_user_lineage",
    "list_workflows",
    "execute_workflow",
}


@asynccontextmanager
async def mcp_client(gateway, org: Org) -> AsyncIterator[Client]:
    """An MCP client talking streamable HTTP to the gateway's ASGI app in-process, with `org`'s key."""
    transport = httpx2.ASGITransport(app=gateway.fastapi_app)
    async with (
        httpx2.AsyncClient(transport=transport, base_url="http://gateway.test", headers=org.headers) as http,
        Client(streamable_http_client("http://gateway.test/mcp", http_client=http)) as client,
    ):
        yield client


async def call(client: Client, tool: str, arguments: dict[str, Any]) -> Any:
    result = await client.call_tool(tool, arguments)
    assert not result.is_error, result.content[0].text
    return result.structured_content


async def refusal(client: Client, tool: str, arguments: dict[str, Any]) -> dict[str, Any]:
    """The REST error body a refused tool call carries in its text."""
    result = await client.call_tool(tool, arguments)
    assert result.is_error
    text = result.content[0].text
    return json.loads(text[text.index("{") :])


async def seed_smoke_tests(client: Client, platform_server) -> dict[str, Any]:
    """The migration guide's five smoke tests, through MCP tools instead of curl."""
    # Test 1: create an external agent.
    created = await call(client, "register_agent", SEED_AGENT)
    assert created["name"] == "Test Agent" and created["auth_config"]["credentials"] == "***"
    # Test 2: list external agents.
    listing = await call(client, "list_agents", {})
    assert created["id"] in [agent["id"] for agent in listing["items"]]
    # Test 3: governance status.
    status = await call(client, "governance_status", {"agent_id": created["id"]})
    assert status["budget"]["monthly_budget_usd"] == 100.0 and status["rate_limit"]["allowed"] is True
    assert status["policy"]["total_policies"] == 0
    # Test 4: invoke, and find the lineage record (an agent the local platform server plays).
    platform_server.script("/smoke", ScriptedResponse(200, body={"answer": "ok"}))
    hook = await call(
        client,
        "register_agent",
        {
            "name": "smoke",
            "platform": "custom_http",
            "platform_config": {"url": platform_server.url("/smoke")},
            "daily_execution_limit": 50,
        },
    )
    assert hook["daily_execution_limit"] == 50
    invoked = await call(client, "invoke_agent", {"agent_id": hook["id"], "input": "test", **SEED_IDENTITY})
    assert invoked["status"] == "success" and invoked["output"] == {"answer": "ok"}
    assert invoked["metadata"]["webhook_delivered"] is True
    lineage = await call(client, "list_lineage", {"external_user_email": "test@example.com"})
    assert invoked["invocation_id"] in [item["invocation_id"] for item in lineage["items"]]
    # Test 5: an existing workflow still works.
    greeting = await call(client, "execute_workflow", {"workflow_id": "greeting"})
    assert greeting == {
        "workflow_id": "greeting",
        "status": "completed",
        "outputs": {"greet": {"greeting": "Hello, world!"}},
    }
    return {"agent": created, "invocation": invoked}


async def test_mcp_needs_a_valid_bearer_key(client):
    ping = {"jsonrpc": "2.0", "id": 1, "method": "tools/list", "params": {}}
    assert (await client.post("/mcp", json=ping)).status_code == 401
    bad = await client.post("/mcp", json=ping, headers={"Authorization": "Bearer eak_not-a-key"})
    assert bad.status_code == 401 and bad.json()["error_code"] == "UNAUTHORIZED"


async def test_tools_have_typed_schemas_and_descriptions(gateway, org):
    async with mcp_client(gateway, org) as client:
        tools = {tool.name: tool for tool in (await client.list_tools()).tools}
    assert set(tools) == TOOLS
    for tool in tools.values():
        assert tool.description and len(tool.description) > 40, tool.name
        assert tool.input_schema["type"] == "object"
    invoke_schema = tools["invoke_agent"].input_schema
    assert set(invoke_schema["required"]) == {"agent_id", "input", *SEED_IDENTITY}
    assert invoke_schema["properties"]["external_user_email"]["type"] == "string"
    assert tools["register_agent"].input_schema["properties"]["platform"]["enum"] == [
        "teams",
        "slack",
        "discord",
        "telegram",
        "notion",
        "custom_http",
    ]
    assert tools["list_agents"].input_schema["properties"]["limit"]["maximum"] == 100
    assert tools["list_agents"].annotations.read_only_hint is True
    assert tools["erase_user_lineage"].annotations.destructive_hint is True


async def test_seed_smoke_tests_over_mcp_give_what_rest_gives(gateway, org, client, platform_server):
    async with mcp_client(gateway, org) as mcp:
        smoke = await seed_smoke_tests(mcp, platform_server)
        agent_id = smoke["agent"]["id"]
        over_mcp = await call(mcp, "get_agent", {"agent_id": agent_id})
        invocations = await call(mcp, "list_invocations", {"agent_id": agent_id})
    over_rest = (await client.get(f"/api/external-agents/{agent_id}", headers=org.headers)).json()
    assert over_mcp == over_rest
    assert invocations["total"] == 0  # the teams agent was never invoked
    [row] = await rows(
        gateway,
        "SELECT status, organization_id, external_user_email, external_session_id, api_key_id "
        "FROM invocation_lineage WHERE id = :id",
        id=smoke["invocation"]["invocation_id"],
    )
    assert row["status"] == "success" and row["organization_id"] == org.organization_id
    assert (row["external_user_email"], row["external_session_id"]) == ("test@example.com", "test-session-123")
    assert row["api_key_id"] is not None


async def test_governance_denials_are_tool_errors_with_rest_fields(gateway, org, client, platform_server):
    limited = await register(client, org, platform_server, path="/limited", name="limited", requests_per_minute=1)
    budgeted = await register(
        client, org, platform_server, path="/budgeted", name="budgeted", max_daily_cost=0.1, cost_per_execution=0.1
    )
    guarded = await register(client, org, platform_server, path="/guarded", name="guarded")
    policy = {
        "name": "no-test-system",
        "effect": "deny",
        "external_agent_id": guarded["id"],
        "conditions": [{"type": "external_system", "systems": ["test"]}],
    }
    created = await client.post("/api/policies", json=policy, headers=org.headers)
    assert created.status_code == 201, created.text
    async with mcp_client(gateway, org) as mcp:
        base = {"input": {"q": 1}, **SEED_IDENTITY}
        await call(mcp, "invoke_agent", {"agent_id": limited["id"], **base})
        rate = await refusal(mcp, "invoke_agent", {"agent_id": limited["id"], **base})
        await call(mcp, "invoke_agent", {"agent_id": budgeted["id"], **base})
        budget = await refusal(mcp, "invoke_agent", {"agent_id": budgeted["id"], **base})
        denied = await refusal(mcp, "invoke_agent", {"agent_id": guarded["id"], **base})
    assert rate["status_code"] == 429 and rate["error_code"] == "RATE_LIMIT_EXCEEDED"
    assert rate["retry_after_seconds"] >= 1 and rate["limit"] == 1 and rate["remaining"] == 0 and rate["reset_time"]
    assert budget["status_code"] == 402 and budget["budget_limit"] == 0.1 and budget["budget_remaining"] == 0.0
    assert denied["status_code"] == 403 and denied["error_code"] == "FORBIDDEN"
    assert denied["policy_id"] == created.json()["policy_id"] and denied["matched_policies"]
    # Refused like REST refuses, and recorded like REST records: the same fields, a denied lineage row.
    over_rest = (await invoke(client, org, guarded["id"])).json()
    assert set(over_rest) == set(denied) and over_rest["detail"] == denied["detail"]
    [row] = await rows(gateway, "SELECT status FROM invocation_lineage WHERE id = :id", id=denied["invocation_id"])
    assert row["status"] == "denied"
    assert len(platform_server.requests("/guarded")) == 0 and len(platform_server.requests("/limited")) == 1


async def test_permissions_and_organisation_scoping(gateway, org, client, platform_server):
    agent = await register(client, org, platform_server, path="/scoped", name="scoped")
    reader = await new_org(gateway, permissions=["read:external_agent"], organization_id=org.organization_id)
    async with mcp_client(gateway, reader) as mcp:
        assert (await call(mcp, "get_agent", {"agent_id": agent["id"]}))["id"] == agent["id"]
        refused = await refusal(mcp, "invoke_agent", {"agent_id": agent["id"], "input": "x", **SEED_IDENTITY})
        assert refused["status_code"] == 403
        assert refused["detail"] == "This API key lacks the 'invoke:external_agent' permission"
        no_create = await refusal(mcp, "register_agent", {**SEED_AGENT, "name": "nope"})
        assert "'create:external_agent'" in no_create["detail"]
        no_erase = await refusal(mcp, "erase_user_lineage", {"email": "test@example.com"})
        assert "'erase:lineage'" in no_erase["detail"]
    other = await new_org(gateway)
    async with mcp_client(gateway, other) as mcp:
        hidden = await refusal(mcp, "get_agent", {"agent_id": agent["id"]})
        assert hidden["status_code"] == 404 and hidden["error_code"] == "NOT_FOUND"
        not_invoked = await refusal(mcp, "invoke_agent", {"agent_id": agent["id"], "input": "x", **SEED_IDENTITY})
        assert not_invoked["status_code"] == 404
        assert (await call(mcp, "list_agents", {}))["total"] == 0
    assert platform_server.requests("/scoped") == []


async def test_bad_arguments_are_clear_tool_errors(gateway, org, client, platform_server):
    agent = await register(client, org, platform_server, path="/bad-args", name="bad-args")
    async with mcp_client(gateway, org) as mcp:
        missing = await mcp.call_tool("invoke_agent", {"agent_id": agent["id"], "input": "x", "external_user_id": "u"})
        assert missing.is_error
        assert "external_user_email" in missing.content[0].text and "Field required" in missing.content[0].text
        too_many = await mcp.call_tool("list_agents", {"limit": 1000})
        assert too_many.is_error and "limit" in too_many.content[0].text
        unknown = await refusal(mcp, "get_agent", {"agent_id": "no-such-agent"})
        assert unknown == {**unknown, "status_code": 404, "detail": "External agent 'no-such-agent' not found"}
        bad_email = await refusal(
            mcp, "invoke_agent", {"agent_id": agent["id"], "input": "x", **SEED_IDENTITY, "external_user_email": "x"}
        )
        assert bad_email["status_code"] == 400 and "X-External-User-Email" in bad_email["detail"]
        bad_platform = await refusal(
            mcp, "register_agent", {"name": "p", "platform": "fax", "platform_config": {"number": "1"}}
        )
        assert bad_platform["error_code"] == "VALIDATION_ERROR" and "fax" in bad_platform["detail"]
        duplicate = await refusal(mcp, "register_agent", {**SEED_AGENT, "name": "bad-args"})
        assert duplicate["status_code"] == 409
    assert platform_server.requests("/bad-args") == []


async def test_lineage_tools_follow_traces_and_erase_users(gateway, org, client, platform_server):
    agent = await register(client, org, platform_server, path="/chain", name="chain")
    user = {**SEED_IDENTITY, "external_user_email": f"{org.organization_id}@example.com"}
    async with mcp_client(gateway, org) as mcp:
        first = await call(mcp, "invoke_agent", {"agent_id": agent["id"], "input": "a", **user})
        second = await call(
            mcp, "invoke_agent", {"agent_id": agent["id"], "input": "b", **user, "external_trace_id": first["trace_id"]}
        )
        graph = await call(mcp, "lineage_graph", {"trace_id": first["trace_id"]})
        record = await call(mcp, "get_invocation", {"invocation_id": second["invocation_id"]})
        access = await call(mcp, "user_lineage", {"email": user["external_user_email"]})
        erased = await call(mcp, "erase_user_lineage", {"email": user["external_user_email"]})
        after = await call(mcp, "get_invocation", {"invocation_id": second["invocation_id"]})
    assert {(e["source"], e["target"]) for e in graph["edges"]} == {(first["invocation_id"], second["invocation_id"])}
    assert record["tracing"]["parent_invocation_id"] == first["invocation_id"] and record["input"] == "b"
    assert access["total"] == 2
    assert erased == {"erased_rows": 2}
    assert after["external_user"]["email"] == "[REDACTED]" and after["cost_usd"] == record["cost_usd"]


async def test_mcp_invocations_are_counted_in_metrics(gateway, org, client, platform_server):
    agent = await register(client, org, platform_server, path="/counted", name="counted")

    async def successes() -> float:
        text = (await client.get("/metrics", headers=org.headers)).text
        # Series are the organisation's own: no sample until its first successful invocation.
        line = next(
            (
                line
                for line in text.splitlines()
                if line.startswith('external_agent_invocations_total{status="success"}')
            ),
            None,
        )
        return float(line.split()[-1]) if line else 0.0

    before = await successes()
    async with mcp_client(gateway, org) as mcp:
        await call(mcp, "invoke_agent", {"agent_id": agent["id"], "input": "x", **SEED_IDENTITY})
    assert await successes() == before + 1


async def test_seed_smoke_tests_over_a_real_http_server(tmp_path, platform_server):
    env = app_env(database_url=f"sqlite:///{tmp_path}/served.db", redis_url=None, data_dir=str(tmp_path))
    with app_server(env, log_dir=tmp_path) as base_url:
        headers = {"Authorization": f"Bearer {BENCH_API_KEY}"}
        async with (
            httpx2.AsyncClient(headers=headers) as http,
            Client(streamable_http_client(f"{base_url}/mcp", http_client=http)) as mcp,
        ):
            smoke = await seed_smoke_tests(mcp, platform_server)
        async with httpx.AsyncClient(base_url=base_url, headers=headers) as rest:
            record = (await rest.get(f"/api/lineage/{smoke['invocation']['invocation_id']}")).json()
            unauthenticated = await rest.post("/mcp", json={}, headers={"Authorization": ""})
    assert record["external_user"]["email"] == "test@example.com" and record["status"] == "success"
    assert unauthenticated.status_code == 401


def _stdio_env(tmp_path: Path, api_key: str | None) -> dict[str, str]:
    env = app_env(database_url=f"sqlite:///{tmp_path}/stdio.db", redis_url=None, data_dir=str(tmp_path))
    env.pop("KAIZEN_BOOTSTRAP_API_KEY")
    if api_key is not None:
        env["KAIZEN_API_KEY"] = api_key
    return env


async def _migrated_key(tmp_path: Path, organization_id: str) -> str:
    from external_agents.models.migrate import upgrade
    from external_agents.stores.api_keys import create_api_key
    from external_agents.stores.database import create_engine

    settings = make_settings(f"sqlite:///{tmp_path}/stdio.db", str(tmp_path))
    upgrade(settings, report=lambda _line: None)
    engine = create_engine(settings)
    try:
        _row, key = await create_api_key(engine, organization_id=organization_id, name="stdio", permissions=["admin"])
    finally:
        await engine.dispose()
    return key


async def test_seed_smoke_tests_over_stdio(tmp_path, platform_server):
    key = await _migrated_key(tmp_path, "stdio-org")
    params = StdioServerParameters(
        command=sys.executable,
        args=["-m", "external_agents.channels.cli", "mcp", "--stdio"],
        env=_stdio_env(tmp_path, key),
        cwd=str(ROOT),
    )
    async with Client(params) as mcp:
        smoke = await seed_smoke_tests(mcp, platform_server)
        tools = {tool.name for tool in (await mcp.list_tools()).tools}
    assert tools == TOOLS
    engine = sa.create_engine(f"sqlite:///{tmp_path}/stdio.db")
    with engine.connect() as connection:
        row = connection.execute(
            sa.text("SELECT organization_id, external_user_email FROM invocation_lineage WHERE id = :id"),
            {"id": smoke["invocation"]["invocation_id"]},
        ).one()
    engine.dispose()
    assert tuple(row) == ("stdio-org", "test@example.com")


@pytest.mark.parametrize(("api_key", "message"), [(None, "KAIZEN_API_KEY"), ("eak_wrong", "Invalid or revoked")])
async def test_stdio_refuses_a_missing_or_invalid_key_in_one_line(tmp_path, api_key, message):
    await _migrated_key(tmp_path, "stdio-org")
    done = await asyncio.to_thread(
        subprocess.run,
        [sys.executable, "-m", "external_agents.channels.cli", "mcp", "--stdio"],
        env=_stdio_env(tmp_path, api_key),
        cwd=ROOT,
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert done.returncode == 2
    assert done.stdout == ""  # stdout is the protocol's: nothing else may be written there
    [line] = done.stderr.strip().splitlines()
    assert line.startswith("error: ") and message in line


async def test_mcp_invoke_keeps_metadata(gateway, org, client, platform_server):
    platform_server.script("/mcp-meta", ScriptedResponse(200, body={"ok": True}))
    agent = await register(client, org, platform_server, path="/mcp-meta", name="mcp-meta")
    async with mcp_client(gateway, org) as mcp:
        invoked = await call(
            mcp, "invoke_agent", {"agent_id": agent["id"], "input": "x", "metadata": INVOKE_METADATA, **SEED_IDENTITY}
        )
        fetched = await call(mcp, "get_invocation", {"invocation_id": invoked["invocation_id"]})
    assert_exact_metadata(fetched["metadata"])


async def test_stdio_session_is_refused_on_its_next_call_after_its_key_is_revoked(tmp_path, platform_server):
    """`keys revoke` reaches an open stdio session: each tool call looks the key up, as REST does per request."""
    from external_agents.stores.api_keys import create_api_key, revoke_api_key
    from external_agents.stores.database import create_engine

    await _migrated_key(tmp_path, "stdio-revoked")
    engine = create_engine(make_settings(f"sqlite:///{tmp_path}/stdio.db", str(tmp_path)))
    try:
        # A second key of the organisation, to revoke while the session under it is open.
        row, session_key = await create_api_key(
            engine, organization_id="stdio-revoked", name="session", permissions=["admin"]
        )
        params = StdioServerParameters(
            command=sys.executable,
            args=["-m", "external_agents.channels.cli", "mcp", "--stdio"],
            env=_stdio_env(tmp_path, session_key),
            cwd=str(ROOT),
        )
        async with Client(params) as mcp:
            agent = await call(mcp, "register_agent", {**SEED_AGENT, "name": "before-revocation"})
            assert (await call(mcp, "get_agent", {"agent_id": agent["id"]}))["name"] == "before-revocation"

            assert await revoke_api_key(engine, key_id=row["id"])

            for tool, arguments in [("get_agent", {"agent_id": agent["id"]}), ("list_agents", {})]:
                refused = await refusal(mcp, tool, arguments)
                assert refused == {
                    **refused,
                    "status_code": 401,
                    "detail": "Invalid or revoked API key",
                    "error_code": "UNAUTHORIZED",
                }
    finally:
        await engine.dispose()
