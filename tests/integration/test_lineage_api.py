"""Lineage and compliance over REST, on SQLite and PostgreSQL: list, get, graph, export, GDPR access and erasure.

Rows are inserted directly with SQLAlchemy (the invocation workflow that writes them is tested elsewhere);
each test works in an organisation of its own, so tests never see each other's rows.
"""

from __future__ import annotations

import asyncio
import csv
import hashlib
import io
import json
import uuid
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
import sqlalchemy as sa
from kailash.workflow.builder import WorkflowBuilder

from external_agents.models import TABLES
from tests.factories import Org, new_org

lineage = TABLES["invocation_lineage"]
BASE_TIME = datetime(2025, 3, 1, 12, 0, tzinfo=UTC)


def lineage_row(organization_id: str, **overrides: Any) -> dict[str, Any]:
    """One invocation as the invocation workflow records it; override what a test is about."""
    invocation_id = str(uuid.uuid4())
    started = overrides.pop("request_timestamp", BASE_TIME)
    row: dict[str, Any] = {
        "id": invocation_id,
        "external_user_id": "user-1",
        "external_user_email": "alice@example.com",
        "external_user_name": "Alice Example",
        "external_system": "copilot-studio",
        "external_session_id": "session-1",
        "external_trace_id": None,
        "external_context": {"environment": "test", "country": "DE"},
        "api_key_id": "key-1",
        "organization_id": organization_id,
        "external_agent_id": "agent-1",
        "external_agent_name": "Support Bot",
        "platform": "slack",
        "trace_id": f"trace-{uuid.uuid4().hex}",
        "parent_invocation_id": None,
        "workflow_id": None,
        "input": {"text": "hello"},
        "output": {"text": "hi there"},
        "status": "success",
        "denial_reason": None,
        "cost_usd": 0.05,
        "duration_ms": 120.5,
        "webhook_delivery_status": "delivered",
        "webhook_delivery_error": None,
        "webhook_attempts": 1,
        "request_timestamp": started,
        "response_timestamp": started + timedelta(milliseconds=120),
    }
    row.update(overrides)
    return row


async def insert(gateway, *rows: dict[str, Any]) -> list[dict[str, Any]]:
    async with gateway.external_agents.engine.begin() as connection:
        await connection.execute(lineage.insert(), list(rows))
    return list(rows)


def chain(organization_id: str, length: int, **common: Any) -> list[dict[str, Any]]:
    """Invocations each made with the previous one's trace_id: A -> B -> C ..."""
    rows: list[dict[str, Any]] = []
    for index in range(length):
        parent = rows[-1] if rows else None
        rows.append(
            lineage_row(
                organization_id,
                external_agent_name=f"agent-{chr(65 + index)}",
                parent_invocation_id=parent["id"] if parent else None,
                external_trace_id=parent["trace_id"] if parent else None,
                request_timestamp=BASE_TIME + timedelta(seconds=index),
                **common,
            )
        )
    return rows


async def stored(gateway, invocation_id: str) -> dict[str, Any]:
    async with gateway.external_agents.engine.connect() as connection:
        row = (await connection.execute(sa.select(lineage).where(lineage.c.id == invocation_id))).one()
    return dict(row._mapping)


def assert_error(response, *, status: int, fragment: str) -> None:
    assert response.status_code == status, response.text
    body = response.json()
    assert body["status_code"] == status and fragment in body["detail"], body
    assert {"error_code", "timestamp", "request_id"} <= body.keys()


# --- List ---------------------------------------------------------------------------------------------------


async def test_list_filters_paginate_and_count_the_true_total(client, org, gateway):
    rows = [
        lineage_row(
            org.organization_id,
            request_timestamp=BASE_TIME + timedelta(minutes=i),
            external_user_email="bob@example.com" if i % 3 == 0 else "alice@example.com",
            external_agent_id="agent-2" if i % 2 else "agent-1",
            status="failure" if i == 4 else "success",
            external_system="zapier" if i == 5 else "copilot-studio",
            external_session_id="session-9" if i >= 5 else "session-1",
        )
        for i in range(7)
    ]
    await insert(gateway, *rows)
    other = await new_org(gateway)
    await insert(gateway, lineage_row(other.organization_id))

    first = (await client.get("/api/lineage?page=1&limit=3", headers=org.headers)).json()
    assert (first["total"], first["page"], first["limit"], first["has_more"]) == (7, 1, 3, True)
    assert [item["invocation_id"] for item in first["items"]] == [r["id"] for r in reversed(rows)][:3]
    last = (await client.get("/api/lineage?page=3&limit=3", headers=org.headers)).json()
    assert (len(last["items"]), last["has_more"]) == (1, False)

    item = first["items"][0]
    assert "input" not in item and "output" not in item and "context" not in item["external_system"]
    assert item["caller"]["organization_id"] == org.organization_id

    async def total(**params: str) -> int:
        response = await client.get("/api/lineage", params=params, headers=org.headers)
        assert response.status_code == 200, response.text
        return response.json()["total"]

    assert await total(external_user_email="bob@example.com") == 3
    assert await total(external_agent_id="agent-2") == 3
    assert await total(status="failure") == 1
    assert await total(external_system="zapier") == 1
    assert await total(session_id="session-9") == 2
    assert await total(external_agent_id="agent-1", external_user_email="alice@example.com") == 2
    assert await total(status="") == 7  # an empty filter is no filter


