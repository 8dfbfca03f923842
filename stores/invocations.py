"""Writing an invocation's outcome: its lineage row, its billing row and the budget settlement, atomically.

One transaction, so a delivered invocation is always both in lineage and billed (and a crash leaves
neither), and the budget counters move with the billing rows they summarise. On PostgreSQL that transaction is
a single statement, one round trip: each write is a data-modifying CTE (completion or insert of the lineage
row, then the billing row, the counters' settlement and the audit rows, each only once the lineage row was
written); on SQLite it is a transaction of one statement per write. An invocation that reserved
already has its lineage row, written `pending` with the reservation (stores/pending.py): recording completes
that row, and only if it is still pending, so the owner and a sweeper that found its lease passed never
both settle it. Denials, which never reserved, insert their row whole. When the database stays
unreachable longer than the retries last, the record waits on local disk (stores/unrecorded.py) and
`keep_replaying` writes it, the same way, once the database is back.
"""

from __future__ import annotations

import asyncio
import functools
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
from external_agents.stores.budgets import Adjustment, Reservation, adjust, adjust_statement, settlement
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


def _lineage_values(prefix: str = "") -> dict[str, Any]:
    """A whole lineage row's values, as parameters named `<prefix><column>`; the parent is found by
    `parent_invocation`."""
    values: dict[str, Any] = {c.name: sa.bindparam(f"{prefix}{c.name}", type_=c.type) for c in lineage.c}
    values["parent_invocation_id"] = parent_invocation(prefix=prefix)
    return values


# One INSERT for every invocation, built once so SQLAlchemy compiles it once; values come as parameters.
LINEAGE_INSERT = lineage.insert().values(_lineage_values())
# Columns a later migration revision added: a record made before it (a journal file an older release wrote)
# has no value for them, and the insert binds every column.
LATER_LINEAGE_COLUMNS = {column.name: None for column in lineage.c if "revision" in column.info}
BILLING_INSERT = billing.insert()
# Is the invocation's row there, for a record whose pending row is gone (SQLite's transaction).
LINEAGE_FOUND = sa.select(lineage.c.id).where(lineage.c.id == sa.bindparam("invocation_id"))
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


def _completion(prefix: str = "", *, erasure_cte: bool = False) -> sa.Update:
    """The pending row's outcome, only while it is still pending; built once, values as parameters (named as
    `_completion_params` names them).

    Erasure wins: when the person's lineage was erased after the invocation began (the erasure redacted the
    pending row, or committed while it was being written), every personal column, the output included, is
    left (or made) [REDACTED] instead of taking the values this invocation carries. With `erasure_cte`
    (PostgreSQL's WITH), the audit log is searched once for all seven columns, not once per column.
    """
    digest = sa.bindparam(f"{prefix}email_digest", type_=sa.String)
    # The person's erasure events first, found by event type (its index holds the few there are), then their
    # organisation and time. OFFSET 0 keeps PostgreSQL from merging the two: merged, a plan made on empty
    # statistics took the organisation's time index and read every audit row of the last seconds, some 1,600
    # per invocation at 420 invocations/s, and more the busier the gateway.
    erasures = (
        sa.select(audit_log.c.organization_id, audit_log.c.created_at)
        .where(audit_log.c.event_type == ERASURE_EVENT, audit_log.c.resource_id == digest)
        .offset(0)
        .subquery("erasures")
    )
    erasure_logged = sa.and_(
        digest.is_not(None),
        sa.exists().where(
            # Bound, not correlated with the row: PostgreSQL runs the lookup once per statement, not per row.
            erasures.c.organization_id == sa.bindparam(f"{prefix}erasure_organization_id", type_=sa.String),
            erasures.c.created_at >= sa.bindparam(f"{prefix}erasures_since", type_=audit_log.c.created_at.type),
        ),
    )
    if erasure_cte:
        # Each column's test reads the CTE's one row, computed once.
        erasure = sa.select(erasure_logged.label("logged")).cte("erasure")
        erasure_logged = sa.select(erasure.c.logged).scalar_subquery()
    erased_meanwhile = sa.or_(lineage.c.external_user_email == REDACTED, erasure_logged)
    values: dict[str, Any] = {
        name: sa.bindparam(f"{prefix}{name}", type_=lineage.c[name].type) for name in COMPLETION_COLUMNS
    }
    values["lease_expires_at"] = None
    for name in (*PERSONAL_TEXT_COLUMNS, *PERSONAL_JSON_COLUMNS):
        redacted = sa.literal(REDACTED, lineage.c[name].type)
        kept = values.get(name, lineage.c[name])
        values[name] = sa.case((erased_meanwhile, redacted), else_=kept)
    return (
        lineage.update()
        .where(lineage.c.id == sa.bindparam(f"{prefix}invocation_id"), lineage.c.status == PENDING)
        .values(values)
        .returning(lineage.c.id)
    )


LINEAGE_COMPLETION = _completion()


