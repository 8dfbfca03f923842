"""`reconcile`: the operator's check that the budget counters match what they summarise, in-process on the
configured database. Runs the gateway's `reconcile_counters`; exit code 0 when no counter drifts (or every
drifted one was repaired with `--repair`), 1 when drift remains."""

from __future__ import annotations

import json
import sys
from typing import TYPE_CHECKING, Annotated, Any

import typer

from external_agents.channels.cli.calls import run_with_engine, settings_or_exit
from external_agents.channels.cli.output import EXIT_FAILED, console

if TYPE_CHECKING:
    from sqlalchemy.ext.asyncio import AsyncEngine

    from external_agents.gateway.administration import ReconcileResult


def reconcile(
    org: Annotated[str | None, typer.Option("--org", help="Only this organisation's agents.")] = None,
    repair: Annotated[
        bool, typer.Option("--repair", help="Set each drifted counter to billing + reservations.")
    ] = False,
    as_json: Annotated[bool, typer.Option("--json", help="JSON for scripts.")] = False,
) -> None:
    """Check budget counters (today, this month) against billing plus live reservations; repair with --repair."""
    settings = settings_or_exit()
    from datetime import UTC, datetime

    from rich.table import Table

    from external_agents.gateway.administration import reconcile_counters
    from external_agents.money import to_usd

    async def check(engine: AsyncEngine) -> ReconcileResult:
        return await reconcile_counters(engine, organization_id=org, repair=repair, now=datetime.now(UTC))

    result = run_with_engine(settings, check)
    shown: list[dict[str, Any]] = [
        {
            "agent_id": c.agent_id,
            "organization_id": c.organization_id,
            "period": c.period,
            "counter_id": c.counter_id,
            "counter_usd": to_usd(c.counter_micros),
            "counter_executions": c.counter_executions,
            "expected_usd": to_usd(c.expected_micros),
            "expected_executions": c.expected_executions,
            "repaired": c.repaired,
        }
        for c in result.drifted
    ]
    if as_json:
        sys.stdout.write(json.dumps({"checked": len(result.checks), "drift": shown}, ensure_ascii=False) + "\n")
    elif not shown:
        console.print(
            f"No drift: {len(result.checks)} counter(s) match billing plus live reservations", highlight=False
        )
    else:
        table = Table("agent", "period", "counter $", "counter execs", "expected $", "expected execs", "repaired")
        for r in shown:
            table.add_row(
                r["agent_id"],
                f"{r['period']} {r['counter_id'].rsplit('|', 1)[-1]}",
                str(r["counter_usd"]),
                str(r["counter_executions"]),
                str(r["expected_usd"]),
                str(r["expected_executions"]),
                "yes" if r["repaired"] else "no",
            )
        console.print(table)
    if result.unrepaired:
        raise typer.Exit(EXIT_FAILED)
