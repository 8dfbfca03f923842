"""The `lineage` commands of the command line: list, graph and export run the same workflows as the REST API;
`retention run` archives and deletes old rows with a progress bar.

`list` and `graph` run where the gateway commands do (channels/cli): in-process with `--api-key` or
`--org`, or against a running gateway with `--url` and `--api-key`. `export` streams from the configured
database in-process, for the organisation `--org` names; `retention` is the operator's, in-process. Heavy
packages are imported inside the commands, so `--help` answers at once. Exit codes as in channels/cli.
"""

from __future__ import annotations

import asyncio
import json
import sys
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer

from external_agents.channels.cli.options import ApiKey, Org, Url

if TYPE_CHECKING:
    from kailash.workflow import Workflow
    from sqlalchemy.ext.asyncio import AsyncEngine

    from external_agents.settings import Settings
    from external_agents.workflows.lineage import LineageWorkflows

lineage_app = typer.Typer(help="Query and export invocation lineage; archive old records.", no_args_is_help=True)
retention_app = typer.Typer(
    help="Archive old lineage and billing rows to files, then delete them.", no_args_is_help=True
)
lineage_app.add_typer(retention_app, name="retention")

# Work done with the engine after the workflow ran, before the engine is closed (an export's stream).
AfterRun = Callable[["AsyncEngine", dict[str, Any]], Awaitable[None]]

ExportOrg = Annotated[str, typer.Option("--org", help="The organisation whose lineage to export.")]
AsJson = Annotated[bool, typer.Option("--json", help="JSON for scripts.")]
UserEmail = Annotated[str | None, typer.Option("--user-email", help="Only this external user's invocations.")]
AgentId = Annotated[str | None, typer.Option("--agent-id", help="Only this agent's invocations.")]
Status = Annotated[str | None, typer.Option("--status", help="pending, success, failure, timeout or denied.")]
System = Annotated[str | None, typer.Option("--system", help="Only calls from this external system.")]
Session = Annotated[str | None, typer.Option("--session-id", help="Only this external session.")]
Start = Annotated[str | None, typer.Option("--start-date", help="From (inclusive), ISO 8601 with a time zone.")]
End = Annotated[str | None, typer.Option("--end-date", help="Until (exclusive), ISO 8601 with a time zone.")]


def _filters(**given: str | None) -> dict[str, str | None]:
    return {
        "external_user_email": given["user_email"],
        "external_agent_id": given["agent_id"],
        "status": given["status"],
        "external_system": given["system"],
        "session_id": given["session_id"],
        "start_date": given["start_date"],
        "end_date": given["end_date"],
    }


def _caller(org: str) -> dict[str, Any]:
    return {"api_key_id": None, "organization_id": org}


async def _run(
    settings: Settings,
    *,
    pick: Callable[[LineageWorkflows], Workflow],
    node_id: str,
    inputs: dict[str, Any],
    then: AfterRun | None = None,
) -> dict[str, Any]:
    """Run one lineage workflow; `then(engine, outputs)` may use the engine before it is closed."""
    from external_agents.stores.database import create_engine
    from external_agents.workflows.lineage import build_lineage_workflows
    from external_agents.workflows.runner import WorkflowRunner

    engine = create_engine(settings)
    try:
        results = await WorkflowRunner().run(pick(build_lineage_workflows(engine=engine)), {node_id: inputs})
        outputs = results[node_id]
        if then is not None:
            await then(engine, outputs)
        return outputs
    finally:
        await engine.dispose()


def _execute(
    *,
    pick: Callable[[LineageWorkflows], Workflow],
    node_id: str,
    inputs: dict[str, Any],
    then: AfterRun | None = None,
) -> dict[str, Any]:
    from external_agents.channels.cli import EXIT_CONFIG, fail, settings_or_exit
    from external_agents.errors import ExternalAgentsError, ValidationError

    settings = settings_or_exit()
    try:
        return asyncio.run(_run(settings, pick=pick, node_id=node_id, inputs=inputs, then=then))
    except ValidationError as exc:
        fail(exc.detail, EXIT_CONFIG)
    except ExternalAgentsError as exc:
        fail(exc.detail)


