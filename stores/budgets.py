"""The budget ledger: an agent's spend per UTC day and month, reserved before delivery and settled after.

Why it is exact. Spend lives in `budget_counters` rows as integer micro-dollars, so sums never drift. A
reservation is one conditional UPDATE over the agent's day row and month row,
`spent + amount <= limit` in its WHERE, committed only when both rows were updated. The database decides,
not the application: on PostgreSQL (READ COMMITTED) an UPDATE that finds a row locked by another
transaction waits for it and re-evaluates the WHERE on the committed version, so two reservations can never
both fit into the last slot; SQLite takes its single write lock when the UPDATE starts, so the check and the
write cannot interleave with another writer. That holds for any number of instances sharing the database.

On PostgreSQL every writer locks an agent's day row before its month row (`SELECT ... ORDER BY id FOR UPDATE`
in a CTE of the same statement). Left to itself, a two-row UPDATE locks in the rows' physical order, which
changes with every update, and concurrent reservations deadlock: 817 of 2,000 failed with "deadlock
detected" in a measured 400-way concurrent run without the CTE, none with it.

An invocation's `pending` lineage row (stores/pending.py) is written with its reservation, in the same
transaction: on PostgreSQL as one more sub-statement of the reservation's single statement (an INSERT that
yields its row only when both counters were taken), on SQLite as one more statement in its transaction. So a
period's counters are always derivable: billed rows in `billing_usage` plus the reservations of pending rows.
A row is seeded from both, the record of truth, the first time it is needed (or after the counters were
lost), and `reconcile` checks (and repairs) existing rows against the same sum.
"""

from __future__ import annotations

import functools
from collections.abc import Iterable, Mapping
from dataclasses import asdict, dataclass, fields
from datetime import UTC, datetime, timedelta
from typing import Any, Literal

import sqlalchemy as sa
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from external_agents.errors import StorageError
from external_agents.models import TABLES
from external_agents.models.invocation_lineage import PENDING
from external_agents.stores.database import autocommit
from external_agents.stores.pending import PENDING_INSERT, pending_columns, pending_params, pending_select

counters = TABLES["budget_counters"]
billing = TABLES["billing_usage"]
lineage = TABLES["invocation_lineage"]

Period = Literal["daily", "monthly"]
AlertKind = Literal["warning", "degraded"]

# A refused reservation is retried only when the counters moved between the UPDATE and the read that explains
# the refusal (a concurrent release or settlement lowered them), or after seeding a missing row.
_ATTEMPTS = 5
_ALERT_FLAGS: dict[str, sa.Column[Any]] = {"warning": counters.c.warning_sent, "degraded": counters.c.degraded_sent}


def _utc(now: datetime) -> datetime:
    if now.tzinfo is None:
        raise ValueError("naive datetime: pass an aware datetime")
    return now.astimezone(UTC)


def day_bounds(now: datetime) -> tuple[datetime, datetime]:
    """The UTC calendar day containing `now`, as [start, end)."""
    now = _utc(now)
    start = datetime(now.year, now.month, now.day, tzinfo=UTC)
    return start, start + timedelta(days=1)


def month_bounds(now: datetime) -> tuple[datetime, datetime]:
    """The UTC calendar month containing `now`, as [start, end)."""
    now = _utc(now)
    start = datetime(now.year, now.month, 1, tzinfo=UTC)
    # Day 32 from any month's first day is in the next month.
    return start, (start + timedelta(days=32)).replace(day=1)


def period_ids(agent_id: str, now: datetime) -> tuple[str, str]:
    """The ids of the agent's day row and month row for `now` (see models/budget_counter.py)."""
    now = _utc(now)
    return f"{agent_id}|day|{now:%Y-%m-%d}", f"{agent_id}|month|{now:%Y-%m}"


@dataclass(frozen=True)
class BudgetLimits:
    """Money limits in micro-dollars; execution limits are optional (None: no limit)."""

    daily_micros: int
    monthly_micros: int
    daily_executions: int | None = None
    monthly_executions: int | None = None


