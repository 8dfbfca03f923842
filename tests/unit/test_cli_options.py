"""The gateway options (`--url`, `--api-key`, `--org`, `--json`) are declared once, in channels/cli/options.py, and
every gateway command takes them, as it always has, after its own options; the agent limits, lineage filters and
graph selectors reach their commands from the field sets, so a field added there is an option here."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import typer
from typer.core import TyperGroup

from external_agents.agent_fields import agent_limit_options
from external_agents.channels.cli import app
from external_agents.lineage_filters import graph_selector_options, lineage_filter_options

GATEWAY_OPTIONS = ["--url", "--api-key", "--org", "--json"]
GATEWAY_COMMANDS = {
    "agents create",
    "agents list",
    "agents get",
    "agents update",
    "agents delete",
    "invoke",
    "governance",
    "policies create",
    "policies list",
    "policies get",
    "policies update",
    "policies delete",
    "workflows list",
    "workflows run",
    "lineage list",
    "lineage graph",
}


# Typer builds on its own copy of click; these are its Command objects.
def leaf_commands(group: TyperGroup, prefix: str = "") -> Iterator[tuple[str, Any]]:
    for name, command in group.commands.items():
        if isinstance(command, TyperGroup):
            yield from leaf_commands(command, f"{prefix}{name} ")
        else:
            yield f"{prefix}{name}", command


def options_of(command: Any) -> list[str]:
    return [opt for param in command.params if param.param_type_name == "option" for opt in param.opts]


def test_every_gateway_command_takes_the_four_options_last():
    root = typer.main.get_command(app)
    assert isinstance(root, TyperGroup)
    commands = dict(leaf_commands(root))
    taking = {name for name, command in commands.items() if set(GATEWAY_OPTIONS) <= set(options_of(command))}
    assert taking == GATEWAY_COMMANDS
    for name in GATEWAY_COMMANDS:
        assert options_of(commands[name])[-4:] == GATEWAY_OPTIONS, name
        envvars = {param.opts[0]: param.envvar for param in commands[name].params}
        assert envvars["--url"] == "KAIZEN_URL" and envvars["--api-key"] == "KAIZEN_API_KEY", name


FIELD_SET_COMMANDS = {
    "agents create": agent_limit_options(),
    "agents update": agent_limit_options(),
    "lineage list": lineage_filter_options(),
    "lineage export": lineage_filter_options(),
    "lineage graph": graph_selector_options(),
}


def test_every_field_of_a_commands_field_set_is_one_of_its_options_with_the_fields_help_and_bounds():
    root = typer.main.get_command(app)
    assert isinstance(root, TyperGroup)
    commands = dict(leaf_commands(root))
    for name, options in FIELD_SET_COMMANDS.items():
        params = {param.opts[0]: param for param in commands[name].params}
        for option in options:
            param = params[option.flag]
            derived = (param.name, param.help, param.required, param.min, param.max)
            assert derived == (option.name, option.help, False, option.min, option.max), (name, option.flag)
