"""What the tests of the two `NotifiedCache`s (the API-key cache and the agent cache) share: a migrated PostgreSQL
database with two engines on it (a gateway's and another writer's), a cache listening for a block, and polling
with a bound for what a notice does asynchronously, and the reads of the cached table a block sends."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Callable, Iterator
from contextlib import asynccontextmanager, contextmanager
from typing import Any

import sqlalchemy as sa
from sqlalchemy.engine import URL
from sqlalchemy.ext.asyncio import AsyncEngine

from external_agents.models.migrate import upgrade
from external_agents.stores.database import create_engine
from external_agents.stores.notified_cache import NotifiedCache
from tests.factories import drop_database, make_settings, reset_postgres_database

# How long a committed change may take to reach a listening cache on this machine (measured: milliseconds).
NOTICE_BOUND_SECONDS = 2.0


@asynccontextmanager
async def two_engines(database: URL, data_dir: str) -> AsyncIterator[tuple[AsyncEngine, AsyncEngine]]:
    """`database` made afresh and migrated, with two engines on it; dropped afterwards."""
    url = database.render_as_string(hide_password=False)
    reset_postgres_database(url)
    settings = make_settings(url, data_dir)
    upgrade(settings, report=lambda _line: None)
    first, second = create_engine(settings), create_engine(settings)
    try:
        yield first, second
    finally:
        await first.dispose()
        await second.dispose()
        drop_database(url)


async def until(condition: Callable[[], bool], what: str, bound: float = NOTICE_BOUND_SECONDS) -> float:
    """Seconds until `condition` holds, polled; fails past `bound`."""
    started = time.monotonic()
    while not condition():
        assert time.monotonic() - started < bound, f"waited {bound} s for {what}"
        await asyncio.sleep(0.005)
    return time.monotonic() - started


@asynccontextmanager
async def listening(cache: NotifiedCache[Any], *, bound: float) -> AsyncIterator[asyncio.Task[None]]:
    """`cache` listening for the block (at most `bound` seconds to connect); its task, cancelled after."""
    task = asyncio.create_task(cache.listen())
    try:
        await until(lambda: cache.listening, "the cache to listen", bound)
        yield task
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)


@contextmanager
def reads_of(table: str, engine: AsyncEngine) -> Iterator[list[str]]:
    """The statements `engine` sends that read `table`, while the block runs."""
    seen: list[str] = []

    def record(_conn: Any, _cursor: Any, statement: str, *_args: Any) -> None:
        if f"FROM {table}" in statement:
            seen.append(statement)

    sa.event.listen(engine.sync_engine, "before_cursor_execute", record)
    try:
        yield seen
    finally:
        sa.event.remove(engine.sync_engine, "before_cursor_execute", record)