def _completion_params(row: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    email = row.get("external_user_email")
    params = {name: row.get(name) for name in COMPLETION_COLUMNS}
    params.update(
        invocation_id=row["id"],
        erasure_organization_id=row["organization_id"],
        email_digest=email_digest(email) if email else None,
        # SQLite dates rows to the second, and app and database clocks differ a little: in doubt, erase.
        erasures_since=row["request_timestamp"] - ERASURE_CLOCK_MARGIN,
    )
    return _prefixed(params, prefix)


def _prefixed(values: dict[str, Any], prefix: str) -> dict[str, Any]:
    return {f"{prefix}{name}": value for name, value in values.items()} if prefix else values


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


# PostgreSQL's record statement names the lineage row's parameters `lineage_<column>`, the billing row's
# `billing_<column>`, the audit rows' `audit_<n>_<column>`: apart from every column, since SQLAlchemy would take a
# parameter named like a column of a table the statement writes as one more value to write into it.
LINEAGE_PREFIX = "lineage_"


@functools.cache
def _record_statement(
    *,
    completing: bool,
    billing_columns: tuple[str, ...] | None,
    adjusting_executions: bool | None,
    audit_columns: tuple[str, ...],
    audit_count: int,
) -> sa.Select[Any]:
    """PostgreSQL's record in one statement, built once per shape; it returns the lineage row's id when written.

    `completing`: the invocation reserved, so its pending row is completed, or the whole row inserted when
    there is none (a journal file from before pending rows); a row found already settled writes nothing.
    Without a reservation the row is inserted whole (a duplicate fails as a duplicate). The billing row, the
    counters' move (None: none) and the audit rows are written only once the lineage row was: each selects its
    values from `written`, and the counters are locked only after it (a concurrent record of the same
    invocation waits on the lineage row, never holding the counters).
    """
    values = _lineage_values(LINEAGE_PREFIX)
    whole_row = sa.select(*values.values())
    if completing:
        completed = _completion(LINEAGE_PREFIX, erasure_cte=True).cte("completed")
        elsewhere = sa.select(lineage.c.id).where(lineage.c.id == values["id"])
        absent = sa.and_(~sa.exists(sa.select(completed.c.id)), ~sa.exists(elsewhere))
        inserted = (
            lineage.insert().from_select(list(values), whole_row.where(absent)).returning(lineage.c.id).cte("inserted")
        )
        written = sa.union_all(sa.select(completed.c.id), sa.select(inserted.c.id)).cte("written")
    else:
        written = lineage.insert().from_select(list(values), whole_row).returning(lineage.c.id).cte("written")
    writes: list[sa.CTE] = []
    if billing_columns is not None:
        billed = sa.select(*_bound(billing, billing_columns, "billing_")).select_from(written)
        writes.append(billing.insert().from_select(list(billing_columns), billed).cte("billed"))
    if adjusting_executions is not None:
        only_if = sa.exists(sa.select(written.c.id))
        adjusted = adjust_statement("postgresql", executions=adjusting_executions, only_if=only_if)
        writes.append(adjusted.cte("adjusted"))
    if audit_count:
        rows = [
            sa.select(*_bound(audit_log, audit_columns, f"audit_{index}_")).select_from(written)
            for index in range(audit_count)
        ]
        audited = rows[0] if audit_count == 1 else sa.union_all(*rows)
        writes.append(audit_log.insert().from_select(list(audit_columns), audited).cte("audited"))
    return sa.select(written.c.id).add_cte(*writes)


def _bound(table: sa.Table, columns: tuple[str, ...], prefix: str) -> list[sa.BindParameter[Any]]:
    return [sa.bindparam(f"{prefix}{name}", type_=table.c[name].type) for name in columns]


async def _record_in_one_statement(engine: AsyncEngine, record: InvocationRecord) -> bool:
    row = {**LATER_LINEAGE_COLUMNS, **record.lineage_row}
    params = _prefixed(row, LINEAGE_PREFIX)
    adjustment: Adjustment | None = None
    if record.reservation is not None:
        params.update(_completion_params(row, LINEAGE_PREFIX))
        adjustment = settlement(record.reservation, actual_micros=record.actual_micros)
        if adjustment is not None:
            params.update(adjustment.params())
    if record.billing_row is not None:
        params.update(_prefixed(record.billing_row, "billing_"))
    for index, audit in enumerate(record.audit_rows):
        params.update(_prefixed(audit, f"audit_{index}_"))
    statement = _record_statement(
        completing=record.reservation is not None,
        billing_columns=tuple(record.billing_row) if record.billing_row is not None else None,
        adjusting_executions=adjustment.executions != 0 if adjustment is not None else None,
        audit_columns=tuple(record.audit_rows[0]) if record.audit_rows else (),
        audit_count=len(record.audit_rows),
    )
    # One statement is its own transaction: no BEGIN and COMMIT round trips.
    async with autocommit(engine).connect() as connection:
        return (await connection.execute(statement, params)).first() is not None


async def _record_in_a_transaction(engine: AsyncEngine, record: InvocationRecord) -> bool:
    async with engine.begin() as connection:
        if not await _write_lineage(connection, record):
            return False
        if record.billing_row is not None:
            await connection.execute(BILLING_INSERT, record.billing_row)
        if record.reservation is not None:
            await adjust(connection, settlement(record.reservation, actual_micros=record.actual_micros))
        await insert_audit_rows(connection, record.audit_rows)
    return True


async def _record_once(engine: AsyncEngine, record: InvocationRecord) -> bool:
    """Write the record; False when its row was settled already (by a sweeper, or an earlier attempt)."""
    if engine.dialect.name == "postgresql":
        written = await _record_in_one_statement(engine, record)
    else:
        written = await _record_in_a_transaction(engine, record)
    if not written:
        logger.warning("invocation.already_settled invocation_id=%s", record.invocation_id)
    return written


async def _write_lineage(connection: AsyncConnection, record: InvocationRecord) -> bool:
    """Complete the pending row, or insert the whole row; False when the row exists and is no longer pending."""
    row = record.lineage_row
    if record.reservation is not None:
        completed = await connection.execute(LINEAGE_COMPLETION, _completion_params(row))
        if completed.first() is not None:
            return True
        # No pending row: settled already, or reserved without one (a journal file from before pending rows).
        found = await connection.execute(LINEAGE_FOUND, {"invocation_id": row["id"]})
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
