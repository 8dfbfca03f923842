"""Checking the budget counters against what they summarise, and repairing them: `external-agents reconcile`.

A counter row is a cache of a sum: the agent's billed invocations in its period (`billing_usage`) plus its
reservations still in flight (pending lineage rows, stores/pending.py), in micro-dollars and in executions.
Anything that breaks that (a hand edit, a crash before pending rows existed, a bug) is drift, reported per
agent and period for the current UTC day and month, the periods that admit or refuse invocations.

Repairing a row sets it to the sum, in one transaction that first locks the row (PostgreSQL), so a
reservation or settlement of the same agent waits and the sum it reads includes every committed one; the
sum is read in one statement, so a sweep that turns a pending row into a billing row is counted once.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

import sqlalchemy as sa
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from external_agents.models import TABLES
from external_agents.stores.budgets import counters, day_bounds, derived_sources, month_bounds, period_ids

agents = TABLES["external_agents"]


@dataclass(frozen=True, kw_only=True)
class CounterCheck:
    """One counter row against the sum it caches."""

    agent_id: str
    organization_id: str
    # "day" or "month", and the row's id ("<agent>|day|2026-12-06").
    period: str
    counter_id: str
    counter_micros: int
    counter_executions: int
    # Billed invocations and live reservations together.
    expected_micros: int
    expected_executions: int
    repaired: bool = False

    @property
    def drifted(self) -> bool:
        return (self.counter_micros, self.counter_executions) != (self.expected_micros, self.expected_executions)


def _expected(agent_id: str, start: datetime, end: datetime) -> sa.Select[tuple[int, int]]:
    derived = derived_sources(agent_id, start, end)
    return sa.select(
        sa.cast(sa.func.coalesce(sa.func.sum(derived.c.micros), 0), sa.BigInteger), sa.func.count()
    ).select_from(derived)


async def _check(
    connection: AsyncConnection,
    *,
    agent_id: str,
    organization_id: str,
    period: str,
    counter_id: str,
    bounds: tuple[datetime, datetime],
    repair: bool,
) -> CounterCheck | None:
    read = sa.select(counters.c.spent_micros, counters.c.executions).where(counters.c.id == counter_id)
    if repair:
        # Reservations and settlements of this agent wait until the repair commits (a no-op on SQLite, whose
        # writers are serialised by the database lock the UPDATE below takes).
        read = read.with_for_update()
    counter = (await connection.execute(read)).first()
    if counter is None:
        # Seeded from the same sum when it is next needed.
        return None
    micros, executions = (await connection.execute(_expected(agent_id, *bounds))).one()
    check = CounterCheck(
        agent_id=agent_id,
        organization_id=organization_id,
        period=period,
        counter_id=counter_id,
        counter_micros=counter.spent_micros,
        counter_executions=counter.executions,
        expected_micros=int(micros),
        expected_executions=int(executions),
    )
    if repair and check.drifted:
        await connection.execute(
            counters.update()
            .where(counters.c.id == counter_id)
            .values(spent_micros=check.expected_micros, executions=check.expected_executions)
        )
        return CounterCheck(**{**check.__dict__, "repaired": True})
    return check


async def check_counters(
    engine: AsyncEngine, *, organization_id: str | None, now: datetime, repair: bool
) -> list[CounterCheck]:
    """Every existing counter row of the current day and month (of one organisation's agents, or all), against
    billing plus live reservations; with `repair`, each drifted row is set to that sum."""
    query = sa.select(agents.c.id, agents.c.organization_id).order_by(agents.c.organization_id, agents.c.id)
    if organization_id is not None:
        query = query.where(agents.c.organization_id == organization_id)
    async with engine.connect() as connection:
        agent_rows = (await connection.execute(query)).all()
    checks: list[CounterCheck] = []
    for agent in agent_rows:
        day_id, month_id = period_ids(agent.id, now)
        for period, counter_id, bounds in (("day", day_id, day_bounds(now)), ("month", month_id, month_bounds(now))):
            async with engine.begin() as connection:
                check = await _check(
                    connection,
                    agent_id=agent.id,
                    organization_id=agent.organization_id,
                    period=period,
                    counter_id=counter_id,
                    bounds=bounds,
                    repair=repair,
                )
            if check is not None:
                checks.append(check)
    return checks
