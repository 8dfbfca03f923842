"""The `external-agents` command line: the same workflows and results as REST, in-process (over SQLite and
PostgreSQL+Redis, through the `gateway` fixture's database) and with `--url` against a real server process.

Commands run through Typer's CliRunner in a worker thread (each runs its own event loop, as from a shell);
exit codes and the one-line error messages are part of the contract.
"""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
import time
import uuid
from pathlib import Path
from typing import Any

import pytest
from typer.testing import CliRunner, Result

from external_agents.channels.cli import app
from tests.factories import INVOKE_METADATA, TEST_FERNET_KEY, assert_exact_metadata, new_org, register, rows
from tests.platform_server import ScriptedResponse
from tests.process_servers import BENCH_API_KEY, ROOT, app_env, app_server

SEED_AGENT = [
    "--name",
    "Test Agent",
    "--platform",
    "teams",
    "--platform-config",
    '{"webhook_url": "https://example.com/webhook"}',
    "--auth-config",
    '{"auth_type": "none", "credentials": {}}',
    "--max-monthly-cost",
    "100.0",
]
SEED_IDENTITY = [
    "--user-id",
    "test@example.com",
    "--user-email",
    "test@example.com",
    "--system",
    "test",
    "--session-id",
    "test-session-123",
]


def cli_env(gateway) -> dict[str, str | None]:
    """The environment an operator's shell would have for the gateway's database (None unsets a variable)."""
    settings = gateway.external_agents.settings
    return {
        "DATABASE_URL": settings.database_url,
        "KAIZEN_DATA_DIR": str(settings.kaizen_data_dir),
        "REDIS_URL": settings.redis_url,
        "EXTERNAL_AGENT_ENCRYPTION_KEY": TEST_FERNET_KEY,
        "EXTERNAL_AGENT_ALLOW_PRIVATE_WEBHOOKS": "true",
        "EXTERNAL_AGENT_WEBHOOK_TIMEOUT_SECONDS": "2",
        "EXTERNAL_AGENT_WEBHOOK_RETRY_ATTEMPTS": "1",
        "KAIZEN_API_KEY": None,
        "KAIZEN_URL": None,
        # A wide terminal, so table cells are not wrapped across lines.
        "COLUMNS": "250",
    }


async def cli(env: dict[str, str | None], *args: str) -> Result:
    return await asyncio.to_thread(CliRunner().invoke, app, list(args), env=env)


def ok_json(result: Result) -> Any:
    assert result.exit_code == 0, result.output
    return json.loads(result.stdout)


def one_line_error(result: Result) -> str:
    [line] = result.stderr.strip().splitlines()
    assert line.startswith("error: ")
    return line


async def seed_smoke_tests(env: dict[str, str | None], platform_server, *where: str) -> dict[str, Any]:
    """The migration guide's five smoke tests as commands; `where` is --api-key KEY, --org ORG or --url/--api-key."""
    # Test 1: create an external agent.
    created = ok_json(await cli(env, "agents", "create", *SEED_AGENT, *where, "--json"))
    assert created["name"] == "Test Agent" and created["auth_config"]["credentials"] == "***"
    # Test 2: list external agents.
    listing = ok_json(await cli(env, "agents", "list", *where, "--json"))
    assert created["id"] in [agent["id"] for agent in listing["items"]]
    # Test 3: governance status.
    status = ok_json(await cli(env, "governance", created["id"], *where, "--json"))
    assert status["budget"]["monthly_budget_usd"] == 100.0 and status["rate_limit"]["allowed"] is True
    # Test 4: invoke (an agent the local platform server plays); lineage is checked by the callers.
    platform_server.script("/cli-smoke", ScriptedResponse(200, body={"answer": "ok"}))
    hook = ok_json(
        await cli(
            env,
            "agents",
            "create",
            "--name",
            "smoke",
            "--platform",
            "custom_http",
            "--platform-config",
            f'{{"url": "{platform_server.url("/cli-smoke")}"}}',
            *where,
            "--json",
        )
    )
    invoked = ok_json(await cli(env, "invoke", hook["id"], "--input", '"test"', *SEED_IDENTITY, *where, "--json"))
    assert invoked["status"] == "success" and invoked["output"] == {"answer": "ok"}
    assert platform_server.requests("/cli-smoke")[0].json()["input"] == "test"
    # Test 5: an existing workflow still works.
    greeting = ok_json(await cli(env, "workflows", "run", "greeting", *where, "--json"))
    assert greeting["outputs"] == {"greet": {"greeting": "Hello, world!"}}
    return {"agent": created, "invocation": invoked}