async def test_list_date_range_is_half_open_and_honours_offsets(client, org, gateway):
    rows = [lineage_row(org.organization_id, request_timestamp=BASE_TIME + timedelta(hours=h)) for h in range(4)]
    await insert(gateway, *rows)
    # 14:00+02:00 is BASE_TIME (12:00 UTC); 15:00+02:00 is an hour later: [12:00, 13:00) holds one row.
    params = {"start_date": "2025-03-01T14:00:00+02:00", "end_date": "2025-03-01T15:00:00+02:00"}
    page = (await client.get("/api/lineage", params=params, headers=org.headers)).json()
    assert [item["invocation_id"] for item in page["items"]] == [rows[0]["id"]]
    zulu = {"start_date": "2025-03-01T13:00:00Z"}
    assert (await client.get("/api/lineage", params=zulu, headers=org.headers)).json()["total"] == 3


@pytest.mark.parametrize(
    ("query", "fragment"),
    [
        ("start_date=2025-01-01T00:00:00", "start_date: must include a time zone"),
        ("end_date=2025-01-01", "end_date: must include a time zone"),
        ("start_date=yesterday", "start_date: not an ISO 8601 timestamp"),
        ("start_date=2025-01-01T00:00:00%2B25:00", "start_date: not an ISO 8601 timestamp"),
        ("start_date=2025-02-01T00:00:00Z&end_date=2025-01-01T00:00:00Z", "must be before end_date"),
        ("status=exploded", "status: must be one of pending, success, failure, timeout, denied"),
        ("limit=101", "limit"),
        ("limit=0", "limit"),
        ("page=0", "page"),
        ("page=x", "page"),
        ("external_user_email=a%00b", "U+0000"),
    ],
)
async def test_bad_list_query_is_400(client, org, query, fragment):
    assert_error(await client.get(f"/api/lineage?{query}", headers=org.headers), status=400, fragment=fragment)


# --- Get ----------------------------------------------------------------------------------------------------


async def test_get_returns_the_full_record_with_identity_layers_grouped(client, org, gateway):
    parent = lineage_row(org.organization_id)
    row = lineage_row(
        org.organization_id,
        parent_invocation_id=parent["id"],
        external_trace_id=parent["trace_id"],
        workflow_id="wf-7",
        status="denied",
        denial_reason="policy 'weekdays only' denied",
        cost_usd=0.0,
        webhook_delivery_status=None,
        webhook_attempts=None,
    )
    await insert(gateway, parent, row)
    response = await client.get(f"/api/lineage/{row['id']}", headers=org.headers)
    assert response.status_code == 200, response.text
    assert response.json() == {
        "invocation_id": row["id"],
        "external_user": {"id": "user-1", "email": "alice@example.com", "name": "Alice Example"},
        "external_system": {
            "name": "copilot-studio",
            "session_id": "session-1",
            "trace_id": parent["trace_id"],
            "context": {"environment": "test", "country": "DE"},
        },
        "caller": {"api_key_id": "key-1", "organization_id": org.organization_id},
        "agent": {"id": "agent-1", "name": "Support Bot", "platform": "slack"},
        "tracing": {"trace_id": row["trace_id"], "parent_invocation_id": parent["id"], "workflow_id": "wf-7"},
        "status": "denied",
        "denial_reason": "policy 'weekdays only' denied",
        "cost_usd": 0.0,
        "duration_ms": 120.5,
        "request_timestamp": "2025-03-01T12:00:00+00:00",
        "response_timestamp": "2025-03-01T12:00:00.120000+00:00",
        "webhook_delivery_status": None,
        "webhook_delivery_error": None,
        "webhook_attempts": None,
        "reported_cost_usd": None,
        "record_note": None,
        "input": {"text": "hello"},
        "output": {"text": "hi there"},
        "metadata": None,
    }


TRICKY_TEXT = "please delete from my calendar; select * from x -- ${agent_id} Ünïcödé 😀 中文"


async def test_values_round_trip_exactly(client, org, gateway):
    payload = {"text": TRICKY_TEXT, "nested": {"list": [1, 2.5, None, True], "deep": {"x": "/* y */"}}}
    row = lineage_row(
        org.organization_id,
        external_user_name=TRICKY_TEXT,
        external_agent_name=TRICKY_TEXT,
        input=payload,
        output={"reply": TRICKY_TEXT},
        cost_usd=0.1 + 0.2,
        duration_ms=123.456789012345,
    )
    await insert(gateway, row)
    fetched = (await client.get(f"/api/lineage/{row['id']}", headers=org.headers)).json()
    assert fetched["external_user"]["name"] == TRICKY_TEXT and fetched["agent"]["name"] == TRICKY_TEXT
    assert fetched["input"] == payload and fetched["output"] == {"reply": TRICKY_TEXT}
    assert fetched["cost_usd"] == 0.1 + 0.2 and fetched["duration_ms"] == 123.456789012345


