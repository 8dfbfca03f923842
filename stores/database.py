"""The async SQLAlchemy engine over PostgreSQL (asyncpg) or the embedded SQLite file (aiosqlite)."""

from __future__ import annotations

import functools
import json
import socket
import sqlite3
from collections.abc import Iterator
from typing import Any, Literal

import asyncpg
import sqlalchemy as sa
from sqlalchemy.exc import DataError, DBAPIError, IntegrityError, ProgrammingError
from sqlalchemy.exc import TimeoutError as PoolTimeoutError
from sqlalchemy.ext.asyncio import AsyncEngine, create_async_engine

from external_agents.settings import Settings

DATABASE_UNAVAILABLE = "Service unavailable: the database cannot be reached; retry shortly"
DATABASE_NOT_MIGRATED = "Service unavailable: the database is not migrated; run `external-agents migrate`"
# SQLSTATEs of a statement naming a table or column the database lacks (PostgreSQL's undefined_table and
# undefined_column), as asyncpg (`sqlstate`) and psycopg2 (`pgcode`) report them.
_UNDEFINED_OBJECT_STATES = frozenset({"42P01", "42703"})


def _json_dumps(value: Any) -> str:
    # Compact and unescaped: the value reads back exactly, and JSON text stays small.
    return json.dumps(value, ensure_ascii=False, separators=(",", ":"))


def create_engine(settings: Settings) -> AsyncEngine:
    if settings.is_sqlite:
        settings.sqlite_path.parent.mkdir(parents=True, exist_ok=True)
        engine = create_async_engine(
            settings.async_database_url,
            json_serializer=_json_dumps,
            connect_args={"timeout": 30},
        )

        @sa.event.listens_for(engine.sync_engine, "connect")
        def _sqlite_pragmas(dbapi_connection: Any, _record: Any) -> None:
            # WAL lets readers proceed while one writer commits; the busy timeout queues writers instead of
            # failing them with "database is locked".
            cursor = dbapi_connection.cursor()
            cursor.execute("PRAGMA journal_mode=WAL")
            cursor.execute("PRAGMA busy_timeout=30000")
            cursor.execute("PRAGMA synchronous=NORMAL")
            cursor.close()

        return engine
    # A fixed pool: overflow connections are closed when returned, and a new asyncpg connection costs several
    # round trips (SQLAlchemy registers its JSON codecs on each), so under load waiting for a pooled one is faster.
    return create_async_engine(
        settings.async_database_url,
        json_serializer=_json_dumps,
        pool_size=settings.database_pool_size,
        max_overflow=0,
        pool_timeout=10,
        pool_pre_ping=False,
        connect_args={"command_timeout": 30, "server_settings": {"application_name": "external-agents"}},
    )


@functools.cache
def autocommit(engine: AsyncEngine) -> AsyncEngine:
    """The same pool, each statement its own transaction: for single reads and single atomic writes.

    SQLAlchemy otherwise wraps every statement in BEGIN ... COMMIT/ROLLBACK, two extra round trips.
    """
    return engine.execution_options(isolation_level="AUTOCOMMIT")


async def ping(engine: AsyncEngine) -> None:
    async with autocommit(engine).connect() as connection:
        await connection.execute(sa.text("SELECT 1"))


DatabaseErrorKind = Literal["unavailable", "refused"]