@dataclass(frozen=True)
class Reservation:
    """An admitted reservation and the counters' values just after it.

    The row ids are kept so settling or releasing after midnight still adjusts the periods it was taken in.
    """

    agent_id: str
    amount_micros: int
    day_id: str
    month_id: str
    day_spent_micros: int
    month_spent_micros: int
    day_executions: int
    month_executions: int

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> Reservation:
        return cls(**{field.name: data[field.name] for field in fields(cls)})


@dataclass(frozen=True)
class BudgetRefusal:
    """The period that refused a reservation and where its money stands; `reason` says which limit was hit."""

    period: Period
    limit_micros: int
    spent_micros: int
    remaining_micros: int
    reason: Literal["cost", "executions"]

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass(frozen=True)
class Spend:
    """An agent's spend and executions in the current UTC day and month, as the counters hold them."""

    day_spent_micros: int = 0
    month_spent_micros: int = 0
    day_executions: int = 0
    month_executions: int = 0


def _counter_rows(
    dialect: str, ids: tuple[Any, Any], only_if: sa.ColumnElement[bool] | None = None
) -> sa.ColumnElement[bool]:
    """The WHERE that picks an agent's two counter rows for an UPDATE, locking them in a fixed order; with
    `only_if`, none unless it holds (on PostgreSQL tested before any row is locked)."""
    if dialect == "postgresql":
        # ORDER BY before FOR UPDATE: the rows are locked in sorted order, the same order in every writer, so no
        # two transactions can each hold the row the other is waiting for.
        conditions = [counters.c.id.in_(ids)] if only_if is None else [counters.c.id.in_(ids), only_if]
        locked = sa.select(counters.c.id).where(*conditions).order_by(counters.c.id).with_for_update().cte("locked")
        return counters.c.id == locked.c.id
    # SQLite serialises writers with one database lock, taken when the UPDATE starts. A statement beginning with
    # WITH would also not open the driver's implicit transaction: it would commit on its own, before the caller
    # could roll it back.
    return counters.c.id.in_(ids) if only_if is None else sa.and_(counters.c.id.in_(ids), only_if)


@functools.cache
def _reserve_statement(
    dialect: str, daily_executions: bool, monthly_executions: bool, with_pending: bool
) -> sa.Update | sa.Select[Any]:
    # Built once per shape, with bind parameters, so SQLAlchemy's compiled cache and asyncpg's prepared
    # statements are reused on the hot path.
    amount = sa.bindparam("amount", type_=sa.BigInteger)
    day_id, month_id = sa.bindparam("day_id", type_=sa.String), sa.bindparam("month_id", type_=sa.String)

    def fits(columns: Any, row_id: Any, prefix: str, check_executions: bool) -> sa.ColumnElement[bool]:
        conditions = [
            columns.id == row_id,
            columns.spent_micros + amount <= sa.bindparam(f"{prefix}_limit", type_=sa.BigInteger),
        ]
        if check_executions:
            conditions.append(columns.executions + 1 <= sa.bindparam(f"{prefix}_executions", type_=sa.Integer))
        return sa.and_(*conditions)

    def both(columns: Any) -> sa.ColumnElement[bool]:
        return sa.or_(
            fits(columns, day_id, "day", daily_executions), fits(columns, month_id, "month", monthly_executions)
        )

    if dialect == "postgresql":
        # ORDER BY before FOR UPDATE: the rows are locked in sorted order, the same order in every writer, so no
        # two transactions can each hold the row the other is waiting for. The locked rows are read after any
        # concurrent writer committed, and the UPDATE applies only when both of them fit: one statement that
        # takes both periods or neither, so it needs no transaction around it.
        locked = (
            sa.select(counters.c.id, counters.c.spent_micros, counters.c.executions)
            .where(counters.c.id.in_((day_id, month_id)))
            .order_by(counters.c.id)
            .with_for_update()
            .cte("locked")
        )
        fitting = sa.select(sa.func.count()).select_from(locked).where(both(locked.c)).scalar_subquery()
        where = sa.and_(counters.c.id == locked.c.id, fitting == 2)
        if with_pending:
            # The pending row rides in the same statement: inserted only when both counter rows were taken,
            # still one round trip and one implicit transaction.
            updated = _take(where).cte("updated")
            taken = sa.select(sa.func.count()).select_from(updated).scalar_subquery() == 2
            pending = lineage.insert().from_select(pending_columns(), pending_select(taken)).cte("pending")
            return sa.select(updated.c.id, updated.c.spent_micros, updated.c.executions).add_cte(pending)
    else:
        # SQLite serialises writers with one database lock, taken when the UPDATE starts; the caller's transaction
        # rolls a one-row update back. A statement beginning with WITH would not open the driver's implicit
        # transaction and would commit on its own.
        where = sa.and_(counters.c.id.in_((day_id, month_id)), both(counters.c))
    return _take(where)