async def test_another_organisations_invocation_is_404_without_its_data(client, org, gateway):
    row = (await insert(gateway, lineage_row(org.organization_id, external_user_name="Secret Name")))[0]
    other = await new_org(gateway)
    response = await client.get(f"/api/lineage/{row['id']}", headers=other.headers)
    assert_error(response, status=404, fragment="not found")
    assert "Secret Name" not in response.text
    assert (await client.get("/api/lineage", headers=other.headers)).json()["total"] == 0
    assert_error(
        await client.get("/api/lineage/no-such-invocation", headers=org.headers), status=404, fragment="not found"
    )


# --- Graph --------------------------------------------------------------------------------------------------


def edge_pairs(graph: dict[str, Any]) -> set[tuple[str, str]]:
    return {(edge["source"], edge["target"]) for edge in graph["edges"]}


async def get_graph(client, org: Org, **params: Any) -> dict[str, Any]:
    response = await client.get("/api/lineage/graph", params=params, headers=org.headers)
    assert response.status_code == 200, response.text
    return response.json()


async def test_graph_of_chain_a_b_c_from_the_middle_trace(client, org, gateway):
    a, b, c = chain(org.organization_id, 3)
    a["cost_usd"], b["cost_usd"], c["cost_usd"] = 0.1, 0.2, 0.3
    c["platform"], c["status"] = "teams", "failure"
    await insert(gateway, a, b, c)
    graph = await get_graph(client, org, trace_id=b["trace_id"])
    assert [node["id"] for node in graph["nodes"]] == [a["id"], b["id"], c["id"]]
    assert [node["level"] for node in graph["nodes"]] == [-1, 0, 1]
    assert edge_pairs(graph) == {(a["id"], b["id"]), (b["id"], c["id"])}
    to_c = next(edge for edge in graph["edges"] if edge["target"] == c["id"])
    assert to_c["invocation_id"] == c["id"] and to_c["cost_usd"] == 0.3
    assert graph["metadata"]["total_nodes"] == 3 and graph["metadata"]["external_nodes"] == 3
    assert graph["metadata"]["total_cost_usd"] == 0.6  # exact: 0.1 + 0.2 + 0.3 in floats is 0.6000000000000001
    node_c = graph["nodes"][2]
    assert node_c["agent"] == {"id": "agent-1", "name": "agent-C", "platform": "teams"}
    assert node_c["status"] == "failure" and node_c["external_user_email"] == "alice@example.com"
    assert node_c["request_timestamp"] == "2025-03-01T12:00:02+00:00"
    assert node_c["ui"]["label"] == "agent-C (teams)" and node_c["ui"]["color"] == "#6264A7"
    assert graph["nodes"][0]["ui"]["color"] == "#4A154B"  # slack

    from_a = await get_graph(client, org, invocation_id=a["id"], depth=1)
    assert [node["id"] for node in from_a["nodes"]] == [a["id"], b["id"]]
    assert edge_pairs(from_a) == {(a["id"], b["id"])}
    only_c = await get_graph(client, org, trace_id=c["trace_id"], depth=0)
    assert [node["id"] for node in only_c["nodes"]] == [c["id"]] and only_c["edges"] == []


async def test_graph_of_a_session_includes_descendants_in_other_sessions(client, org, gateway):
    session = f"session-{uuid.uuid4().hex}"
    a, b, c, d = chain(org.organization_id, 4, external_session_id=session)
    d["external_session_id"] = "elsewhere"
    e = lineage_row(org.organization_id, parent_invocation_id=d["id"], external_session_id="elsewhere")
    lone = lineage_row(org.organization_id, external_session_id=session)
    unrelated = lineage_row(org.organization_id, external_session_id="elsewhere")
    await insert(gateway, a, b, c, d, e, lone, unrelated)
    graph = await get_graph(client, org, session_id=session)
    assert {node["id"] for node in graph["nodes"]} == {a["id"], b["id"], c["id"], d["id"], e["id"], lone["id"]}
    assert edge_pairs(graph) == {(a["id"], b["id"]), (b["id"], c["id"]), (c["id"], d["id"]), (d["id"], e["id"])}
    shallow = await get_graph(client, org, session_id=session, depth=1)
    assert {node["id"] for node in shallow["nodes"]} == {a["id"], b["id"], c["id"], d["id"], lone["id"]}
    empty = await get_graph(client, org, session_id="no-such-session")
    assert (empty["nodes"], empty["edges"], empty["metadata"]["total_nodes"]) == ([], [], 0)


async def test_graph_of_a_workflow_and_a_tree(client, org, gateway):
    root = lineage_row(org.organization_id, workflow_id="wf-1")
    left = lineage_row(org.organization_id, workflow_id="wf-1", parent_invocation_id=root["id"])
    right = lineage_row(org.organization_id, workflow_id="wf-1", parent_invocation_id=root["id"])
    leaf = lineage_row(org.organization_id, parent_invocation_id=left["id"], platform=None)
    await insert(gateway, root, left, right, leaf)
    graph = await get_graph(client, org, workflow_id="wf-1")
    assert edge_pairs(graph) == {(root["id"], left["id"]), (root["id"], right["id"]), (left["id"], leaf["id"])}
    assert graph["metadata"]["external_nodes"] == 3
    leaf_node = next(node for node in graph["nodes"] if node["id"] == leaf["id"])
    assert leaf_node["type"] == "invocation" and leaf_node["ui"]["color"] == "#6B7280"


