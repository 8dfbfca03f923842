"""The invoke body's `metadata` is kept with the invocation and comes back exactly, whichever channel sent it.

Over REST, MCP and the command line, on SQLite and PostgreSQL: the lineage record (GET /api/lineage/{id}) and
the json, csv and openlineage exports carry it as it was sent, for delivered and denied invocations alike.
"""

from __future__ import annotations

import csv
import io
import json
import uuid
from typing import Any

import sqlalchemy as sa

from external_agents.models import TABLES
from external_agents.stores.audit import audit_row
from external_agents.stores.invocations import replay_unrecorded
from external_agents.stores.unrecorded import InvocationRecord, UnrecordedJournal
from tests.integration.test_cli import SEED_IDENTITY as CLI_IDENTITY
from tests.integration.test_cli import cli, cli_env, ok_json
from tests.integration.test_invoke_api import invoke, register
from tests.integration.test_mcp import SEED_IDENTITY as MCP_IDENTITY
from tests.integration.test_mcp import call, mcp_client
from tests.integration.test_unrecorded_invocations import rows_for
from tests.platform_server import ScriptedResponse

METADATA: dict[str, Any] = {
    "ticket": "please delete from my calendar -- ${agent_id} 😀",
    "nested": {"list": [1, 2.5, None, True], "one": 1.0, "big": 1e308, "empty": {}},
}


async def lineage_metadata(client, org, invocation_id: str) -> Any:
    response = await client.get(f"/api/lineage/{invocation_id}", headers=org.headers)
    assert response.status_code == 200, response.text
    return response.json()["metadata"]


def assert_exact(found: Any) -> None:
    assert found == METADATA
    # 1.0 stays a float: == alone would accept the integer 1.
    assert isinstance(found["nested"]["one"], float)


async def test_rest_metadata_is_in_the_lineage_record_and_every_export(client, org, platform_server):
    platform_server.script("/meta", ScriptedResponse(200, body={"ok": True}))
    agent = await register(client, org, platform_server, path="/meta", name="meta")
    response = await invoke(client, org, agent["id"], body={"input": "x", "metadata": METADATA})
    assert response.status_code == 200, response.text
    invocation_id = response.json()["invocation_id"]
    # The invoke response itself is unchanged: its `metadata` is the call's duration, cost and delivery.
    assert set(response.json()["metadata"]) == {"duration_ms", "cost_usd", "webhook_delivered"}

    assert_exact(await lineage_metadata(client, org, invocation_id))

    exported = (await client.get("/api/lineage/export?format=json", headers=org.headers)).json()
    [item] = [item for item in exported if item["id"] == invocation_id]
    assert_exact(item["metadata"])

    text = (await client.get("/api/lineage/export?format=csv", headers=org.headers)).text
    [record] = [r for r in csv.DictReader(io.StringIO(text, newline="")) if r["id"] == invocation_id]
    assert_exact(json.loads(record["metadata"]))

    lines = (await client.get("/api/lineage/export?format=openlineage", headers=org.headers)).text.splitlines()
    events = [json.loads(line) for line in lines]
    mine = [e for e in events if e["run"]["runId"] == invocation_id]
    assert [e["eventType"] for e in mine] == ["START", "COMPLETE"]
    for event in mine:
        tags = {tag["key"]: tag["value"] for tag in event["run"]["facets"]["tags"]["tags"]}
        assert_exact(json.loads(tags["metadata"]))


async def test_a_call_without_metadata_keeps_an_empty_object(client, org, platform_server):
    agent = await register(client, org, platform_server, path="/no-meta", name="no-meta")
    response = await invoke(client, org, agent["id"], body={"input": "x"})
    assert response.status_code == 200, response.text
    assert await lineage_metadata(client, org, response.json()["invocation_id"]) == {}


async def test_a_denied_invocation_keeps_its_metadata(client, org, platform_server):
    agent = await register(client, org, platform_server, path="/denied-meta", name="denied-meta")
    policy = {
        "name": "deny-test-system",
        "effect": "deny",
        "external_agent_id": agent["id"],
        "conditions": [{"type": "external_system", "systems": ["test"]}],
    }
    assert (await client.post("/api/policies", json=policy, headers=org.headers)).status_code == 201
    response = await invoke(client, org, agent["id"], body={"input": "x", "metadata": METADATA})
    assert response.status_code == 403, response.text
    assert_exact(await lineage_metadata(client, org, response.json()["invocation_id"]))
    assert platform_server.requests("/denied-meta") == []


async def test_mcp_invoke_keeps_metadata(gateway, org, client, platform_server):
    platform_server.script("/mcp-meta", ScriptedResponse(200, body={"ok": True}))
    agent = await register(client, org, platform_server, path="/mcp-meta", name="mcp-meta")
    async with mcp_client(gateway, org) as mcp:
        invoked = await call(
            mcp, "invoke_agent", {"agent_id": agent["id"], "input": "x", "metadata": METADATA, **MCP_IDENTITY}
        )
        fetched = await call(mcp, "get_invocation", {"invocation_id": invoked["invocation_id"]})
    assert_exact(fetched["metadata"])


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
            json.dumps(METADATA),
            *CLI_IDENTITY,
            "--api-key",
            org.api_key,
            "--json",
        )
    )
    assert_exact(await lineage_metadata(client, org, invoked["invocation_id"]))


async def test_a_journal_file_written_before_metadata_was_kept_is_still_replayed(gateway, tmp_path):
    """A record an older release left in the journal has no `metadata`: it is written with none."""
    engine = gateway.external_agents.engine
    journal = UnrecordedJournal(tmp_path / "unrecorded")
    agent_id, invocation_id = str(uuid.uuid4()), str(uuid.uuid4())
    old = rows_for(agent_id, invocation_id)
    assert "metadata" not in old["lineage_row"]
    journal.keep(
        InvocationRecord(
            lineage_row=old["lineage_row"],
            billing_row=old["billing_row"],
            reservation=None,
            actual_micros=None,
            audit_rows=[audit_row(**event) for event in old["audit_events"]],
        )
    )

    report = await replay_unrecorded(engine, journal)

    assert (report.recorded, report.refused) == (1, 0)
    lineage = TABLES["invocation_lineage"]
    async with engine.connect() as connection:
        stored = (await connection.execute(sa.select(lineage.c.metadata).where(lineage.c.id == invocation_id))).one()
    assert stored.metadata is None
