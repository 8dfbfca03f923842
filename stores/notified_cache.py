"""Rows read on every request, held in memory and dropped on every instance the moment they change.

The base of the API-key cache (stores/api_key_cache.py) and the agent cache (nodes/agent_cache.py). Entries are
keyed by text and only values that were found are kept, so asking for unknown keys neither grows the cache nor
evicts anything. The cache holds at most `max_entries` values, the least recently used leaving first.

The store announces each change with a PostgreSQL NOTIFY on `channel`, inside the changing transaction, whose
payload is the key; each instance LISTENs on a connection of its own. Unlike the policy cache's Redis message,
published after the change commits, the notice cannot be lost while the change stands, and the CLI, which writes
with the database alone, sends it too.

While that connection is not listening (starting, dropped, PostgreSQL restarting), a notice may be missed, so the
cache is emptied and bypassed: every value is read from the database, as if there were no cache, until it
listens again. A query every `health_seconds` finds a connection that died without closing. Entries also expire
after `max_age_seconds`, which bounds what a change made outside the store (SQL by hand, sending no notice) may
take.

On SQLite nothing is cached: the CLI may write from another process sharing the file, which no notice reaches,
and in that embedded, single-instance mode a read is of a local file, not a round trip.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import OrderedDict
from collections.abc import Awaitable, Callable
from typing import Any, Generic, TypeVar

import sqlalchemy as sa
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine, create_async_engine
from sqlalchemy.pool import NullPool

logger = logging.getLogger(__name__)

Value = TypeVar("Value")


async def notify_change(connection: AsyncConnection, channel: str, key: str) -> None:
    """Announce on `channel` that `key`'s row changed, delivered when `connection`'s transaction commits (and never
    if it rolls back). Nothing on SQLite, where nothing is cached."""
    if connection.dialect.name == "postgresql":
        await connection.execute(sa.select(sa.func.pg_notify(channel, key)))


class NotifiedCache(Generic[Value]):
    """`channel`: the NOTIFY channel its store announces changes on; `application_name` names the listening
    connection in pg_stat_activity; `name` its log lines."""

    def __init__(
        self,
        engine: AsyncEngine,
        *,
        channel: str,
        application_name: str,
        name: str,
        max_entries: int = 10_000,
        max_age_seconds: float = 10.0,
        health_seconds: float = 2.0,
        reconnect_seconds: float = 0.5,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._engine = engine
        self._channel = channel
        self._application_name = application_name
        self._name = name
        self._max_entries = max_entries
        self._max_age = max_age_seconds
        self._health_seconds = health_seconds
        self._reconnect_seconds = reconnect_seconds
        self._clock = clock
        self._entries: OrderedDict[str, tuple[float, Value]] = OrderedDict()
        self._listening = False
        # Advanced by every drop: a read that began before one may have found the row as it was before the
        # change that caused it, and must not store it.
        self._generation = 0

    @property
    def listening(self) -> bool:
        """Whether entries are served: the connection is listening for changes."""
        return self._listening

    def __len__(self) -> int:
        return len(self._entries)

    async def _cached(
        self,
        key: str,
        read: Callable[[], Awaitable[Value | None]],
        serves: Callable[[Value], bool] = lambda _value: True,
    ) -> Value | None:
        """The value of `key`: from memory when it is there and `serves` this caller, else `read()` (and kept)."""
        now = self._clock()
        # Empty whenever it is not listening (see _stop_serving), so whatever is found may be served.
        entry = self._entries.get(key)
        if entry is not None and now - entry[0] < self._max_age and serves(entry[1]):
            self._entries.move_to_end(key)
            return entry[1]
        generation = self._generation
        value = await read()
        if value is not None and self._listening and generation == self._generation:
            self._entries[key] = (now, value)
            self._entries.move_to_end(key)
            if len(self._entries) > self._max_entries:
                self._entries.popitem(last=False)
        return value

    def drop(self, key: str) -> None:
        """Forget `key`: its row changed, and the change is committed."""
        self._generation += 1
        self._entries.pop(key, None)

    async def listen(self) -> None:
        """Serve entries while listening for changes; reconnect until cancelled. Returns at once on SQLite."""
        if self._engine.dialect.name != "postgresql":
            return
        # A connection outside the application's pool, held for as long as the process runs.
        listener = create_async_engine(
            self._engine.url,
            poolclass=NullPool,
            connect_args={"server_settings": {"application_name": self._application_name}},
        )
        try:
            while True:
                try:
                    await self._listen_once(listener)
                except asyncio.CancelledError:
                    raise
                except Exception as exc:
                    logger.warning("%s.listen_failed error=%s", self._name, type(exc).__name__)
                finally:
                    self._stop_serving()
                await asyncio.sleep(self._reconnect_seconds)
        finally:
            await listener.dispose()

    async def _listen_once(self, listener: AsyncEngine) -> None:
        async with listener.connect() as connection:
            driver = (await connection.get_raw_connection()).driver_connection
            assert driver is not None
            lost = asyncio.Event()

            def on_lost(_connection: Any) -> None:
                self._stop_serving()
                lost.set()

            def on_notice(_connection: Any, _pid: int, _channel: str, key: str) -> None:
                self.drop(key)

            driver.add_termination_listener(on_lost)
            await driver.add_listener(self._channel, on_notice)
            # Anything read before the LISTEN took effect may have missed its notice.
            self._entries.clear()
            self._generation += 1
            self._listening = True
            while not lost.is_set():
                try:
                    await asyncio.wait_for(lost.wait(), self._health_seconds)
                except TimeoutError:
                    await driver.fetchval("SELECT 1", timeout=self._health_seconds)
            raise ConnectionError("the listening connection was closed")

    def _stop_serving(self) -> None:
        self._listening = False
        self._generation += 1
        self._entries.clear()
