"""The gateway's `InvocationPipeline` and the Kailash graph `build_invocation_workflow` are one invocation.

The channels run the pipeline (the same node objects awaited in order); a host may run the graph on Kailash's
runtime. For a delivery, each kind of denial and each refused request, both must end the same way: the same
outcome, the same lineage, billing and audit rows, the same platform traffic, or the same error.
"""

from __future__ import annotations

from typing import Any

import pytest

from external_agents.errors import NotFoundError, ValidationError
from external_agents.nodes.invocation_state import InvocationOutcome
from external_agents.nodes.invocation_step import read_outcome
from tests.factories import IDENTITY, register, rows
from tests.platform_server import ScriptedResponse

# Identity as the channels hand it to the pipeline: by field name.
IDENTITY_FIELDS = {
    "external_user_id": IDENTITY["X-External-User-ID"],
    "external_user_email": IDENTITY["X-External-User-Email"],
    "external_system": IDENTITY["X-External-System"],
    "external_session_id": IDENTITY["X-External-Session-ID"],
}

# Columns that differ between any two invocations whichever way they run.
PER_INVOCATION = {"id", "trace_id", "request_timestamp", "response_timestamp", "duration_ms", "created_at"}


def prepare(org: Any, agent_id: str, body: Any = None, **identity: Any) -> dict[str, Any]:
    return {
        "caller": {"api_key_id": "pipeline-test", "organization_id": org.organization_id},
        "agent_id": agent_id,
        "identity": {**IDENTITY_FIELDS, **identity},
        "body": {"input": "same request"} if body is None else body,
    }


async def through_graph(state: Any, inputs: dict[str, Any]) -> InvocationOutcome:
    results = await state.runner.run(state.invoke, {"prepare": inputs})
    return read_outcome(results["record"])


async def recorded(gateway: Any, outcome: InvocationOutcome) -> dict[str, Any]:
    [lineage] = await rows(gateway, "SELECT * FROM invocation_lineage WHERE id = :id", id=outcome.invocation_id)
    billing = await rows(
        gateway, "SELECT cost_usd, usage_type FROM billing_usage WHERE id = :id", id=outcome.invocation_id
    )
    audit = await rows(
        gateway,
        "SELECT event_type, actor_id, resource_id FROM audit_log "
        "WHERE CAST(details AS TEXT) LIKE :pattern ORDER BY event_type",
        pattern=f"%{outcome.invocation_id}%",
    )
    return {
        "lineage": {k: v for k, v in lineage.items() if k not in PER_INVOCATION},
        "billing": billing,
        "audit": audit,
    }


def without_clock(value: Any) -> Any:
    """`value` less every `reset_at`: a rate-limit window's end, read from the clock at the call."""
    if isinstance(value, dict):
        return {k: without_clock(v) for k, v in value.items() if k != "reset_at"}
    return value


def comparable(outcome: InvocationOutcome) -> dict[str, Any]:
    fields = outcome.to_json()
    for name in ("invocation_id", "trace_id", "duration_ms"):
        fields.pop(name)
    return without_clock(fields)


@pytest.mark.parametrize(
    ("case", "agent_limits", "body", "identity"),
    [
        ("delivered", {"cost_per_execution": 0.05}, None, {}),
        ("policy denial", {}, None, {"external_user_email": "blocked@example.com"}),
        ("rate limited", {"requests_per_minute": 1, "requests_per_hour": 1, "requests_per_day": 1}, None, {}),
        ("over budget", {"cost_per_execution": 2.0, "max_daily_cost": 1.0, "max_monthly_cost": 1.0}, None, {}),
    ],
)
async def test_the_pipeline_and_the_graph_end_every_invocation_alike(
    client, org, gateway, platform_server, case, agent_limits, body, identity
):
    state = gateway.external_agents
    # One policy of the organisation's for both runs, so that a denial names the same policy.
    response = await client.post(
        "/api/policies",
        json={"name": "block", "effect": "deny", "conditions": [{"type": "user", "emails": ["blocked@example.com"]}]},
        headers=org.headers,
    )
    assert response.status_code == 201, response.text
    outcomes = []
    for way, run in (("graph", through_graph), ("pipeline", lambda s, i: s.pipeline.run(i))):
        path = f"/pipeline-{case.replace(' ', '-')}-{way}"
        platform_server.script(path, ScriptedResponse(200, body={"answer": "ok"}))
        agent = await register(client, org, platform_server, path=path, name=f"{case}-{way}", **agent_limits)
        if case == "rate limited":
            await run(state, prepare(org, agent["id"]))  # the one allowed call
        outcome = await run(state, prepare(org, agent["id"], body, **identity))
        outcomes.append((outcome, await recorded(gateway, outcome), len(platform_server.requests(path)), agent["id"]))

    (graph, graph_rows, graph_hits, graph_agent), (pipeline, pipeline_rows, pipeline_hits, pipeline_agent) = outcomes
    assert comparable(pipeline) == comparable(graph)
    assert pipeline.status == {"delivered": "success"}.get(case, "denied")
    # The rows name their own agent; everything else must match.
    for found, agent_id in ((graph_rows, graph_agent), (pipeline_rows, pipeline_agent)):
        assert found["lineage"].pop("external_agent_id") == agent_id
        assert found["lineage"].pop("external_agent_name").startswith(case)
        for event in found["audit"]:
            assert event.pop("resource_id") == agent_id
    assert pipeline_rows == graph_rows
    assert pipeline_hits == graph_hits == (1 if case in ("delivered", "rate limited") else 0)


@pytest.mark.parametrize(
    ("inputs", "error"),
    [
        ({"agent_id": "no-such-agent"}, NotFoundError),
        ({"body": {"input": "x", "surprise": 1}}, ValidationError),
        ({"identity": {"external_user_email": "not-an-email"}}, ValidationError),
    ],
)
async def test_the_pipeline_refuses_a_bad_request_with_the_graphs_error(
    client, org, gateway, platform_server, inputs, error
):
    state = gateway.external_agents
    agent = await register(client, org, platform_server, path="/pipeline-refused")
    request = prepare(org, agent["id"])
    request.update({k: v for k, v in inputs.items() if k != "identity"})
    request["identity"] = {**request["identity"], **inputs.get("identity", {})}
    with pytest.raises(error) as from_graph:
        await through_graph(state, request)
    with pytest.raises(error) as from_pipeline:
        await state.pipeline.run(request)
    assert str(from_pipeline.value) == str(from_graph.value)
    assert platform_server.requests("/pipeline-refused") == []