async def test_seed_smoke_tests_in_process_give_what_rest_gives(gateway, org, client, platform_server):
    env = cli_env(gateway)
    smoke = await seed_smoke_tests(env, platform_server, "--api-key", org.api_key)
    agent_id = smoke["agent"]["id"]
    over_cli = ok_json(await cli(env, "agents", "get", agent_id, "--api-key", org.api_key, "--json"))
    over_rest = (await client.get(f"/api/external-agents/{agent_id}", headers=org.headers)).json()
    assert over_cli == over_rest
    [row] = await rows(
        gateway,
        "SELECT status, organization_id, external_user_email, external_session_id FROM invocation_lineage "
        "WHERE id = :id",
        id=smoke["invocation"]["invocation_id"],
    )
    assert row == {
        "status": "success",
        "organization_id": org.organization_id,
        "external_user_email": "test@example.com",
        "external_session_id": "test-session-123",
    }
    table = await cli(env, "agents", "list", "--api-key", org.api_key)
    assert table.exit_code == 0 and "Test Agent" in table.stdout and "2 of 2 (page 1)" in table.stdout


async def test_seed_smoke_tests_against_a_real_server_with_url(tmp_path, platform_server):
    server_env = app_env(database_url=f"sqlite:///{tmp_path}/served.db", redis_url=None, data_dir=str(tmp_path))
    with app_server(server_env, log_dir=tmp_path) as base_url:
        # Nothing in the environment but where the server is and the key: no database access at all.
        env: dict[str, str | None] = {"KAIZEN_URL": base_url, "KAIZEN_API_KEY": BENCH_API_KEY, "DATABASE_URL": None}
        smoke = await seed_smoke_tests(env, platform_server)
        record = ok_json(await cli(env, "agents", "get", smoke["agent"]["id"], "--json"))
        lineage = ok_json(await cli(env, "lineage", "list", "--user-email", "test@example.com", "--json"))
        graph = ok_json(
            await cli(env, "lineage", "graph", "--invocation-id", smoke["invocation"]["invocation_id"], "--json")
        )
        wrong_key = await cli({**env, "KAIZEN_API_KEY": "eak_wrong"}, "agents", "list")
    assert record["id"] == smoke["agent"]["id"] and record["governance"]["monthly_spent_usd"] == 0.0
    assert [item["invocation_id"] for item in lineage["items"]] == [smoke["invocation"]["invocation_id"]]
    assert [node["id"] for node in graph["nodes"]] == [smoke["invocation"]["invocation_id"]]
    assert wrong_key.exit_code == 2 and "Invalid or revoked API key" in one_line_error(wrong_key)
    unreachable = await cli(env, "agents", "list")  # the server has stopped
    assert unreachable.exit_code == 1 and "Cannot reach the gateway" in one_line_error(unreachable)


async def test_operator_acts_for_an_organisation_with_org(gateway, org, client):
    env = cli_env(gateway)
    created = ok_json(await cli(env, "agents", "create", *SEED_AGENT, "--org", org.organization_id, "--json"))
    assert created["organization_id"] == org.organization_id and created["created_by"] == "cli-operator"
    seen = await client.get(f"/api/external-agents/{created['id']}", headers=org.headers)
    assert seen.status_code == 200
    # --org wins over a key from the environment, and never reaches across to a server.
    other = await new_org(gateway)
    listing = ok_json(
        await cli({**env, "KAIZEN_API_KEY": other.api_key}, "agents", "list", "--org", org.organization_id, "--json")
    )
    assert [agent["id"] for agent in listing["items"]] == [created["id"]]
    remote = await cli(env, "agents", "list", "--org", org.organization_id, "--url", "http://127.0.0.1:9")
    assert remote.exit_code == 2 and "--org works in-process only" in one_line_error(remote)