def _take(where: sa.ColumnElement[bool]) -> sa.Update:
    amount = sa.bindparam("amount", type_=sa.BigInteger)
    return (
        counters.update()
        .where(where)
        .values(spent_micros=counters.c.spent_micros + amount, executions=counters.c.executions + 1)
        .returning(counters.c.id, counters.c.spent_micros, counters.c.executions)
    )


def _micros(cost: sa.ColumnElement[float]) -> sa.ColumnElement[int]:
    # ROUND then CAST: each cost becomes its exact micro-dollar integer before summing, on both databases (a
    # float sum of 0.1 + 0.2 would not be 0.3).
    return sa.cast(sa.func.round(sa.func.coalesce(cost, 0.0) * 1_000_000), sa.BigInteger)


def derived_sources(agent_id: Any, start: Any, end: Any) -> sa.Subquery:
    """What an agent's counter for [start, end) must hold, one (micros) row per billed invocation and per
    live reservation: billing rows, and pending lineage rows (their `cost_usd` is the reservation)."""
    billed = sa.select(_micros(billing.c.cost_usd).label("micros")).where(
        billing.c.external_agent_id == agent_id, billing.c.created_at >= start, billing.c.created_at < end
    )
    reserved = sa.select(_micros(lineage.c.cost_usd).label("micros")).where(
        lineage.c.external_agent_id == agent_id,
        lineage.c.status == PENDING,
        lineage.c.request_timestamp >= start,
        lineage.c.request_timestamp < end,
    )
    return sa.union_all(billed, reserved).subquery("derived")


def _seed_statement(dialect: str, *, row_id: str, agent_id: str, start: datetime, end: datetime) -> sa.Insert:
    derived = derived_sources(agent_id, start, end)
    seed = sa.select(
        sa.literal(row_id, sa.String),
        sa.literal(agent_id, sa.String),
        sa.cast(sa.func.coalesce(sa.func.sum(derived.c.micros), 0), sa.BigInteger),
        sa.cast(sa.func.count(), sa.Integer),
        sa.false(),
        sa.false(),
    ).select_from(derived)
    # SQLite parses `SELECT ... FROM x ON CONFLICT` as a join's ON; a WHERE in between ends the SELECT.
    seed = seed.where(sa.true())
    insert = postgresql.insert(counters) if dialect == "postgresql" else sqlite.insert(counters)
    columns = ["id", "external_agent_id", "spent_micros", "executions", "warning_sent", "degraded_sent"]
    # DO NOTHING: when instances seed the same row at once, the first one's row stands.
    return insert.from_select(columns, seed).on_conflict_do_nothing(index_elements=["id"])


async def _read(connection: AsyncConnection, ids: Iterable[str]) -> dict[str, tuple[int, int]]:
    async with connection.begin():
        result = await connection.execute(
            sa.select(counters.c.id, counters.c.spent_micros, counters.c.executions).where(counters.c.id.in_(ids))
        )
        return {row.id: (row.spent_micros, row.executions) for row in result}


def _refusal(
    counts: Mapping[str, tuple[int, int]], *, day_id: str, month_id: str, amount_micros: int, limits: BudgetLimits
) -> BudgetRefusal | None:
    """The first period (daily before monthly) that `counts` say cannot take the reservation, if any."""
    periods: tuple[tuple[Period, str, int, int | None], ...] = (
        ("daily", day_id, limits.daily_micros, limits.daily_executions),
        ("monthly", month_id, limits.monthly_micros, limits.monthly_executions),
    )
    for period, row_id, limit_micros, limit_executions in periods:
        spent, executions = counts[row_id]
        if spent + amount_micros > limit_micros:
            reason: Literal["cost", "executions"] = "cost"
        elif limit_executions is not None and executions + 1 > limit_executions:
            reason = "executions"
        else:
            continue
        return BudgetRefusal(
            period=period,
            limit_micros=limit_micros,
            spent_micros=spent,
            remaining_micros=max(limit_micros - spent, 0),
            reason=reason,
        )
    return None