async def test_graph_survives_a_looping_ancestry(client, org, gateway):
    session = f"loop-{uuid.uuid4().hex}"
    x = lineage_row(org.organization_id, external_session_id=session)
    y = lineage_row(org.organization_id, external_session_id=session, parent_invocation_id=x["id"])
    z = lineage_row(org.organization_id, parent_invocation_id=y["id"])
    x["parent_invocation_id"] = z["id"]  # x -> y -> z -> x: corrupt data, which must not hang the query
    await insert(gateway, x, y, z)
    expected = {(x["id"], y["id"]), (y["id"], z["id"]), (z["id"], x["id"])}
    for params in ({"trace_id": y["trace_id"]}, {"session_id": session}, {"invocation_id": z["id"], "depth": 100}):
        graph = await get_graph(client, org, **params)
        assert sorted(node["id"] for node in graph["nodes"]) == sorted([x["id"], y["id"], z["id"]]), params
        assert edge_pairs(graph) == expected, params


async def test_graph_keeps_nodes_whose_parent_is_missing_or_foreign(client, org, gateway):
    other = await new_org(gateway)
    foreign = (await insert(gateway, lineage_row(other.organization_id)))[0]
    session = f"dangling-{uuid.uuid4().hex}"
    orphan = lineage_row(org.organization_id, external_session_id=session, parent_invocation_id="no-such-parent")
    adopted = lineage_row(org.organization_id, external_session_id=session, parent_invocation_id=foreign["id"])
    await insert(gateway, orphan, adopted)
    graph = await get_graph(client, org, session_id=session)
    assert {node["id"] for node in graph["nodes"]} == {orphan["id"], adopted["id"]}
    assert graph["edges"] == []
    up = await get_graph(client, org, trace_id=adopted["trace_id"])
    assert [node["id"] for node in up["nodes"]] == [adopted["id"]]  # the foreign parent is never shown
    assert [node["parent_invocation_id"] for node in up["nodes"]] == [foreign["id"]]


async def test_graph_cut_at_the_node_limit_says_so_and_drops_edges_to_cut_nodes(gateway, org):
    rows = chain(org.organization_id, 4, external_session_id=f"cut-{uuid.uuid4().hex}")
    await insert(gateway, *rows)
    builder = WorkflowBuilder()
    builder.add_node("LineageGraphNode", "graph", {"engine": gateway.external_agents.engine, "max_nodes": 2})
    caller = {"api_key_id": None, "organization_id": org.organization_id}
    inputs = {"caller": caller, "selectors": {"session_id": rows[0]["external_session_id"]}}
    results = await gateway.external_agents.runner.run(builder.build(name="cut_graph"), {"graph": inputs})
    graph = results["graph"]["graph"]
    assert [node["id"] for node in graph["nodes"]] == [rows[0]["id"], rows[1]["id"]]
    assert edge_pairs(graph) == {(rows[0]["id"], rows[1]["id"])}
    assert graph["metadata"]["truncated"] is True


@pytest.mark.parametrize(
    ("query", "fragment"),
    [
        ("", "Give exactly one of session_id, trace_id, invocation_id, workflow_id"),
        ("session_id=a&trace_id=b", "got session_id and trace_id"),
        ("invocation_id=a&workflow_id=b&trace_id=c", "got trace_id and invocation_id and workflow_id"),
        ("session_id=", "session_id: must be a non-empty string"),
        ("session_id=a&depth=101", "depth"),
        ("session_id=a&depth=-1", "depth"),
        ("session_id=a&depth=abc", "depth"),
        ("trace_id=a%00", "U+0000"),
    ],
)
async def test_bad_graph_query_is_400(client, org, query, fragment):
    assert_error(await client.get(f"/api/lineage/graph?{query}", headers=org.headers), status=400, fragment=fragment)


async def test_graph_of_another_organisations_trace_is_404(client, org, gateway):
    row = (await insert(gateway, lineage_row(org.organization_id)))[0]
    other = await new_org(gateway)
    for params in ({"trace_id": row["trace_id"]}, {"invocation_id": row["id"]}):
        response = await client.get("/api/lineage/graph", params=params, headers=other.headers)
        assert_error(response, status=404, fragment="No invocation")
    session = await client.get("/api/lineage/graph", params={"session_id": "session-1"}, headers=other.headers)
    assert session.json()["nodes"] == []


# --- Export -------------------------------------------------------------------------------------------------

COLUMNS = [column.name for column in lineage.c]