@lineage_app.command("list")
def list_command(
    user_email: UserEmail = None,
    agent_id: AgentId = None,
    status: Status = None,
    system: System = None,
    session_id: Session = None,
    start_date: Start = None,
    end_date: End = None,
    page: Annotated[int, typer.Option(min=1, help="Page number.")] = 1,
    limit: Annotated[int, typer.Option(min=1, max=100, help="Rows per page.")] = 20,
    url: Url = None,
    api_key: ApiKey = None,
    org: Org = None,
    as_json: AsJson = False,
) -> None:
    """List invocations, newest first."""
    from rich.table import Table
    from rich.text import Text

    from external_agents.channels.cli import call, console, emit_json, target

    filters = _filters(
        user_email=user_email,
        agent_id=agent_id,
        status=status,
        system=system,
        session_id=session_id,
        start_date=start_date,
        end_date=end_date,
    )
    where = target(url=url, api_key=api_key, org=org)
    listing = call(where, lambda gw: gw.list_lineage(filters=filters, page=page, limit=limit), as_json=as_json)
    if as_json:
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
def graph_command(
    session_id: Annotated[str | None, typer.Option("--session-id", help="All invocations of a session.")] = None,
    trace_id: Annotated[str | None, typer.Option("--trace-id", help="An invocation by its trace id.")] = None,
    invocation_id: Annotated[str | None, typer.Option("--invocation-id", help="An invocation by its id.")] = None,
    workflow_id: Annotated[str | None, typer.Option("--workflow-id", help="All invocations of a workflow.")] = None,
    depth: Annotated[int, typer.Option(min=0, max=100, help="Hops from the selection.")] = 10,
    url: Url = None,
    api_key: ApiKey = None,
    org: Org = None,
    as_json: AsJson = False,
) -> None:
    """Show the invocation graph around a session, trace, invocation or workflow."""
    from rich.text import Text
    from rich.tree import Tree

    from external_agents.channels.cli import call, console, emit_json, target

    selectors = {
        "session_id": session_id,
        "trace_id": trace_id,
        "invocation_id": invocation_id,
        "workflow_id": workflow_id,
    }
    where = target(url=url, api_key=api_key, org=org)
    graph = call(where, lambda gw: gw.lineage_graph(selectors=selectors, depth=depth), as_json=as_json)
    if as_json:
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
def export_command(
    org: ExportOrg,
    export_format: Annotated[str, typer.Option("--format", help="json, csv or openlineage.")] = "json",
    output: Annotated[Path | None, typer.Option("--output", "-o", help="Write here instead of stdout.")] = None,
    user_email: UserEmail = None,
    agent_id: AgentId = None,
    status: Status = None,
    system: System = None,
    session_id: Session = None,
    start_date: Start = None,
    end_date: End = None,
) -> None:
    """Stream invocations as JSON, CSV or OpenLineage events (one batch of rows in memory at a time)."""
    from external_agents.nodes.lineage import export_chunks
    from external_agents.workflows.lineage import EXPORT_NODE

    filters = _filters(
        user_email=user_email,
        agent_id=agent_id,
        status=status,
        system=system,
        session_id=session_id,
        start_date=start_date,
        end_date=end_date,
    )

    target = output.open("w", encoding="utf-8", newline="") if output else sys.stdout

    async def stream(engine: AsyncEngine, outputs: dict[str, Any]) -> None:
        async for chunk in export_chunks(engine, export=outputs["export"]):
            target.write(chunk)

    inputs = {"caller": _caller(org), "format": export_format, "filters": filters}
    try:
        _execute(pick=lambda w: w.export, node_id=EXPORT_NODE, inputs=inputs, then=stream)
    finally:
        if output:
            target.close()


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

    from external_agents.channels.cli import console, fail, settings_or_exit
    from external_agents.errors import ExternalAgentsError
    from external_agents.stores.database import create_engine
    from external_agents.stores.retention import count_expired, retention_cutoffs, run_retention

    settings = settings_or_exit()
    now = datetime.now(UTC)
    cutoffs = retention_cutoffs(now, lineage_days=days, billing_months=billing_months)

    async def work() -> list[Any]:
        engine = create_engine(settings)
        try:
            totals = {t.table: await count_expired(engine, target=t, cutoff=c) for t, c in cutoffs.items()}
            columns = (TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn())
            with Progress(*columns, console=console) as progress:
                tasks = {table: progress.add_task(f"Archiving {table}", total=total) for table, total in totals.items()}
                return await run_retention(
                    engine,
                    archive_dir=archive_dir,
                    lineage_days=days,
                    billing_months=billing_months,
                    batch_size=batch_size,
                    now=now,
                    on_batch=lambda table, rows: progress.advance(tasks[table], rows),
                )
        finally:
            await engine.dispose()

    try:
        results = asyncio.run(work())
    except ExternalAgentsError as exc:
        fail(exc.detail)
    for result in results:
        recovered = f"; completed {result.recovered_files} interrupted batch(es)" if result.recovered_files else ""
        console.print(
            f"{result.table}: archived {result.archived_rows} row(s) older than {result.cutoff.isoformat()} "
            f"into {len(result.files)} file(s) in {archive_dir}{recovered}",
            highlight=False,
            markup=False,
        )
