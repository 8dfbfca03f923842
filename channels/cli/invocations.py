"""`invoke` and `governance`: invoking an agent under governance, and the state of its budget, rate limit and
policies, as the REST API's /invoke and /governance-status."""

from __future__ import annotations

import json
from typing import Annotated, Any

import typer
from rich.text import Text

from external_agents.channels.cli.agents import AgentIdArg
from external_agents.channels.cli.calls import invoke_answer
from external_agents.channels.cli.options import GatewayOptions, gateway_command
from external_agents.channels.cli.output import (
    JSON_HELP,
    console,
    emit_json,
    key_value_table,
    parse_json,
    parse_json_object,
)


@gateway_command
def invoke(
    agent_id: AgentIdArg,
    input_json: Annotated[
        str, typer.Option("--input", help=f"What to send, as {JSON_HELP} (text is '\"hello\"').", show_default=False)
    ],
    user_id: Annotated[str, typer.Option("--user-id", help="The end user's id.", show_default=False)],
    user_email: Annotated[str, typer.Option("--user-email", help="The end user's email.", show_default=False)],
    system: Annotated[str, typer.Option("--system", help="The calling system.", show_default=False)],
    session_id: Annotated[str, typer.Option("--session-id", help="The session or conversation.", show_default=False)],
    user_name: Annotated[str | None, typer.Option("--user-name", help="Display name.", show_default=False)] = None,
    trace_id: Annotated[
        str | None, typer.Option("--trace-id", help="trace_id of the invocation that led here.", show_default=False)
    ] = None,
    context: Annotated[
        str | None, typer.Option("--context", help=f"Attributes for policies, as {JSON_HELP}.", show_default=False)
    ] = None,
    metadata: Annotated[
        str | None, typer.Option("--metadata", help=f"Metadata kept with the call, as {JSON_HELP}.", show_default=False)
    ] = None,
    *,
    gateway: GatewayOptions,
) -> None:
    """Invoke an agent on behalf of an external user, under governance (exit 4 when policy, budget or rate limit
    refuses it)."""
    body: dict[str, Any] = {"input": parse_json("--input", input_json)}
    if context is not None:
        body["context"] = parse_json_object("--context", context)
    if metadata is not None:
        body["metadata"] = parse_json_object("--metadata", metadata)
    identity = {
        "external_user_id": user_id,
        "external_user_email": user_email,
        "external_system": system,
        "external_session_id": session_id,
        "external_user_name": user_name,
        "external_trace_id": trace_id,
        "external_context": None,
    }
    result = gateway.call(lambda gw: invoke_answer(gw, agent_id, identity=identity, body=body))
    if gateway.as_json:
        emit_json(result)
        return
    meta = result["metadata"]
    console.print(
        Text.assemble(
            (result["status"], "green"),
            f"  invocation {result['invocation_id']}  trace {result['trace_id']}  "
            f"${meta['cost_usd']}  {meta['duration_ms']} ms",
        )
    )
    console.print_json(json.dumps(result["output"], ensure_ascii=False))


@gateway_command
def governance(agent_id: AgentIdArg, *, gateway: GatewayOptions) -> None:
    """Show an agent's budget, rate-limit and policy status."""
    status = gateway.call(lambda gw: gw.governance_status(agent_id))
    if gateway.as_json:
        emit_json(status)
        return
    budget = status["budget"]
    console.print(key_value_table(budget, title=f"Budget of {status['external_agent_id']}"))
    rate_limit = {k: v for k, v in status["rate_limit"].items() if k != "current_usage"}
    rate_limit.update({f"used this {window}": n for window, n in status["rate_limit"]["current_usage"].items()})
    console.print(key_value_table(rate_limit, title="Rate limit"))
    policy = status["policy"]
    console.print(
        key_value_table(
            {
                "total policies": policy["total_policies"],
                "enabled": policy["enabled_policies"],
                "active": ", ".join(p.get("name") or p.get("policy_id", "") for p in policy["active_policies"]),
            },
            title="Policies",
        )
    )
