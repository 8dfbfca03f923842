"""The invoke body's `metadata` is kept with the invocation and comes back exactly.

Over REST on SQLite and PostgreSQL: the lineage record (GET /api/lineage/{id}) and the json, csv and
openlineage exports carry it as it was sent, for delivered and denied invocations alike. MCP and the command
line pass it the same way (test_mcp.py, test_cli.py); an older journal file without it still replays
(test_unrecorded_invocations.py).
"""

from __future__ import annotations

import csv
import io
import json
from typing import Any

from tests.factories import INVOKE_METADATA, assert_exact_metadata, invoke, register
from tests.platform_server import ScriptedResponse


async def lineage_metadata(client, org, invocation_id: str) -> Any:
    response = await client.get(f"/api/lineage/{invocation_id}", headers=org.headers)
    assert response.status_code == 200, response.text
    return response.json()["metadata"]


async def test_rest_metadata_is_in_the_lineage_record_and_every_export(client, org, platform_server):
    platform_server.script("/meta", ScriptedResponse(200, body={"ok": True}))
    agent = await register(client, org, platform_server, path="/meta", name="meta")
    response = await invoke(client, org, agent["id"], body={"input": "x", "metadata": INVOKE_METADATA})
    assert response.status_code == 200, response.text
    invocation_id = response.json()["invocation_id"]
    # The invoke response itself is unchanged: its `metadata` is the call's duration, cost and delivery.
    assert set(response.json()["metadata"]) == {"duration_ms", "cost_usd", "webhook_delivered"}

    assert_exact_metadata(await lineage_metadata(client, org, invocation_id))

    exported = (await client.get("/api/lineage/export?format=json", headers=org.headers)).json()
    [item] = [item for item in exported if item["id"] == invocation_id]
    assert_exact_metadata(item["metadata"])

    text = (await client.get("/api/lineage/export?format=csv", headers=org.headers)).text
    [record] = [r for r in csv.DictReader(io.StringIO(text, newline="")) if r["id"] == invocation_id]
    assert_exact_metadata(json.loads(record["metadata"]))

    lines = (await client.get("/api/lineage/export?format=openlineage", headers=org.headers)).text.splitlines()
    events = [json.loads(line) for line in lines]
    mine = [e for e in events if e["run"]["runId"] == invocation_id]
    assert [e["eventType"] for e in mine] == ["START", "COMPLETE"]
    for event in mine:
        tags = {tag["key"]: tag["value"] for tag in event["run"]["facets"]["tags"]["tags"]}
        assert_exact_metadata(json.loads(tags["metadata"]))


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
    response = await invoke(client, org, agent["id"], body={"input": "x", "metadata": INVOKE_METADATA})
    assert response.status_code == 403, response.text
    assert_exact_metadata(await lineage_metadata(client, org, response.json()["invocation_id"]))
    assert platform_server.requests("/denied-meta") == []