async def test_operator_issues_lists_and_revokes_api_keys(gateway):
    env = cli_env(gateway)
    organization = f"org-keys-{uuid.uuid4().hex[:8]}"
    created = await cli(
        env,
        "keys",
        "create",
        "--org",
        organization,
        "--name",
        "ci",
        "-p",
        "read:lineage",
        "-p",
        "invoke:external_agent",
    )
    assert created.exit_code == 0, created.output
    *report, key = created.stdout.strip().splitlines()
    key_id = report[0].split()[2]
    assert report == [f"Created key {key_id} for organization {organization} with invoke:external_agent, read:lineage"]
    assert key.startswith("eak_")
    assert ok_json(await cli(env, "lineage", "list", "--api-key", key, "--json"))["total"] == 0

    [listed] = ok_json(await cli(env, "keys", "list", "--org", organization, "--json"))
    assert listed["id"] == key_id and listed["prefix"] == key[:12] and listed["revoked_at"] is None
    assert listed["permissions"] == ["invoke:external_agent", "read:lineage"]
    table = await cli(env, "keys", "list", "--org", organization)
    assert table.exit_code == 0 and key_id in table.stdout and key not in table.stdout

    unknown = await cli(env, "keys", "create", "--org", organization, "--name", "x", "-p", "fly")
    assert unknown.exit_code == 2 and "unknown permission fly; expected any of:" in one_line_error(unknown)
    empty = await cli(env, "keys", "create", "--org", " ", "--name", "x")
    assert empty.exit_code == 2 and "--org and --name must not be empty" in one_line_error(empty)

    revoked = await cli(env, "keys", "revoke", key_id)
    assert revoked.exit_code == 0 and revoked.stdout.strip() == f"Revoked key {key_id}"
    again = await cli(env, "keys", "revoke", key_id)
    assert again.exit_code == 1 and f"no active key with id {key_id}" in one_line_error(again)
    refused = await cli(env, "lineage", "list", "--api-key", key)
    assert refused.exit_code == 2 and "Invalid or revoked API key" in one_line_error(refused)
    [listed] = ok_json(await cli(env, "keys", "list", "--org", organization, "--json"))
    assert listed["revoked_at"] is not None


async def test_changes_and_deletes_agents(gateway, org, client):
    env = cli_env(gateway)
    key = ["--api-key", org.api_key]
    created = ok_json(await cli(env, "agents", "create", *SEED_AGENT, *key, "--json"))
    updated = ok_json(
        await cli(
            env,
            "agents",
            "update",
            created["id"],
            "--requests-per-minute",
            "3",
            "--description",
            "d",
            "--monthly-execution-limit",
            "500",
            *key,
            "--json",
        )
    )
    assert (updated["requests_per_minute"], updated["description"], updated["name"]) == (3, "d", "Test Agent")
    assert (updated["daily_execution_limit"], updated["monthly_execution_limit"]) == (None, 500)
    deleted = await cli(env, "agents", "delete", created["id"], *key)
    assert deleted.exit_code == 0 and f"Deleted agent {created['id']}" in deleted.stdout
    gone = (await client.get(f"/api/external-agents/{created['id']}", headers=org.headers)).status_code
    assert gone == 404


@pytest.mark.parametrize(
    ("args", "code", "fragment"),
    [
        (["invoke", "AGENT", "--input", "{bad", *SEED_IDENTITY], 2, "--input: not valid JSON"),
        (["invoke", "AGENT", "--input", "hello", *SEED_IDENTITY], 2, "--input: not valid JSON"),
        (["invoke", "missing-agent", "--input", '"x"', *SEED_IDENTITY], 3, "External agent 'missing-agent' not found"),
        (["agents", "get", "missing-agent"], 3, "not found"),
        (["agents", "update", "AGENT"], 2, "nothing to change"),
        (
            ["agents", "create", *SEED_AGENT[:4], "--platform-config", "[1]"],
            2,
            "--platform-config: must be a JSON object",
        ),
        (
            ["agents", "create", "--name", "x", "--platform", "fax", "--platform-config", "{}"],
            2,
            "Unknown platform 'fax'",
        ),
        (
            ["agents", "create", *SEED_AGENT, "--auth-config", "@/no/such/file.json"],
            2,
            "cannot read /no/such/file.json",
        ),
        (
            [
                "invoke",
                "AGENT",
                "--input",
                '"x"',
                *SEED_IDENTITY[:2],
                "--user-email",
                "not-an-email",
                *SEED_IDENTITY[4:],
            ],
            2,
            "X-External-User-Email must be an email address",
        ),
    ],
)
async def test_bad_input_exits_with_its_code_and_one_line(gateway, org, client, platform_server, args, code, fragment):
    agent = await register(client, org, platform_server, path="/never", name="never")
    args = [agent["id"] if arg == "AGENT" else arg for arg in args]
    result = await cli(cli_env(gateway), *args, "--api-key", org.api_key)
    assert result.exit_code == code, result.output
    assert fragment in one_line_error(result)
    assert platform_server.requests("/never") == []