async def export_rows(gateway, org: Org) -> list[dict[str, Any]]:
    rows = [
        lineage_row(
            org.organization_id,
            request_timestamp=BASE_TIME + timedelta(seconds=i),
            status=("success", "failure", "denied", "pending")[i % 4],
            denial_reason="over budget" if i % 4 == 2 else None,
            external_session_id=None if i == 3 else "session-1",
            external_user_name=TRICKY_TEXT if i == 0 else "Alice",
            input={"text": f"question {i}", "n": i} if i else "a bare string",
        )
        for i in range(6)
    ]
    rows[5]["id"] = f"not-a-uuid-{uuid.uuid4().hex}"
    return await insert(gateway, *rows)


async def test_export_json_streams_every_column_of_every_matching_row(client, org, gateway):
    rows = await export_rows(gateway, org)
    other = await new_org(gateway)
    await insert(gateway, lineage_row(other.organization_id))
    response = await client.get("/api/lineage/export?format=json", headers=org.headers)
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("application/json")
    assert response.headers["content-disposition"].startswith('attachment; filename="lineage-')
    exported = response.json()
    assert [item["id"] for item in exported] == [r["id"] for r in rows]  # oldest first
    assert list(exported[0]) == COLUMNS
    assert exported[0]["external_user_name"] == TRICKY_TEXT and exported[0]["input"] == "a bare string"
    assert exported[1]["input"] == {"text": "question 1", "n": 1}
    assert exported[1]["request_timestamp"] == "2025-03-01T12:00:01+00:00"
    failures = await client.get("/api/lineage/export", params={"status": "failure"}, headers=org.headers)
    assert [item["id"] for item in failures.json()] == [rows[1]["id"], rows[5]["id"]]
    empty = await client.get("/api/lineage/export", params={"status": "timeout"}, headers=org.headers)
    assert empty.json() == []


async def test_export_csv_has_a_header_and_json_fields_as_json_text(client, org, gateway):
    rows = await export_rows(gateway, org)
    response = await client.get("/api/lineage/export?format=csv", headers=org.headers)
    assert response.status_code == 200 and response.headers["content-type"].startswith("text/csv")
    reader = csv.DictReader(io.StringIO(response.text, newline=""))
    assert reader.fieldnames == COLUMNS
    records = list(reader)
    assert [record["id"] for record in records] == [r["id"] for r in rows]
    assert records[0]["external_user_name"] == TRICKY_TEXT
    assert json.loads(records[0]["input"]) == "a bare string"
    assert json.loads(records[1]["input"]) == {"text": "question 1", "n": 1}
    assert json.loads(records[1]["external_context"]) == {"environment": "test", "country": "DE"}
    assert records[1]["denial_reason"] == "" and float(records[1]["cost_usd"]) == 0.05


async def test_export_openlineage_is_valid_run_events(client, org, gateway):
    from openlineage.client.event_v2 import Job, Run, RunEvent, RunState
    from openlineage.client.facet_v2 import error_message_run, parent_run, tags_run
    from openlineage.client.serde import Serde

    rows = await export_rows(gateway, org)
    response = await client.get("/api/lineage/export?format=openlineage", headers=org.headers)
    assert response.status_code == 200 and response.headers["content-type"].startswith("application/x-ndjson")
    lines = response.text.splitlines()
    events = [json.loads(line) for line in lines]
    # A START and an end event per finished invocation; a pending one has only its START.
    states = {"success": ["START", "COMPLETE"], "failure": ["START", "FAIL"], "denied": ["START", "FAIL"]}
    expected = [state for row in rows for state in states.get(row["status"], ["START"])]
    assert [event["eventType"] for event in events] == expected
    assert expected.count("START") == 6 and expected.count("COMPLETE") == 2 and expected.count("FAIL") == 3
    for event in events:
        # Required by the spec: BaseEvent (eventTime, producer, schemaURL), RunEvent (run.runId, job.*).
        assert "T" in event["eventTime"] and datetime.fromisoformat(event["eventTime"]).tzinfo is not None
        assert event["producer"] and event["schemaURL"].startswith("https://openlineage.io/spec/")
        assert event["schemaURL"].endswith("#/$defs/RunEvent")
        uuid.UUID(event["run"]["runId"])
        assert event["job"] == {"namespace": "external-agents", "name": "Support Bot", "facets": {}}
        for facet in event["run"]["facets"].values():
            assert facet["_producer"] and facet["_schemaURL"].startswith("https://openlineage.io/spec/facets/")
    by_run: dict[str, list[dict[str, Any]]] = {}
    for event in events:
        by_run.setdefault(event["run"]["runId"], []).append(event)
    run_ids = list(by_run)
    assert run_ids[0] == rows[0]["id"]  # a UUID invocation id is the run id
    assert len(run_ids) == 6 and run_ids[5] == str(uuid.UUID(run_ids[5])) != rows[5]["id"]

    first_start = events[0]
    parent = first_start["run"]["facets"]["parent"]
    assert parent["job"] == {"namespace": "external-agents", "name": "copilot-studio", "facets": {}}
    assert parent["run"]["runId"] == events[2]["run"]["facets"]["parent"]["run"]["runId"]  # same session
    assert "parent" not in by_run[rows[3]["id"]][0]["run"]["facets"]  # no session, no parent
    tags = {tag["key"]: tag["value"] for tag in first_start["run"]["facets"]["tags"]["tags"]}
    assert tags["invocation_id"] == rows[0]["id"] and tags["trace_id"] == rows[0]["trace_id"]
    assert tags["cost_usd"] == "0.05" and tags["status"] == "success"
    denied_end = by_run[rows[2]["id"]][1]
    assert denied_end["run"]["facets"]["errorMessage"]["message"] == "over budget"
    assert denied_end["eventTime"] == "2025-03-01T12:00:02.120000+00:00"
    assert "alice@example.com" not in response.text and TRICKY_TEXT not in response.text

    # The client's own types accept each event and serialise it back to exactly the line we sent.
    for line, event in zip(lines, events, strict=True):
        facets: dict[str, Any] = {}
        raw = event["run"]["facets"]
        facets["tags"] = tags_run.TagsRunFacet(
            tags=[tags_run.TagsRunFacetFields(**tag) for tag in raw["tags"]["tags"]],
            producer=raw["tags"]["_producer"],
        )
        if "parent" in raw:
            facets["parent"] = parent_run.ParentRunFacet(
                run=parent_run.Run(**raw["parent"]["run"]),
                job=parent_run.Job(**raw["parent"]["job"]),
                producer=raw["parent"]["_producer"],
            )
        if "errorMessage" in raw:
            message = {k: v for k, v in raw["errorMessage"].items() if not k.startswith("_")}
            facets["errorMessage"] = error_message_run.ErrorMessageRunFacet(
                **message, producer=raw["errorMessage"]["_producer"]
            )
        rebuilt = RunEvent(
            eventType=RunState(event["eventType"]),
            eventTime=event["eventTime"],
            run=Run(runId=event["run"]["runId"], facets=facets),
            job=Job(namespace=event["job"]["namespace"], name=event["job"]["name"]),
            producer=event["producer"],
        )
        assert Serde.to_json(rebuilt) == line


