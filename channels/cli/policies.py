"""`policies create|list|get|update|delete`: the organisation's ABAC policies, as the REST API's /api/policies."""

from __future__ import annotations

from typing import Annotated, Any

import typer
from rich.text import Text

from external_agents.channels.cli.options import GatewayOptions, gateway_command
from external_agents.channels.cli.output import (
    EXIT_CONFIG,
    JSON_HELP,
    cell,
    console,
    emit_json,
    fail,
    key_value_table,
    parse_json,
)

policies_app = typer.Typer(help="Manage the organisation's ABAC policies.", no_args_is_help=True)

PolicyIdArg = Annotated[str, typer.Argument(help="The policy's id (from `policies list`).", show_default=False)]
PolicyDescription = Annotated[str | None, typer.Option("--description", show_default=False)]
Priority = Annotated[int | None, typer.Option("--priority", help="Higher is evaluated first.", show_default=False)]
PolicyAgent = Annotated[
    str | None,
    typer.Option("--agent-id", help="Only this agent (default: the whole organisation).", show_default=False),
]
Conditions = Annotated[
    str | None,
    typer.Option(
        "--conditions",
        help=f'A list of conditions, as {JSON_HELP}, e.g. \'[{{"type": "environment", "environments": ["prod"]}}]\'.',
        show_default=False,
    ),
]


def _conditions(raw: str | None) -> list[Any] | None:
    if raw is None:
        return None
    value = parse_json("--conditions", raw)
    if not isinstance(value, list):
        fail("--conditions: must be a JSON list of condition objects", EXIT_CONFIG)
    return value


def _policy_fields(
    *,
    name: str | None,
    effect: str | None,
    description: str | None,
    priority: int | None,
    enabled: bool | None,
    agent_id: str | None,
    conditions: str | None,
) -> dict[str, Any]:
    """The policy fields given on the command line (absent ones are left to the defaults or unchanged)."""
    fields = {
        "name": name,
        "effect": effect,
        "description": description,
        "priority": priority,
        "enabled": enabled,
        "external_agent_id": agent_id,
        "conditions": _conditions(conditions),
    }
    return {k: v for k, v in fields.items() if v is not None}


@policies_app.command("create")
@gateway_command
def policies_create(
    name: Annotated[str, typer.Option("--name", show_default=False)],
    effect: Annotated[str, typer.Option("--effect", help="allow or deny.", show_default=False)],
    description: PolicyDescription = None,
    priority: Priority = None,
    enabled: Annotated[bool, typer.Option("--enabled/--disabled", help="Whether it applies.")] = True,
    agent_id: PolicyAgent = None,
    conditions: Conditions = None,
    *,
    gateway: GatewayOptions,
) -> None:
    """Create a policy; it applies when all its conditions match."""
    body = _policy_fields(
        name=name,
        effect=effect,
        description=description,
        priority=priority,
        enabled=enabled,
        agent_id=agent_id,
        conditions=conditions,
    )
    policy = gateway.call(lambda gw: gw.create_policy(body))
    if gateway.as_json:
        emit_json(policy)
        return
    console.print(key_value_table(policy, title=f"Created policy {policy['policy_id']}"))


@policies_app.command("list")
@gateway_command
def policies_list(
    agent_id: Annotated[
        str | None, typer.Option("--agent-id", help="Policies of this agent.", show_default=False)
    ] = None,
    *,
    gateway: GatewayOptions,
) -> None:
    """List the organisation's policies."""
    listing = gateway.call(lambda gw: gw.list_policies(external_agent_id=agent_id))
    if gateway.as_json:
        emit_json(listing)
        return
    from rich.table import Table

    items = listing["items"] if isinstance(listing, dict) else listing
    table = Table("policy_id", "name", "effect", "priority", "enabled", "agent", "conditions")
    for policy in items:
        table.add_row(
            *(
                cell(policy.get(key))
                for key in ("policy_id", "name", "effect", "priority", "enabled", "external_agent_id", "conditions")
            )
        )
    console.print(table)


@policies_app.command("get")
@gateway_command
def policies_get(policy_id: PolicyIdArg, *, gateway: GatewayOptions) -> None:
    """Show one policy."""
    policy = gateway.call(lambda gw: gw.get_policy(policy_id))
    if gateway.as_json:
        emit_json(policy)
        return
    console.print(key_value_table(policy, title=f"Policy {policy['policy_id']}"))


@policies_app.command("update")
@gateway_command
def policies_update(
    policy_id: PolicyIdArg,
    name: Annotated[str | None, typer.Option("--name", show_default=False)] = None,
    effect: Annotated[str | None, typer.Option("--effect", help="allow or deny.", show_default=False)] = None,
    description: PolicyDescription = None,
    priority: Priority = None,
    enabled: Annotated[bool | None, typer.Option("--enabled/--disabled", show_default=False)] = None,
    agent_id: PolicyAgent = None,
    conditions: Conditions = None,
    *,
    gateway: GatewayOptions,
) -> None:
    """Change some of a policy's fields."""
    body = _policy_fields(
        name=name,
        effect=effect,
        description=description,
        priority=priority,
        enabled=enabled,
        agent_id=agent_id,
        conditions=conditions,
    )
    if not body:
        fail("nothing to change: give at least one option (see --help)", EXIT_CONFIG)
    policy = gateway.call(lambda gw: gw.update_policy(policy_id, body))
    if gateway.as_json:
        emit_json(policy)
        return
    console.print(key_value_table(policy, title=f"Updated policy {policy['policy_id']}"))


@policies_app.command("delete")
@gateway_command
def policies_delete(policy_id: PolicyIdArg, *, gateway: GatewayOptions) -> None:
    """Delete a policy. With --json nothing is printed (the API answers 204)."""
    gateway.call(lambda gw: gw.delete_policy(policy_id))
    if not gateway.as_json:
        console.print(Text(f"Deleted policy {policy_id}"))