async def reserve(
    engine: AsyncEngine,
    *,
    agent_id: str,
    amount_micros: int,
    limits: BudgetLimits,
    now: datetime,
    pending_row: dict[str, Any] | None = None,
) -> Reservation | BudgetRefusal:
    """Take `amount_micros` and one execution from the agent's day and month, or refuse without taking any.

    With `pending_row` (lineage columns by name, stores/pending.py PENDING_COLUMNS), that row is inserted as
    `pending` in the same transaction, only when the reservation is taken.
    """
    if amount_micros < 0:
        raise ValueError("amount_micros must not be negative")
    day_id, month_id = period_ids(agent_id, now)
    params = {
        "amount": amount_micros,
        "day_id": day_id,
        "month_id": month_id,
        "day_limit": limits.daily_micros,
        "month_limit": limits.monthly_micros,
        "day_executions": limits.daily_executions,
        "month_executions": limits.monthly_executions,
    }
    with_pending = pending_row is not None
    if pending_row is not None:
        params.update(pending_params(pending_row))
    dialect = engine.dialect.name
    statement = _reserve_statement(
        dialect, limits.daily_executions is not None, limits.monthly_executions is not None, with_pending
    )
    # PostgreSQL's statement takes both periods or neither by itself, so it runs without BEGIN and COMMIT round
    # trips (begin() below then sends nothing); SQLite's needs the database transaction around it.
    source = autocommit(engine) if engine.dialect.name == "postgresql" else engine
    async with source.connect() as connection:
        for _ in range(_ATTEMPTS):
            async with connection.begin() as transaction:
                rows = {row.id: row for row in await connection.execute(statement, params)}
                if len(rows) < 2:
                    # Both periods or neither: a half-taken reservation would leak spend into one of them.
                    await transaction.rollback()
                elif with_pending and dialect != "postgresql":
                    await connection.execute(PENDING_INSERT, params)
            if len(rows) == 2:
                day, month = rows[day_id], rows[month_id]
                return Reservation(
                    agent_id=agent_id,
                    amount_micros=amount_micros,
                    day_id=day_id,
                    month_id=month_id,
                    day_spent_micros=day.spent_micros,
                    month_spent_micros=month.spent_micros,
                    day_executions=day.executions,
                    month_executions=month.executions,
                )
            counts = await _read(connection, (day_id, month_id))
            missing = [
                (row_id, bounds)
                for row_id, bounds in ((day_id, day_bounds(now)), (month_id, month_bounds(now)))
                if row_id not in counts
            ]
            if missing:
                async with connection.begin():
                    for row_id, (start, end) in missing:
                        await connection.execute(
                            _seed_statement(engine.dialect.name, row_id=row_id, agent_id=agent_id, start=start, end=end)
                        )
                continue
            refusal = _refusal(counts, day_id=day_id, month_id=month_id, amount_micros=amount_micros, limits=limits)
            if refusal is not None:
                return refusal
    raise StorageError(f"Budget counters of agent {agent_id} kept changing; the reservation was not decided")


def _clamped_add(column: sa.Column[int], delta: Any) -> sa.ColumnElement[int]:
    # Never below zero: a counter re-seeded from billing while a reservation was in flight does not hold that
    # reservation, and a negative spend would admit more than the budget.
    return sa.case((column + delta < 0, 0), else_=column + delta)


@dataclass(frozen=True)
class Adjustment:
    """How the counters a reservation was taken from move when it ends: by `micros` and `executions`."""

    day_id: str
    month_id: str
    micros: int
    executions: int

    def params(self) -> dict[str, Any]:
        """The bind parameters of `adjust_statement`."""
        return {
            "adjust_day_id": self.day_id,
            "adjust_month_id": self.month_id,
            "adjust_micros": self.micros,
            "adjust_executions": self.executions,
        }