async def test_export_batches_walk_equal_timestamps_without_loss_or_repeat(org, gateway):
    from external_agents.stores.lineage import EXPORT_COLUMN_NAMES, LineageFilters, iter_lineage_batches

    same = [lineage_row(org.organization_id, request_timestamp=BASE_TIME) for _ in range(7)]
    later = [lineage_row(org.organization_id, request_timestamp=BASE_TIME + timedelta(seconds=1)) for _ in range(2)]
    await insert(gateway, *same, *later)
    filters = LineageFilters(organization_id=org.organization_id)
    batches = [b async for b in iter_lineage_batches(gateway.external_agents.engine, filters=filters, batch_size=2)]
    seen = [row[EXPORT_COLUMN_NAMES.index("id")] for batch in batches for row in batch]
    assert [len(b) for b in batches] == [2, 2, 2, 2, 1]
    assert seen == sorted(r["id"] for r in same) + sorted(r["id"] for r in later)


@pytest.mark.parametrize(
    ("query", "fragment"),
    [
        ("format=xml", "format: must be one of json, csv, openlineage"),
        ("format=", "format: must be one of"),
        ("format=csv&start_date=2025-01-01T00:00:00", "start_date: must include a time zone"),
        ("status=nope", "status: must be one of"),
    ],
)
async def test_bad_export_query_is_400(client, org, query, fragment):
    assert_error(await client.get(f"/api/lineage/export?{query}", headers=org.headers), status=400, fragment=fragment)


# --- GDPR: access and erasure -------------------------------------------------------------------------------


async def gdpr_rows(gateway, org: Org) -> dict[str, list[dict[str, Any]]]:
    a, b, c = chain(org.organization_id, 3)
    b["external_agent_id"], b["external_agent_name"], b["platform"] = "agent-2", "Billing Bot", "teams"
    a["cost_usd"], b["cost_usd"], c["cost_usd"] = 0.1, 0.2, 0.3
    c["external_user_email"] = "Alice@Example.COM"  # the same person, written differently
    bob = lineage_row(org.organization_id, external_user_email="bob@example.com", external_user_name="Bob")
    other = await new_org(gateway)
    foreign = lineage_row(other.organization_id)
    await insert(gateway, a, b, c, bob, foreign)
    return {"alice": [a, b, c], "bob": [bob], "foreign": [foreign]}


async def test_access_returns_everything_about_one_user_in_the_organisation(client, org, gateway):
    rows = await gdpr_rows(gateway, org)
    response = await client.get("/api/lineage/user/alice@example.com", headers=org.headers)
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["total"] == 3 and not body["has_more"]
    assert sorted(item["invocation_id"] for item in body["items"]) == sorted(r["id"] for r in rows["alice"])
    assert body["items"][0]["input"] == {"text": "hello"}  # full records, payloads included
    summary = body["summary"]
    assert summary["invocations"] == 3 and summary["total_cost_usd"] == 0.6
    assert summary["first_seen"] == "2025-03-01T12:00:00+00:00" and summary["last_seen"] == "2025-03-01T12:00:02+00:00"
    assert {(agent["id"], agent["invocations"], agent["cost_usd"]) for agent in summary["agents"]} == {
        ("agent-1", 2, 0.4),
        ("agent-2", 1, 0.2),
    }
    paged = (await client.get("/api/lineage/user/ALICE@example.com?limit=2&page=2", headers=org.headers)).json()
    assert (len(paged["items"]), paged["total"]) == (1, 3)


