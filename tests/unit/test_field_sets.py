"""Deriving MCP tool parameters and command-line options from a field set, through the real MCP SDK and typer."""

from __future__ import annotations

import inspect
from typing import Annotated, Any

import pytest
import typer
from mcp.server.mcpserver.tools.base import Tool
from pydantic import BaseModel, Field, ValidationError
from typer.testing import CliRunner

from external_agents.channels.cli.options import GatewayOptions, gateway_command
from external_agents.field_sets import CliFlag, cli_options, tool_parameters, typer_parameters, with_parameters


class Example(BaseModel):
    """A field set of every kind the derivations handle."""

    title: Annotated[str, Field(min_length=1, description="Required text.")]
    cost: float | None = Field(None, ge=0, description="Dollars.")
    per_day: Annotated[int | None, CliFlag("--daily")] = Field(None, ge=1, le=10, description="At most ten.")
    config: dict[str, Any] = Field(default_factory=dict, description="Anything.")


def test_cli_options_take_flag_help_bounds_and_a_nullable_type_from_the_fields() -> None:
    options = {option.name: option for option in cli_options(Example)}
    assert [option.flag for option in options.values()] == ["--title", "--cost", "--daily", "--config"]
    assert (options["per_day"].min, options["per_day"].max, options["per_day"].help) == (1, 10, "At most ten.")
    assert (options["cost"].min, options["cost"].max) == (0, None)
    assert options["title"].annotation == str | None and options["per_day"].annotation == int | None
    assert [option.name for option in cli_options(Example, names=["cost"])] == ["cost"]


def _command_app() -> typer.Typer:
    app = typer.Typer()

    @app.command()
    @with_parameters(typer_parameters(cli_options(Example, names=["cost", "per_day"])))
    def show(name: str, **fields: Any) -> None:
        """Echo what typer passed."""
        typer.echo(f"{name} {sorted(fields.items())}")

    return app


def test_a_typer_command_gets_the_options_and_receives_their_values() -> None:
    runner = CliRunner()
    given = runner.invoke(_command_app(), ["ada", "--daily", "3", "--cost", "1.5"])
    assert given.exit_code == 0, given.output
    assert given.output.strip() == "ada [('cost', 1.5), ('per_day', 3)]"
    left_out = runner.invoke(_command_app(), ["ada"])
    assert left_out.output.strip() == "ada [('cost', None), ('per_day', None)]"
    help_text = runner.invoke(_command_app(), ["--help"]).output
    assert "--daily" in help_text and "At most ten." in help_text


def test_the_options_compose_with_the_command_lines_gateway_options() -> None:
    app = typer.Typer()

    @app.command()
    @gateway_command
    @with_parameters(typer_parameters(cli_options(Example, names=["per_day"])))
    def show(name: str, *, gateway: GatewayOptions, **fields: Any) -> None:
        """Echo what typer passed."""
        typer.echo(f"{name} {fields} {gateway.as_json} {gateway.org}")

    given = CliRunner().invoke(app, ["ada", "--daily", "3", "--org", "acme", "--json"])
    assert given.exit_code == 0, given.output
    assert given.output.strip() == "ada {'per_day': 3} True acme"


def test_a_typer_command_refuses_a_value_outside_the_fields_bounds() -> None:
    refused = CliRunner().invoke(_command_app(), ["ada", "--daily", "11"])
    assert refused.exit_code == 2 and "--daily" in refused.output


def test_an_mcp_tool_schema_has_the_fields_required_first_with_their_bounds() -> None:
    @with_parameters(
        tool_parameters(Example, descriptions={"cost": "US dollars."}, schema_extra={"title": {"enum": ["a", "b"]}})
    )
    async def example(**fields: Any) -> dict[str, Any]:
        return fields

    tool = Tool.from_function(example)
    schema = tool.parameters
    assert list(schema["properties"]) == ["title", "cost", "per_day", "config"]
    assert schema["required"] == ["title"]
    assert schema["properties"]["title"]["enum"] == ["a", "b"]
    assert schema["properties"]["cost"]["description"] == "US dollars."
    assert schema["properties"]["per_day"]["anyOf"][0] == {"maximum": 10, "minimum": 1, "type": "integer"}
    arguments = tool.fn_metadata.arg_model
    assert arguments.model_validate({"title": "a"}).model_dump_one_level() == {
        "title": "a",
        "cost": None,
        "per_day": None,
        "config": None,
    }
    with pytest.raises(ValidationError):
        arguments.model_validate({"title": "a", "per_day": 11})


def test_with_parameters_replaces_the_functions_fields_by_the_derived_parameters() -> None:
    def no_fields(name: str) -> None:
        del name

    def takes_fields(name: str, **fields: Any) -> None:
        del name, fields

    with pytest.raises(TypeError, match=r"\*\*fields"):
        with_parameters(tool_parameters(Example))(no_fields)
    derived = inspect.signature(with_parameters(tool_parameters(Example))(takes_fields)).parameters
    assert list(derived) == ["name", "title", "cost", "per_day", "config"]