@pytest.mark.parametrize(
    ("args", "fragment"),
    [
        (["agents", "list"], "give --api-key (or set KAIZEN_API_KEY), or --org ORG"),
        (["agents", "list", "--api-key", "eak_wrong"], "Invalid or revoked API key"),
        (["agents", "list", "--url", "http://127.0.0.1:9"], "--url needs --api-key"),
        (["mcp"], "only --stdio is served here"),
        (["invoke", "x", "--input", '"x"', "--user-id", "u"], "Missing option"),
    ],
)
async def test_usage_and_configuration_errors_exit_2(gateway, args, fragment):
    result = await cli(cli_env(gateway), *args)
    assert result.exit_code == 2
    assert fragment in result.stderr


async def test_permission_refusal_exits_1_and_governance_denial_exits_4(gateway, org, client, platform_server):
    env = cli_env(gateway)
    limited = await register(
        client,
        org,
        platform_server,
        path="/cli-limited",
        name="cli-limited",
        requests_per_minute=1,
        max_daily_cost=0.1,
        cost_per_execution=0.1,
    )
    guarded = await register(client, org, platform_server, path="/cli-guarded", name="cli-guarded")
    reader = await new_org(gateway, permissions=["read:external_agent"], organization_id=org.organization_id)
    refused = await cli(env, "invoke", limited["id"], "--input", "1", *SEED_IDENTITY, "--api-key", reader.api_key)
    assert refused.exit_code == 1
    assert "This API key lacks the 'invoke:external_agent' permission" in one_line_error(refused)

    invoke = ["invoke", limited["id"], "--input", "1", *SEED_IDENTITY, "--api-key", org.api_key]
    assert (await cli(env, *invoke)).exit_code == 0
    second = await cli(env, *invoke, "--json")
    assert second.exit_code == 4
    body = json.loads(second.stdout)  # --json: the API's error body, for scripts
    if gateway.external_agents.redis is not None:
        # Windows shared through Redis: the second call within the minute is refused first.
        assert body["status_code"] == 429 and body["retry_after_seconds"] >= 1
        assert f"retry after {body['retry_after_seconds']} s" in one_line_error(second)
    else:
        # Embedded mode keeps rate-limit windows in each process, and every command is a process of its own;
        # the budget lives in the database and refuses the second call.
        assert body["status_code"] == 402 and body["budget_limit"] == 0.1
        assert "$0.0 of $0.1 left" in one_line_error(second)

    policy = ok_json(
        await cli(
            env,
            "policies",
            "create",
            "--name",
            "no-test-system",
            "--effect",
            "deny",
            "--agent-id",
            guarded["id"],
            "--conditions",
            '[{"type": "external_system", "systems": ["test"]}]',
            "--api-key",
            org.api_key,
            "--json",
        )
    )
    denied = await cli(env, "invoke", guarded["id"], "--input", "1", *SEED_IDENTITY, "--api-key", org.api_key)
    assert denied.exit_code == 4 and f"policy {policy['policy_id']}" in one_line_error(denied)
    assert platform_server.requests("/cli-guarded") == [] and len(platform_server.requests("/cli-limited")) == 1