async def test_erasure_redacts_personal_fields_and_keeps_rows_costs_and_links(client, org, gateway):
    rows = await gdpr_rows(gateway, org)
    before = {r["id"]: await stored(gateway, r["id"]) for r in rows["alice"]}
    response = await client.delete("/api/lineage/user/alice@example.com", headers=org.headers)
    assert response.status_code == 200, response.text
    assert response.json() == {"erased_rows": 3}

    personal = (
        "external_user_id",
        "external_user_email",
        "external_user_name",
        "input",
        "output",
        "external_context",
        # The invoke body's free-form metadata may name the person too (issue 11, point 6).
        "metadata",
    )
    for invocation_id, old in before.items():
        new = await stored(gateway, invocation_id)
        assert all(new[name] == "[REDACTED]" for name in personal), new
        kept = {name: value for name, value in old.items() if name not in personal}
        assert {name: new[name] for name in kept} == kept
    async with gateway.external_agents.engine.connect() as connection:
        raw = (
            await connection.execute(
                sa.select(sa.cast(lineage.c.input, sa.Text)).where(lineage.c.id == rows["alice"][0]["id"])
            )
        ).scalar_one()
    assert json.loads(raw) == "[REDACTED]"  # a JSON string in the JSON column, not SQL NULL or bare text

    assert (await stored(gateway, rows["bob"][0]["id"]))["external_user_email"] == "bob@example.com"
    assert (await stored(gateway, rows["foreign"][0]["id"]))["external_user_email"] == "alice@example.com"
    graph = await get_graph(client, org, trace_id=rows["alice"][1]["trace_id"])
    assert len(graph["edges"]) == 2 and graph["metadata"]["total_cost_usd"] == 0.6
    listing = (await client.get("/api/lineage/user/alice@example.com", headers=org.headers)).json()
    assert listing["total"] == 0

    async with gateway.external_agents.engine.connect() as connection:
        events = (
            await connection.execute(
                sa.select(TABLES["audit_log"]).where(
                    TABLES["audit_log"].c.organization_id == org.organization_id,
                    TABLES["audit_log"].c.event_type == "lineage.user_erased",
                )
            )
        ).all()
        key_id = (
            await connection.execute(
                sa.select(TABLES["api_keys"].c.id).where(TABLES["api_keys"].c.organization_id == org.organization_id)
            )
        ).scalar_one()
    assert len(events) == 1
    event = events[0]._mapping
    digest = hashlib.sha256(b"alice@example.com").hexdigest()
    assert event["details"] == {"email_sha256": digest, "erased_rows": 3}
    assert event["actor_id"] == key_id and event["resource_id"] == digest
    assert "alice" not in repr(dict(event)).lower()

    again = await client.delete("/api/lineage/user/alice@example.com", headers=org.headers)
    assert again.json() == {"erased_rows": 0}


async def test_erasure_matches_emails_with_plus_and_slash(client, org, gateway):
    odd = "o'neil+tag/dept@example.com"
    row = (await insert(gateway, lineage_row(org.organization_id, external_user_email=odd)))[0]
    response = await client.delete("/api/lineage/user/o'neil%2Btag/dept@example.com", headers=org.headers)
    assert response.json() == {"erased_rows": 1}
    assert (await stored(gateway, row["id"]))["external_user_email"] == "[REDACTED]"


# --- Authentication and permissions -------------------------------------------------------------------------

READ_ROUTES = [
    "/api/lineage",
    "/api/lineage/graph?session_id=s",
    "/api/lineage/export?format=json",
    "/api/lineage/user/alice@example.com",
    "/api/lineage/some-invocation",
]


@pytest.mark.parametrize("path", READ_ROUTES)
async def test_lineage_routes_need_a_key_and_read_lineage(client, gateway, path):
    assert_error(await client.get(path), status=401, fragment="Authorization")
    no_read = await new_org(gateway, permissions=["read:external_agent", "erase:lineage"])
    assert_error(await client.get(path, headers=no_read.headers), status=403, fragment="read:lineage")


async def test_erasure_needs_erase_lineage(client, gateway):
    reader = await new_org(gateway, permissions=["read:lineage"])
    row = (await insert(gateway, lineage_row(reader.organization_id)))[0]
    assert_error(await client.delete("/api/lineage/user/alice@example.com"), status=401, fragment="Authorization")
    assert_error(
        await client.delete("/api/lineage/user/alice@example.com", headers=reader.headers),
        status=403,
        fragment="erase:lineage",
    )
    assert (await stored(gateway, row["id"]))["external_user_email"] == "alice@example.com"
    eraser = await new_org(gateway, permissions=["erase:lineage"], organization_id=reader.organization_id)
    response = await client.delete("/api/lineage/user/alice@example.com", headers=eraser.headers)
    assert response.json() == {"erased_rows": 1}
    assert (await client.get("/api/lineage", headers=reader.headers)).status_code == 200


# --- Command line -------------------------------------------------------------------------------------------


