"""Writing an invocation's outcome: its lineage row, its billing row and the budget settlement, atomically.

One transaction, so a delivered invocation is always both in lineage and billed (and a crash leaves
neither), and the budget counters move with the billing rows they summarise.
"""

from __future__ import annotations

from typing import Any

import sqlalchemy as sa
from sqlalchemy.exc import DataError, DBAPIError, IntegrityError, ProgrammingError
from sqlalchemy.exc import TimeoutError as PoolTimeoutError
from sqlalchemy.ext.asyncio import AsyncEngine
from tenacity import AsyncRetrying, retry_if_exception, stop_after_delay, wait_exponential

from models import TABLES
from stores.audit import audit_row, insert_audit_rows
from stores.budgets import Reservation, release, settle

lineage = TABLES["invocation_lineage"]
billing = TABLES["billing_usage"]


def _lineage_insert() -> sa.Insert:
    """One INSERT for every invocation, built once so SQLAlchemy compiles it once; values come as parameters.

    The parent is the invocation of this organisation whose trace_id the caller sent back as X-External-Trace-ID.
    """
    parent = (
        sa.select(lineage.c.id)
        .where(
            lineage.c.trace_id == sa.bindparam("external_trace_id"),
            lineage.c.organization_id == sa.bindparam("organization_id"),
        )
        .scalar_subquery()
    )
    values: dict[str, Any] = {c.name: sa.bindparam(c.name, type_=c.type) for c in lineage.c}
    values["parent_invocation_id"] = parent
    return lineage.insert().values(values)


LINEAGE_INSERT = _lineage_insert()
BILLING_INSERT = billing.insert()


# How long a delivered invocation keeps trying to be recorded while the database is unreachable (a restart, a
# failover): longer than that, the caller gets 503 and the delivery stands unrecorded.
RECORD_RETRY_SECONDS = 8.0


def _database_unavailable(exc: BaseException) -> bool:
    """A fault another attempt may get past (connection lost or refused, server starting up, pool exhausted),
    as opposed to a statement the database refuses, which would fail the same way again."""
    if isinstance(exc, IntegrityError | DataError | ProgrammingError):
        return False
    return isinstance(exc, DBAPIError | PoolTimeoutError | OSError)


async def record_invocation(
    engine: AsyncEngine,
    *,
    lineage_row: dict[str, Any],
    billing_row: dict[str, Any] | None,
    reservation: Reservation | None,
    actual_micros: int | None,
    audit_events: list[dict[str, Any]],
) -> None:
    """Insert lineage (+ billing), settle or release the reservation, and append audit rows, in one transaction.

    `actual_micros` None with a reservation means the platform was never reached: the reservation is released.
    The platform has usually been reached already, so a lost database connection is retried for a few seconds;
    a retry that finds the lineage row already there means an earlier attempt committed.
    """
    audit_rows = [audit_row(**event) for event in audit_events]
    retrying = AsyncRetrying(
        retry=retry_if_exception(_database_unavailable),
        stop=stop_after_delay(RECORD_RETRY_SECONDS),
        wait=wait_exponential(multiplier=0.1, max=1.0),
        reraise=True,
    )
    async for attempt in retrying:
        with attempt:
            try:
                await _record_once(
                    engine,
                    lineage_row=lineage_row,
                    billing_row=billing_row,
                    reservation=reservation,
                    actual_micros=actual_micros,
                    audit_rows=audit_rows,
                )
            except IntegrityError:
                if attempt.retry_state.attempt_number == 1:
                    raise


async def _record_once(
    engine: AsyncEngine,
    *,
    lineage_row: dict[str, Any],
    billing_row: dict[str, Any] | None,
    reservation: Reservation | None,
    actual_micros: int | None,
    audit_rows: list[dict[str, Any]],
) -> None:
    async with engine.begin() as connection:
        await connection.execute(LINEAGE_INSERT, lineage_row)
        if billing_row is not None:
            await connection.execute(BILLING_INSERT, billing_row)
        if reservation is not None:
            if actual_micros is None:
                await release(connection, reservation=reservation)
            else:
                await settle(connection, reservation=reservation, actual_micros=actual_micros)
        await insert_audit_rows(connection, audit_rows)