async def test_policy_commands_round_trip(gateway, org, client):
    env = cli_env(gateway)
    key = ["--api-key", org.api_key]
    created = ok_json(
        await cli(env, "policies", "create", "--name", "p", "--effect", "allow", "--priority", "5", *key, "--json")
    )
    policy_id = created["policy_id"]
    listed = ok_json(await cli(env, "policies", "list", *key, "--json"))
    assert listed == (await client.get("/api/policies", headers=org.headers)).json()
    updated = ok_json(await cli(env, "policies", "update", policy_id, "--disabled", *key, "--json"))
    assert updated["enabled"] is False and updated["priority"] == 5
    assert ok_json(await cli(env, "policies", "get", policy_id, *key, "--json")) == updated
    assert (await cli(env, "policies", "delete", policy_id, *key)).exit_code == 0
    missing = await cli(env, "policies", "get", policy_id, *key)
    assert missing.exit_code == 3


async def test_lineage_commands_are_registered(gateway, org, client, platform_server):
    agent = await register(client, org, platform_server, path="/cli-lineage", name="cli-lineage")
    env = cli_env(gateway)
    invoked = ok_json(
        await cli(env, "invoke", agent["id"], "--input", '{"q": 1}', *SEED_IDENTITY, "--api-key", org.api_key, "--json")
    )
    listing = ok_json(await cli(env, "lineage", "list", "--org", org.organization_id, "--json"))
    assert [item["invocation_id"] for item in listing["items"]] == [invoked["invocation_id"]]
    with_key = ok_json(await cli(env, "lineage", "list", "--api-key", org.api_key, "--json"))
    assert with_key == listing
    table = await cli(env, "lineage", "graph", "--trace-id", invoked["trace_id"], "--api-key", org.api_key)
    assert table.exit_code == 0 and invoked["invocation_id"] in table.stdout and "1 nodes" in table.stdout
    other = await new_org(gateway)
    hidden = ok_json(await cli(env, "lineage", "list", "--api-key", other.api_key, "--json"))
    assert hidden["items"] == [] and hidden["total"] == 0


async def test_user_text_is_shown_as_typed(gateway, org, client, platform_server):
    await register(client, org, platform_server, path="/markup", name="[bold]markup[/bold]")
    result = await cli(cli_env(gateway), "agents", "list", "--api-key", org.api_key)
    assert result.exit_code == 0 and "[bold]markup[/bold]" in result.stdout


def test_help_is_fast_and_imports_nothing_heavy():
    loaded = subprocess.run(
        [sys.executable, "-c", "import sys, external_agents.channels.cli; print(' '.join(sorted(sys.modules)))"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        check=True,
    ).stdout.split()
    assert not {"kailash", "sqlalchemy", "fastapi", "nexus", "mcp", "httpx"} & set(loaded)
    # The console script the package installs, next to this interpreter.
    script = str(Path(sys.executable).parent / "external-agents")
    timings = []
    for _ in range(3):
        started = time.perf_counter()
        done = subprocess.run([script, "--help"], cwd=ROOT, capture_output=True, check=False)
        timings.append(time.perf_counter() - started)
        assert done.returncode == 0 and b"agents" in done.stdout
    assert min(timings) < 0.5, timings


def test_remote_client_sends_the_identity_headers_rest_reads():
    from external_agents.channels import remote_client, rest_api
    from external_agents.identity import CONTEXT_HEADER, IDENTITY_HEADERS

    # Both channels take the one declaration.
    assert remote_client.IDENTITY_HEADERS is rest_api.IDENTITY_HEADERS is IDENTITY_HEADERS
    assert remote_client.CONTEXT_HEADER == rest_api.CONTEXT_HEADER == CONTEXT_HEADER


async def test_cli_invoke_keeps_metadata(gateway, org, client, platform_server):
    platform_server.script("/cli-meta", ScriptedResponse(200, body={"ok": True}))
    agent = await register(client, org, platform_server, path="/cli-meta", name="cli-meta")
    invoked = ok_json(
        await cli(
            cli_env(gateway),
            "invoke",
            agent["id"],
            "--input",
            '"x"',
            "--metadata",
            json.dumps(INVOKE_METADATA),
            *SEED_IDENTITY,
            "--api-key",
            org.api_key,
            "--json",
        )
    )
    record = await client.get(f"/api/lineage/{invoked['invocation_id']}", headers=org.headers)
    assert_exact_metadata(record.json()["metadata"])
