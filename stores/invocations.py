"""Writing an invocation's outcome: its lineage row, its billing row and the budget settlement, atomically.

One transaction, so a delivered invocation is always both in lineage and billed (and a crash leaves
neither), and the budget counters move with the billing rows they summarise. An invocation that reserved
already has its lineage row, written `pending` with the reservation (stores/pending.py): recording completes
that row, and only if it is still pending, so the owner and a sweeper that found its lease passed never
both settle it. Denials, which never reserved, insert their row whole. When the database stays
unreachable longer than the retries last, the record waits on local disk (stores/unrecorded.py) and
`keep_replaying` writes it, the same way, once the database is back.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, replace
from datetime import timedelta
from typing import Any

import sqlalchemy as sa
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine
from tenacity import AsyncRetrying, retry_if_exception, stop_after_delay, wait_exponential

from external_agents.models import TABLES
from external_agents.models.invocation_lineage import PENDING
from external_agents.stores.audit import audit_log, audit_row, insert_audit_rows
from external_agents.stores.budgets import Reservation, release, settle
from external_agents.stores.database import autocommit, database_refused, database_unavailable, ping
from external_agents.stores.lineage import (
    ERASURE_EVENT,
    PERSONAL_JSON_COLUMNS,
    PERSONAL_TEXT_COLUMNS,
    REDACTED,
    email_digest,
    erased,
    erased_since,
    parent_invocation,
)
from external_agents.stores.refused_records import storable_record
from external_agents.stores.unrecorded import InvocationRecord, UnrecordedJournal

logger = logging.getLogger(__name__)

lineage = TABLES["invocation_lineage"]
billing = TABLES["billing_usage"]


def _lineage_insert() -> sa.Insert:
    """One INSERT for every invocation, built once so SQLAlchemy compiles it once; values come as parameters.

    The parent is found by `parent_invocation`.
    """
    values: dict[str, Any] = {c.name: sa.bindparam(c.name, type_=c.type) for c in lineage.c}
    values["parent_invocation_id"] = parent_invocation()
    return lineage.insert().values(values)


LINEAGE_INSERT = _lineage_insert()
# Columns a later migration revision added: a record made before it (a journal file an older release wrote)
# has no value for them, and the insert binds every column.
LATER_LINEAGE_COLUMNS = {column.name: None for column in lineage.c if "revision" in column.info}
BILLING_INSERT = billing.insert()
ERASURE_CLOCK_MARGIN = timedelta(seconds=2)

# What the record step writes into a pending row; the rest was written with the reservation.
COMPLETION_COLUMNS = (
    "output",
    "status",
    "denial_reason",
    "cost_usd",
    "duration_ms",
    "webhook_delivery_status",
    "webhook_delivery_error",
    "webhook_attempts",
    "response_timestamp",
    "reported_cost_usd",
    "record_note",
)


def _completion() -> sa.Update:
    """The pending row's outcome, only while it is still pending; built once, values as parameters.

    Erasure wins: when the person's lineage was erased after the invocation began (the erasure redacted the
    pending row, or committed while it was being written), every personal column, the output included, is
    left (or made) [REDACTED] instead of taking the values this invocation carries.
    """
    digest = sa.bindparam("email_digest", type_=sa.String)
    erased_meanwhile = sa.or_(
        lineage.c.external_user_email == REDACTED,
        sa.and_(
            digest.is_not(None),
            sa.exists().where(
                audit_log.c.event_type == ERASURE_EVENT,
                # Bound, not correlated with the row: PostgreSQL then runs the lookup once per statement.
                audit_log.c.organization_id == sa.bindparam("erasure_organization_id", type_=sa.String),
                audit_log.c.resource_id == digest,
                audit_log.c.created_at >= sa.bindparam("erasures_since", type_=audit_log.c.created_at.type),
            ),
        ),
    )
    values: dict[str, Any] = {name: sa.bindparam(name, type_=lineage.c[name].type) for name in COMPLETION_COLUMNS}
    values["lease_expires_at"] = None
    for name in (*PERSONAL_TEXT_COLUMNS, *PERSONAL_JSON_COLUMNS):
        redacted = sa.literal(REDACTED, lineage.c[name].type)
        kept = values.get(name, lineage.c[name])
        values[name] = sa.case((erased_meanwhile, redacted), else_=kept)
    return (
        lineage.update()
        .where(lineage.c.id == sa.bindparam("invocation_id"), lineage.c.status == PENDING)
        .values(values)
        .returning(lineage.c.id)
    )


LINEAGE_COMPLETION = _completion()


def _completion_params(row: dict[str, Any]) -> dict[str, Any]:
    email = row.get("external_user_email")
    params = {name: row.get(name) for name in COMPLETION_COLUMNS}
    return {
        **params,
        "invocation_id": row["id"],
        "erasure_organization_id": row["organization_id"],
        "email_digest": email_digest(email) if email else None,
        # SQLite dates rows to the second, and app and database clocks differ a little: in doubt, erase.
        "erasures_since": row["request_timestamp"] - ERASURE_CLOCK_MARGIN,
    }


# How long a delivered invocation keeps trying to be recorded while the database is unreachable (a restart, a
# failover) before its record is left to the journal (or, without one, the caller gets 503).
RECORD_RETRY_SECONDS = 8.0
# How often each app process looks for journalled records to write.
REPLAY_INTERVAL_SECONDS = 5.0


async def record_invocation(
    engine: AsyncEngine,
    *,
    lineage_row: dict[str, Any],
    billing_row: dict[str, Any] | None,
    reservation: Reservation | None,
    actual_micros: int | None,
    audit_events: list[dict[str, Any]],
    journal: UnrecordedJournal | None = None,
    retry_seconds: float = RECORD_RETRY_SECONDS,
) -> bool:
    """Insert lineage (+ billing), settle or release the reservation, and append audit rows, in one transaction.

    `actual_micros` None with a reservation means the platform was never reached: the reservation is released.
    The platform has usually been reached already, so a lost database connection is retried for
    `retry_seconds`; a retry that finds the lineage row already there means an earlier attempt committed.
    Still unreachable after that, the record goes to `journal` and False is returned (recorded later);
    without a journal, or if the journal cannot be written, the database's error is raised.
    """
    record = InvocationRecord(
        lineage_row=lineage_row,
        billing_row=billing_row,
        reservation=reservation,
        actual_micros=actual_micros,
        audit_rows=[audit_row(**event) for event in audit_events],
    )
    retrying = AsyncRetrying(
        retry=retry_if_exception(database_unavailable),
        stop=stop_after_delay(retry_seconds),
        wait=wait_exponential(multiplier=0.1, max=1.0),
        reraise=True,
    )
    try:
        async for attempt in retrying:
            with attempt:
                try:
                    await _record_once(engine, record)
                except IntegrityError:
                    if attempt.retry_state.attempt_number == 1:
                        raise
    except Exception as exc:
        if database_refused(exc) and not isinstance(exc, IntegrityError):
            # Refused, not unreachable: asking again would fail the same way, so the record is stored in a form
            # the database takes (a second refusal is raised).
            logger.warning(
                "invocation.record_refused invocation_id=%s error=%s", record.invocation_id, type(exc).__name__
            )
            await _record_once(engine, storable_record(record, refusal=exc))
            return True
        if journal is None or not database_unavailable(exc):
            raise
        try:
            path = await asyncio.to_thread(journal.keep, record)
        except OSError:
            logger.exception("invocation.record_lost invocation_id=%s", record.invocation_id)
            raise exc from None
        logger.warning(
            "invocation.record_deferred invocation_id=%s file=%s error=%s",
            record.invocation_id,
            path.name,
            type(exc).__name__,
        )
        return False
    return True


async def _record_once(engine: AsyncEngine, record: InvocationRecord) -> bool:
    """Write the record; False when its row was settled already (by a sweeper, or an earlier attempt)."""
    async with engine.begin() as connection:
        if not await _write_lineage(connection, record):
            logger.warning("invocation.already_settled invocation_id=%s", record.invocation_id)
            return False
        if record.billing_row is not None:
            await connection.execute(BILLING_INSERT, record.billing_row)
        if record.reservation is not None:
            if record.actual_micros is None:
                await release(connection, reservation=record.reservation)
            else:
                await settle(connection, reservation=record.reservation, actual_micros=record.actual_micros)
        await insert_audit_rows(connection, record.audit_rows)
    return True


async def _write_lineage(connection: AsyncConnection, record: InvocationRecord) -> bool:
    """Complete the pending row, or insert the whole row; False when the row exists and is no longer pending."""
    row = record.lineage_row
    if record.reservation is not None:
        completed = await connection.execute(LINEAGE_COMPLETION, _completion_params(row))
        if completed.first() is not None:
            return True
        # No pending row: settled already, or reserved without one (a journal file from before pending rows).
        found = await connection.execute(sa.select(lineage.c.id).where(lineage.c.id == row["id"]))
        if found.first() is not None:
            return False
    await connection.execute(LINEAGE_INSERT, {**LATER_LINEAGE_COLUMNS, **row})
    return True


@dataclass(frozen=True)
class ReplayReport:
    recorded: int = 0
    # Found in the database already: the file was deleted, nothing written twice.
    already_recorded: int = 0
    refused: int = 0
    # Left for the next replay, the database still unreachable.
    waiting: int = 0


async def _lineage_exists(engine: AsyncEngine, invocation_id: str) -> bool:
    async with autocommit(engine).connect() as connection:
        found = await connection.execute(sa.select(lineage.c.id).where(lineage.c.id == invocation_id))
        return found.first() is not None


async def _honouring_erasures(engine: AsyncEngine, record: InvocationRecord) -> InvocationRecord:
    """The record, its personal fields erased if its user's lineage was erased after the invocation began.

    A live record is written within seconds; a journalled one may wait long enough for an erasure to happen
    in between, and writing it as it was would bring the erased data back.
    """
    row = record.lineage_row
    email = row.get("external_user_email")
    # SQLite dates rows to the second, and app and database clocks differ a little: in doubt, erase.
    since = row["request_timestamp"] - ERASURE_CLOCK_MARGIN
    if not email or not await erased_since(engine, organization_id=row["organization_id"], email=email, since=since):
        return record
    return replace(record, lineage_row=erased(row))


async def _reachable(engine: AsyncEngine) -> bool:
    try:
        await ping(engine)
    except Exception as exc:
        if database_unavailable(exc):
            return False
        raise
    return True


async def replay_unrecorded(engine: AsyncEngine, journal: UnrecordedJournal) -> ReplayReport:
    """Write the journal's records, oldest first; stop at the first sign the database is still unreachable."""
    recorded = already = refused = 0
    files = journal.pending()
    for index, path in enumerate(files):
        record = journal.read(path)
        if record is None:
            continue
        try:
            written = await _record_once(engine, await _honouring_erasures(engine, record))
        except IntegrityError:
            if await _lineage_exists(engine, record.invocation_id):
                already += 1
                journal.forget(path)
            else:
                refused += 1
                journal.refuse(path, "the database refused it (IntegrityError)")
            continue
        except Exception as exc:
            if database_unavailable(exc) and not await _reachable(engine):
                return ReplayReport(recorded, already, refused, waiting=len(files) - index)
            # The database answers, so it is this record it will not take; it must not hold up the others.
            refused += 1
            journal.refuse(path, f"the database refused it ({type(exc).__name__})")
            continue
        if written:
            recorded += 1
        else:
            already += 1
        journal.forget(path)
    return ReplayReport(recorded, already, refused)


async def keep_replaying(
    engine: AsyncEngine,
    journal: UnrecordedJournal,
    *,
    every_seconds: float = REPLAY_INTERVAL_SECONDS,
    wait: Callable[[float], Awaitable[None]] = asyncio.sleep,
) -> None:
    """Replay the journal now and then every `every_seconds`, for as long as the app runs.

    `wait` is the interval's clock: tests pass one they tick by hand instead of waiting seconds.
    """
    while True:
        try:
            report = await replay_unrecorded(engine, journal)
        except Exception:
            logger.exception("invocation.replay_failed")
        else:
            if report.recorded or report.already_recorded or report.refused:
                logger.warning(
                    "invocation.replayed recorded=%d already_recorded=%d refused=%d waiting=%d",
                    report.recorded,
                    report.already_recorded,
                    report.refused,
                    report.waiting,
                )
        await wait(every_seconds)