# The database (or its driver, before sending) refused these values: the same statement fails again, so it is
# never retried or journalled as it is (stores/invocations.py stores a normalised record instead).
_REFUSED: tuple[type[BaseException], ...] = (
    IntegrityError,
    DataError,
    ProgrammingError,
    # asyncpg's client-side refusal of a value (an integer out of range...); it is also an InterfaceError.
    asyncpg.exceptions.DataError,
    # Raised while encoding parameters: a lone surrogate, an integer too large for the column or for SQLite.
    UnicodeError,
    OverflowError,
)
# SQLSTATE classes of a refused statement: 22 data exception (NaN in jsonb, U+0000 in text), 23 integrity
# constraint violation, 42 syntax error or access rule violation, 54 program limit exceeded.
_REFUSED_SQLSTATE_CLASSES = ("22", "23", "42", "54")
# SQLite's primary result codes of the same kind: SQLITE_ERROR (no such table or column, SQL error), TOOBIG,
# CONSTRAINT, MISMATCH, RANGE. Its others (BUSY, LOCKED, IOERR, FULL, CANTOPEN) are the file's state.
_REFUSED_SQLITE_CODES = frozenset({1, 18, 19, 20, 25})
# Raised when PostgreSQL refuses, drops or cannot yet take connections (asyncpg's own types, or OS socket
# errors from connecting), whichever layer wrapped them.
_UNREACHABLE: tuple[type[BaseException], ...] = (
    asyncpg.exceptions.PostgresConnectionError,
    asyncpg.exceptions.OperatorInterventionError,
    asyncpg.exceptions.TooManyConnectionsError,
    asyncpg.exceptions.InterfaceError,
    ConnectionError,
    TimeoutError,
    socket.gaierror,
    PoolTimeoutError,
)


def _refused(exc: BaseException) -> bool:
    if isinstance(exc, _REFUSED):
        return True
    if isinstance(exc, sqlite3.Error):
        return (getattr(exc, "sqlite_errorcode", 0) & 0xFF) in _REFUSED_SQLITE_CODES
    sqlstate = getattr(exc, "sqlstate", None)
    return isinstance(exc, asyncpg.exceptions.PostgresError) and str(sqlstate)[:2] in _REFUSED_SQLSTATE_CLASSES


def database_error_kind(exc: BaseException) -> DatabaseErrorKind | None:
    """What a failed database operation means, the one classification every layer uses (database_fault
    below turns it into the 503 a channel answers).

    "unavailable": the database could not be reached or could not answer now (connection refused or lost,
    server starting or shutting down, pool exhausted, SQLite busy); another attempt later may succeed, so a
    record is retried and then journalled, and a request gets a 503. "refused": the database answered and will
    not take these values, whenever asked; retrying it is pointless and journalling it would only defer the
    refusal. None: not a database fault.
    """
    chain = list(causes(exc))
    if any(_refused(current) for current in chain):
        return "refused"
    for current in chain:
        if isinstance(current, _UNREACHABLE):
            return "unavailable"
        if isinstance(current, DBAPIError):
            # Any other driver error (SQLite locked, a read-only standby after failover) is the database's state,
            # not the statement's.
            return "unavailable"
    return None


def database_unavailable(exc: BaseException) -> bool:
    """A fault another attempt may get past (connection lost or refused, server starting up, pool exhausted),
    as opposed to a statement the database refuses, which would fail the same way again (database_error_kind)."""
    return database_error_kind(exc) == "unavailable" or (isinstance(exc, OSError) and not _refused(exc))


def database_refused(exc: BaseException) -> bool:
    return database_error_kind(exc) == "refused"


def causes(exc: BaseException) -> Iterator[BaseException]:
    """`exc` and every exception it was raised from or while handling, outermost first."""
    seen: set[int] = set()
    current: BaseException | None = exc
    while current is not None and id(current) not in seen:
        seen.add(id(current))
        yield current
        current = current.__cause__ or current.__context__


def schema_missing(exc: BaseException) -> bool:
    """A statement named a table or column the database does not have: it is not migrated (or only partly)."""
    if isinstance(exc, sqlite3.OperationalError):
        return str(exc).startswith(("no such table", "no such column"))
    state = getattr(exc, "sqlstate", None) or getattr(exc, "pgcode", None)
    return state in _UNDEFINED_OBJECT_STATES


def database_fault(exc: BaseException) -> str | None:
    """The 503 detail when `exc`, or anything it was raised from, says the database cannot serve now (unreachable,
    or not migrated); None for any other fault."""
    chain = list(causes(exc))
    if any(schema_missing(cause) for cause in chain):
        return DATABASE_NOT_MIGRATED
    if any(database_unavailable(cause) for cause in chain):
        return DATABASE_UNAVAILABLE
    return None
