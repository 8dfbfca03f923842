"""The `lineage` commands: list, graph and export run the same gateway operations as the REST API's /api/lineage;
`retention run` archives and deletes old rows with a progress bar.

`list` and `graph` run where every gateway command does (calls.py): in-process with `--api-key` or `--org`, or
against a running gateway with `--url` and `--api-key`. `export` streams from the configured database
in-process, for the organisation `--org` names; `retention` is the operator's, in-process. Heavy packages are
imported inside the commands, so `--help` answers at once.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer

from external_agents.channels.cli.calls import Target, call, run_with_engine, settings_or_exit
from external_agents.channels.cli.options import GatewayOptions, gateway_command
from external_agents.channels.cli.output import console, emit_json
from external_agents.field_sets import typer_parameters, with_parameters
from external_agents.lineage_filters import graph_selector_options, lineage_filter_options

if TYPE_CHECKING:
    from sqlalchemy.ext.asyncio import AsyncEngine

    from external_agents.channels.cli.calls import Gateway
    from external_agents.stores.retention import RetentionResult

lineage_app = typer.Typer(help="Query and export invocation lineage; archive old records.", no_args_is_help=True)
retention_app = typer.Typer(
    help="Archive old lineage and billing rows to files, then delete them.", no_args_is_help=True
)
lineage_app.add_typer(retention_app, name="retention")

ExportOrg = Annotated[str, typer.Option("--org", help="The organisation whose lineage to export.")]


@lineage_app.command("list")
@gateway_command
@with_parameters(typer_parameters(lineage_filter_options()))
def list_command(
    page: Annotated[int, typer.Option(min=1, help="Page number.")] = 1,
    limit: Annotated[int, typer.Option(min=1, max=100, help="Rows per page.")] = 20,
    *,
    gateway: GatewayOptions,
    **filters: str | None,
) -> None:
    """List invocations, newest first."""
    from rich.table import Table
    from rich.text import Text

    listing = gateway.call(lambda gw: gw.list_lineage(filters=filters, page=page, limit=limit))
    if gateway.as_json:
        emit_json(listing)
        return
    table = Table("time", "invocation", "agent", "platform", "status", "cost (USD)", "user")
    for item in listing["items"]:
        # Text(), not markup: agent names and emails are user input and may contain "[...]".
        table.add_row(
            *(
                Text(str(cell) if cell is not None else "")
                for cell in (
                    item["request_timestamp"],
                    item["invocation_id"],
                    item["agent"]["name"],
                    item["agent"]["platform"],
                    item["status"],
                    item["cost_usd"],
                    item["external_user"]["email"],
                )
            )
        )
    console.print(table)
    shown = len(listing["items"])
    console.print(f"{shown} of {listing['total']} (page {listing['page']})", highlight=False)


@lineage_app.command("graph")
@gateway_command
@with_parameters(typer_parameters(graph_selector_options()))
def graph_command(
    depth: Annotated[int, typer.Option(min=0, max=100, help="Hops from the selection.")] = 10,
    *,
    gateway: GatewayOptions,
    **selectors: str | None,
) -> None:
    """Show the invocation graph around a session, trace, invocation or workflow."""
    from rich.text import Text
    from rich.tree import Tree

    graph = gateway.call(lambda gw: gw.lineage_graph(selectors=selectors, depth=depth))
    if gateway.as_json:
        emit_json(graph)
        return
    children: dict[str, list[dict[str, Any]]] = {}
    with_parent = set()
    for edge in graph["edges"]:
        children.setdefault(edge["source"], []).append(edge)
        with_parent.add(edge["target"])
    by_id = {node["id"]: node for node in graph["nodes"]}

    def label(node: dict[str, Any]) -> Text:
        return Text(f"{node['ui']['label']}  {node['status']}  ${node['cost_usd'] or 0}  {node['id']}")

    root = Tree(Text(f"lineage {json.dumps(graph['metadata']['selection'], ensure_ascii=False)}"))
    # A looping ancestry has no root; showing each node once keeps the tree finite.
    shown: set[str] = set()

    def attach(branch: Tree, node: dict[str, Any]) -> None:
        shown.add(node["id"])
        sub = branch.add(label(node))
        for edge in children.get(node["id"], []):
            if edge["target"] not in shown:
                attach(sub, by_id[edge["target"]])

    for node in graph["nodes"]:
        if node["id"] not in with_parent and node["id"] not in shown:
            attach(root, node)
    for node in graph["nodes"]:
        if node["id"] not in shown:
            attach(root, node)
    console.print(root)
    meta = graph["metadata"]
    console.print(
        f"{meta['total_nodes']} nodes ({meta['external_nodes']} external), {meta['total_edges']} edges, "
        f"${meta['total_cost_usd']}" + (" — cut at the node limit" if meta["truncated"] else ""),
        highlight=False,
    )


@lineage_app.command("export")
@with_parameters(typer_parameters(lineage_filter_options()))
def export_command(
    org: ExportOrg,
    export_format: Annotated[str, typer.Option("--format", help="json, csv or openlineage.")] = "json",
    output: Annotated[Path | None, typer.Option("--output", "-o", help="Write here instead of stdout.")] = None,
    **filters: str | None,
) -> None:
    """Stream invocations as JSON, CSV or OpenLineage events (one batch of rows in memory at a time)."""
    destination = output.open("w", encoding="utf-8", newline="") if output else sys.stdout

    async def stream(gateway: Gateway) -> None:
        from external_agents.gateway.operations import LocalGateway

        # In-process only (a Target without a URL): the export is read from the database as it is written.
        assert isinstance(gateway, LocalGateway)
        export = await gateway.export_lineage(filters=filters, export_format=export_format)
        async for chunk in export.chunks:
            destination.write(chunk)

    try:
        call(Target(url=None, api_key=None, org=org), stream, as_json=False)
    finally:
        if output:
            destination.close()


@retention_app.command("run")
def retention_run(
    archive_dir: Annotated[Path, typer.Option("--archive-dir", help="Where the .jsonl.gz archives go.")],
    days: Annotated[int, typer.Option(min=1, help="Keep lineage of the last N days.")] = 90,
    billing_months: Annotated[int, typer.Option(min=1, help="Keep billing usage of the last N months.")] = 13,
    batch_size: Annotated[int, typer.Option(min=1, max=100_000, help="Rows per archive file.")] = 5_000,
) -> None:
    """Archive lineage older than --days and billing older than --billing-months, then delete them.

    Safe to interrupt: run it again and it completes the interrupted batch without writing it twice.
    """
    from datetime import UTC, datetime

    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    from external_agents.gateway.administration import archive_old_records

    settings = settings_or_exit()

    async def work(engine: AsyncEngine) -> list[RetentionResult]:
        columns = (TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn())
        with Progress(*columns, console=console) as progress:
            tasks: dict[str, Any] = {}

            def show_totals(totals: dict[str, int]) -> None:
                tasks.update({table: progress.add_task(f"Archiving {table}", total=n) for table, n in totals.items()})

            return await archive_old_records(
                engine,
                archive_dir=archive_dir,
                lineage_days=days,
                billing_months=billing_months,
                batch_size=batch_size,
                now=datetime.now(UTC),
                on_totals=show_totals,
                on_batch=lambda table, rows: progress.advance(tasks[table], rows),
            )

    for result in run_with_engine(settings, work):
        recovered = f"; completed {result.recovered_files} interrupted batch(es)" if result.recovered_files else ""
        console.print(
            f"{result.table}: archived {result.archived_rows} row(s) older than {result.cutoff.isoformat()} "
            f"into {len(result.files)} file(s) in {archive_dir}{recovered}",
            highlight=False,
            markup=False,
        )
