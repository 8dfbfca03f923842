"""`agents create|list|get|update|delete`: the agent registry, as the REST API's /api/external-agents."""

from __future__ import annotations

from typing import Annotated, Any

import typer
from rich.text import Text

from external_agents.agent_fields import agent_limit_options
from external_agents.channels.cli.options import GatewayOptions, gateway_command
from external_agents.channels.cli.output import (
    EXIT_CONFIG,
    JSON_HELP,
    cell,
    console,
    emit_json,
    fail,
    key_value_table,
    parse_json_object,
)
from external_agents.field_sets import typer_parameters, with_parameters

agents_app = typer.Typer(help="Register, list, inspect, change and remove external agents.", no_args_is_help=True)

AgentIdArg = Annotated[str, typer.Argument(help="The agent's id (from `agents list`).", show_default=False)]
# The agent's optional fields that are not limits, as options create and update share; the limits' options are
# derived from agent_fields.AgentLimits, so a new limit reaches both commands with no edit here.
Description = Annotated[str | None, typer.Option("--description", help="What the agent does.", show_default=False)]
AuthConfig = Annotated[
    str | None,
    typer.Option(
        "--auth-config",
        help=f"{{auth_type, credentials}} as {JSON_HELP} (keeps credentials out of shell history). Default: none.",
        show_default=False,
    ),
]


def _agent_fields(*, description: str | None, auth_config: str | None, limits: dict[str, Any]) -> dict[str, Any]:
    """The optional agent fields given on the command line (absent ones are left to the defaults or unchanged)."""
    fields: dict[str, Any] = {
        "description": description,
        "auth_config": parse_json_object("--auth-config", auth_config) if auth_config is not None else None,
        **limits,
    }
    return {k: v for k, v in fields.items() if v is not None}


def _show_agent(agent: dict[str, Any], *, title: str) -> None:
    shown = {k: v for k, v in agent.items() if k != "governance"}
    console.print(key_value_table(shown, title=title))
    if agent.get("governance"):
        console.print(key_value_table(agent["governance"], title="governance"))


@agents_app.command("create")
@gateway_command
@with_parameters(typer_parameters(agent_limit_options()))
def agents_create(
    name: Annotated[str, typer.Option("--name", help="Unique within the organisation.", show_default=False)],
    platform: Annotated[
        str,
        typer.Option("--platform", help="teams, slack, discord, telegram, notion or custom_http.", show_default=False),
    ],
    platform_config: Annotated[
        str,
        typer.Option("--platform-config", help=f"Where to deliver, as {JSON_HELP}.", show_default=False),
    ],
    auth_config: AuthConfig = None,
    description: Description = None,
    *,
    gateway: GatewayOptions,
    **limits: Any,
) -> None:
    """Register an external agent; limits left out take the configured defaults."""
    body = {
        "name": name,
        "platform": platform,
        "platform_config": parse_json_object("--platform-config", platform_config),
        **_agent_fields(description=description, auth_config=auth_config, limits=limits),
    }
    agent = gateway.call(lambda gw: gw.create_agent(body))
    if gateway.as_json:
        emit_json(agent)
        return
    _show_agent(agent, title=f"Created agent {agent['id']}")


@agents_app.command("list")
@gateway_command
def agents_list(
    page: Annotated[int, typer.Option(min=1, help="Page number.")] = 1,
    limit: Annotated[int, typer.Option(min=1, max=100, help="Agents per page.")] = 20,
    platform: Annotated[str | None, typer.Option(help="Only agents on this platform.", show_default=False)] = None,
    search: Annotated[str | None, typer.Option(help="Text to look for in names.", show_default=False)] = None,
    *,
    gateway: GatewayOptions,
) -> None:
    """List the organisation's agents with their monthly spend."""
    listing = gateway.call(lambda gw: gw.list_agents(page=page, limit=limit, platform=platform, search=search))
    if gateway.as_json:
        emit_json(listing)
        return
    from rich.table import Table

    table = Table("id", "name", "platform", "monthly budget", "spent", "usage %", "per minute")
    for agent in listing["items"]:
        table.add_row(
            *(
                cell(agent.get(key))
                for key in (
                    "id",
                    "name",
                    "platform",
                    "max_monthly_cost",
                    "current_monthly_cost",
                    "usage_percentage",
                    "requests_per_minute",
                )
            )
        )
    console.print(table)
    console.print(f"{len(listing['items'])} of {listing['total']} (page {listing['page']})", highlight=False)


@agents_app.command("get")
@gateway_command
def agents_get(agent_id: AgentIdArg, *, gateway: GatewayOptions) -> None:
    """Show one agent and its governance (spend, usage, invocations)."""
    agent = gateway.call(lambda gw: gw.get_agent(agent_id))
    if gateway.as_json:
        emit_json(agent)
        return
    _show_agent(agent, title=f"Agent {agent['id']}")


@agents_app.command("update")
@gateway_command
@with_parameters(typer_parameters(agent_limit_options()))
def agents_update(
    agent_id: AgentIdArg,
    name: Annotated[str | None, typer.Option("--name", help="A new name.", show_default=False)] = None,
    platform_config: Annotated[
        str | None,
        typer.Option("--platform-config", help=f"A new delivery config, as {JSON_HELP}.", show_default=False),
    ] = None,
    auth_config: AuthConfig = None,
    description: Description = None,
    *,
    gateway: GatewayOptions,
    **limits: Any,
) -> None:
    """Change some of an agent's fields; new credentials are encrypted again."""
    body = _agent_fields(description=description, auth_config=auth_config, limits=limits)
    if name is not None:
        body["name"] = name
    if platform_config is not None:
        body["platform_config"] = parse_json_object("--platform-config", platform_config)
    if not body:
        fail("nothing to change: give at least one option (see --help)", EXIT_CONFIG)
    agent = gateway.call(lambda gw: gw.update_agent(agent_id, body))
    if gateway.as_json:
        emit_json(agent)
        return
    _show_agent(agent, title=f"Updated agent {agent['id']}")


@agents_app.command("delete")
@gateway_command
def agents_delete(agent_id: AgentIdArg, *, gateway: GatewayOptions) -> None:
    """Delete an agent; its lineage is kept. With --json nothing is printed (the API answers 204)."""
    gateway.call(lambda gw: gw.delete_agent(agent_id))
    if not gateway.as_json:
        console.print(Text(f"Deleted agent {agent_id}"))