def settlement(reservation: Reservation, *, actual_micros: int | None) -> Adjustment | None:
    """The counters' move when `reservation` ends: to the actual cost, or released when `actual_micros` is None
    (the platform was never reached); None when nothing moves (the actual cost is the reserved one).

    An actual cost above the reservation is recorded as charged even when it takes the period past its limit:
    the platform has already billed it, and the overrun then refuses the next reservations instead of being
    hidden.
    """
    if actual_micros is None:
        return Adjustment(reservation.day_id, reservation.month_id, -reservation.amount_micros, -1)
    if actual_micros < 0:
        raise ValueError("actual_micros must not be negative")
    delta = actual_micros - reservation.amount_micros
    return Adjustment(reservation.day_id, reservation.month_id, delta, 0) if delta else None


def adjust_statement(dialect: str, *, executions: bool, only_if: sa.ColumnElement[bool] | None = None) -> sa.Update:
    """The UPDATE of an `Adjustment` (its `params()`), `executions` too when it moves them; with `only_if`, a
    no-op unless it holds.

    A missing row (counters lost since the reservation) is left missing: the billing row written in the same
    transaction is what its seeding will count.
    """
    ids = (sa.bindparam("adjust_day_id", type_=sa.String), sa.bindparam("adjust_month_id", type_=sa.String))
    values: dict[str, Any] = {
        "spent_micros": _clamped_add(counters.c.spent_micros, sa.bindparam("adjust_micros", type_=sa.BigInteger))
    }
    if executions:
        delta = sa.bindparam("adjust_executions", type_=sa.Integer)
        values["executions"] = _clamped_add(counters.c.executions, delta)
    return counters.update().where(_counter_rows(dialect, ids, only_if)).values(values)


# Built once per dialect and shape, like every statement of an invocation.
_adjust_statement = functools.cache(adjust_statement)


async def adjust(connection: AsyncConnection, adjustment: Adjustment | None) -> None:
    """Move the counters by `adjustment` (None: leave them), inside the caller's transaction."""
    if adjustment is not None:
        statement = _adjust_statement(connection.dialect.name, executions=adjustment.executions != 0)
        await connection.execute(statement, adjustment.params())


async def settle(connection: AsyncConnection, *, reservation: Reservation, actual_micros: int) -> None:
    """Replace the reserved estimate with the actual cost, inside the caller's transaction.

    The counter rows stay locked until that transaction ends, so settle last, just before it commits.
    """
    await adjust(connection, settlement(reservation, actual_micros=actual_micros))


async def release(connection: AsyncConnection, *, reservation: Reservation) -> None:
    """Give back a reservation whose delivery never reached the platform, inside the caller's transaction."""
    await adjust(connection, settlement(reservation, actual_micros=None))


async def current_spend_many(engine: AsyncEngine, *, agent_ids: Iterable[str], now: datetime) -> dict[str, Spend]:
    """Each agent's spend and executions today and this month; zero where no row exists (nothing is seeded)."""
    ids = {agent_id: period_ids(agent_id, now) for agent_id in agent_ids}
    if not ids:
        return {}
    async with autocommit(engine).connect() as connection:
        counts = await _read(connection, [row_id for pair in ids.values() for row_id in pair])
    spend: dict[str, Spend] = {}
    for agent_id, (day_id, month_id) in ids.items():
        day_spent, day_executions = counts.get(day_id, (0, 0))
        month_spent, month_executions = counts.get(month_id, (0, 0))
        spend[agent_id] = Spend(
            day_spent_micros=day_spent,
            month_spent_micros=month_spent,
            day_executions=day_executions,
            month_executions=month_executions,
        )
    return spend


async def current_spend(engine: AsyncEngine, *, agent_id: str, now: datetime) -> Spend:
    return (await current_spend_many(engine, agent_ids=[agent_id], now=now))[agent_id]


async def claim_alert(engine: AsyncEngine, *, agent_id: str, now: datetime, kind: AlertKind) -> bool:
    """True for exactly one caller per agent, month and kind, across instances; False for all others.

    The flag lives on the month row, which a reservation has created before any threshold can be crossed; with
    no row there is nothing to alert about and nothing is claimed.
    """
    flag = _ALERT_FLAGS[kind]
    _day_id, month_id = period_ids(agent_id, now)
    async with engine.begin() as connection:
        result = await connection.execute(
            counters.update()
            .where(counters.c.id == month_id, flag == sa.false())
            .values({flag: True})
            .returning(counters.c.id)
        )
        return result.first() is not None
