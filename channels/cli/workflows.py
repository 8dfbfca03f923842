"""`workflows list|run`: the host application's workflows, as the REST API's /api/workflows."""

from __future__ import annotations

import json
from typing import Annotated

import typer
from rich.text import Text

from external_agents.channels.cli.options import GatewayOptions, gateway_command
from external_agents.channels.cli.output import JSON_HELP, cell, console, emit_json, parse_json_object

workflows_app = typer.Typer(help="List and run the host application's workflows.", no_args_is_help=True)


@workflows_app.command("list")
@gateway_command
def workflows_list(*, gateway: GatewayOptions) -> None:
    """List the workflows `workflows run` can execute."""
    listing = gateway.call(lambda gw: gw.list_workflows())
    if gateway.as_json:
        emit_json(listing)
        return
    from rich.table import Table

    table = Table("workflow_id", "nodes")
    for item in listing["items"]:
        table.add_row(cell(item["workflow_id"]), cell(", ".join(item["nodes"])))
    console.print(table)


@workflows_app.command("run")
@gateway_command
def workflows_run(
    workflow_id: Annotated[str, typer.Argument(help="The workflow's id (from `workflows list`).", show_default=False)],
    inputs: Annotated[
        str | None,
        typer.Option(
            "--inputs", help=f'Parameters by node id, as {JSON_HELP}, e.g. \'{{"greet": {{"name": "Ada"}}}}\'.'
        ),
    ] = None,
    *,
    gateway: GatewayOptions,
) -> None:
    """Run one of the host application's workflows and print its outputs by node."""
    node_inputs = parse_json_object("--inputs", inputs) if inputs is not None else None
    result = gateway.call(lambda gw: gw.execute_workflow(workflow_id, node_inputs))
    if gateway.as_json:
        emit_json(result)
        return
    console.print(Text(f"{result['workflow_id']}: {result['status']}"))
    console.print_json(json.dumps(result["outputs"], ensure_ascii=False))