async def test_cli_lists_graphs_and_exports_through_the_same_workflows(gateway, org, tmp_path):
    from typer.testing import CliRunner

    from external_agents.channels.cli.lineage import lineage_app

    a, b, c = chain(org.organization_id, 3)
    a["external_agent_name"] = "[bold]markup[/bold]"  # shown as typed, never interpreted as Rich markup
    await insert(gateway, a, b, c)
    env = {"DATABASE_URL": gateway.external_agents.settings.database_url, "KAIZEN_DATA_DIR": str(tmp_path)}

    async def cli(*args: str):
        return await asyncio.to_thread(CliRunner().invoke, lineage_app, list(args), env=env)

    listing = await cli("list", "--org", org.organization_id, "--json", "--limit", "2")
    assert listing.exit_code == 0, listing.output
    page = json.loads(listing.stdout)
    assert (page["total"], len(page["items"]), page["has_more"]) == (3, 2, True)
    table = await cli("list", "--org", org.organization_id, "--status", "success")
    assert table.exit_code == 0 and "3 of 3 (page 1)" in table.stdout

    graph = await cli("graph", "--org", org.organization_id, "--trace-id", b["trace_id"], "--json")
    assert edge_pairs(json.loads(graph.stdout)) == {(a["id"], b["id"]), (b["id"], c["id"])}
    tree = await cli("graph", "--org", org.organization_id, "--session-id", "session-1")
    assert tree.exit_code == 0 and "[bold]markup[/bold] (slack)" in tree.stdout
    assert "3 nodes (3 external), 2 edges" in tree.stdout

    out = tmp_path / "lineage.csv"
    export = await cli("export", "--org", org.organization_id, "--format", "csv", "--output", str(out))
    assert export.exit_code == 0, export.output
    records = list(csv.DictReader(io.StringIO(out.read_text(encoding="utf-8"), newline="")))
    assert [record["id"] for record in records] == [a["id"], b["id"], c["id"]]
    ndjson = await cli("export", "--org", org.organization_id, "--format", "openlineage")
    assert len(ndjson.stdout.splitlines()) == 6

    none = await cli("graph", "--org", org.organization_id)
    assert none.exit_code == 2 and "Give exactly one of" in none.stderr
    missing = await cli("graph", "--org", org.organization_id, "--trace-id", "no-such-trace")
    # As for every gateway command, not found is exit code 3.
    assert missing.exit_code == 3 and "No invocation with trace_id" in missing.stderr
    naive = await cli("list", "--org", org.organization_id, "--start-date", "2025-01-01T00:00:00")
    assert naive.exit_code == 2 and "must include a time zone" in naive.stderr


# --- End to end: invocations made through the gateway ---------------------------------------------------------


async def test_invocations_chained_by_trace_id_form_the_graph_a_b_c(client, org, platform_server):
    """A's workflow calls B with A's trace_id, B calls C with B's: the recorded graph is A -> B -> C."""
    agents = []
    for name in ("A", "B", "C"):
        body = {
            "name": f"agent {name}",
            "platform": "custom_http",
            "platform_config": {"url": platform_server.url(f"/chain-{name}")},
            "auth_config": {"auth_type": "none", "credentials": {}},
        }
        response = await client.post("/api/external-agents", json=body, headers=org.headers)
        assert response.status_code == 201, response.text
        agents.append(response.json())
    identity = {
        "X-External-User-ID": "user-7",
        "X-External-User-Email": "chain@example.com",
        "X-External-System": "orchestrator",
        "X-External-Session-ID": f"chain-{uuid.uuid4().hex}",
    }
    invocations = []
    for agent in agents:
        headers = {**org.headers, **identity}
        if invocations:
            headers["X-External-Trace-ID"] = invocations[-1]["trace_id"]
        response = await client.post(
            f"/api/external-agents/{agent['id']}/invoke", json={"input": "step"}, headers=headers
        )
        assert response.status_code == 200, response.text
        invocations.append(response.json())
    a, b, c = (invocation["invocation_id"] for invocation in invocations)

    graph = await get_graph(client, org, trace_id=invocations[1]["trace_id"])
    assert [node["id"] for node in graph["nodes"]] == [a, b, c]
    assert edge_pairs(graph) == {(a, b), (b, c)}
    assert [node["agent"]["name"] for node in graph["nodes"]] == ["agent A", "agent B", "agent C"]
    session = await get_graph(client, org, session_id=identity["X-External-Session-ID"])
    assert edge_pairs(session) == {(a, b), (b, c)}
    record = (await client.get(f"/api/lineage/{c}", headers=org.headers)).json()
    assert record["tracing"]["parent_invocation_id"] == b
    assert record["external_system"]["trace_id"] == invocations[1]["trace_id"]


@pytest.mark.parametrize("method", ["GET", "DELETE"])
@pytest.mark.parametrize(
    ("email", "fragment"), [("", "email"), ("%20%20", "email"), ("a%00b@example.com", "NUL character")]
)
async def test_gdpr_routes_refuse_a_blank_or_nul_email(client, org, method, email, fragment):
    response = await client.request(method, f"/api/lineage/user/{email}", headers=org.headers)
    assert_error(response, status=400, fragment=fragment)
