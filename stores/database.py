"""The async SQLAlchemy engine over PostgreSQL (asyncpg) or the embedded SQLite file (aiosqlite)."""

from __future__ import annotations

import functools
import json
import sqlite3
from collections.abc import Iterator
from typing import Any

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


def database_unavailable(exc: BaseException) -> bool:
    """A fault another attempt may get past (connection lost or refused, server starting up, pool exhausted),
    as opposed to a statement the database refuses, which would fail the same way again."""
    if isinstance(exc, IntegrityError | DataError | ProgrammingError):
        return False
    return isinstance(exc, DBAPIError | PoolTimeoutError | OSError)


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
