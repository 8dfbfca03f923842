"""The callers of recently used API keys, held in memory, so a request with a known key costs no database query.

Entries are keyed by the key's SHA-256 (the key itself is never held) and only keys that authenticated are kept:
an unknown or revoked key is looked up every time, so guessing keys neither grows the cache nor evicts anything.
The cache holds at most `max_entries` keys, the least recently used leaving first.

An entry is dropped on every instance as soon as its key changes. The store announces each change with a
PostgreSQL NOTIFY inside the changing transaction (stores/api_keys.py), and each instance LISTENs on a connection
of its own. Unlike the policy cache's Redis message, published after the change commits, the notice cannot be
lost while the change stands, and the CLI, which revokes with the database alone, sends it too.

While that connection is not listening (starting, dropped, PostgreSQL restarting), a notice may be missed, so the
cache is emptied and bypassed: every key is looked up, as if there were no cache, until it listens again. A query
every `health_seconds` finds a connection that died without closing. Entries also expire after
`max_age_seconds`, which bounds what a change made outside the store (SQL by hand, sending no notice) may take.

On SQLite nothing is cached: the CLI revokes from another process writing the same file, which no notice reaches,
and in that embedded, single-instance mode the lookup is a read of a local file, not a round trip.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import OrderedDict
from collections.abc import Callable
from typing import Any

from sqlalchemy.ext.asyncio import AsyncEngine, create_async_engine
from sqlalchemy.pool import NullPool

from external_agents.stores.api_keys import CHANGES_CHANNEL, Caller, caller_by_hash, hash_key, tell_of_changes

logger = logging.getLogger(__name__)

# How the listening connection is named in pg_stat_activity.
LISTENER_APPLICATION_NAME = "external-agents-key-listener"


class ApiKeyCache:
    def __init__(
        self,
        engine: AsyncEngine,
        *,
        max_entries: int = 10_000,
        max_age_seconds: float = 10.0,
        health_seconds: float = 2.0,
        reconnect_seconds: float = 0.5,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._engine = engine
        self._max_entries = max_entries
        self._max_age = max_age_seconds
        self._health_seconds = health_seconds
        self._reconnect_seconds = reconnect_seconds
        self._clock = clock
        self._entries: OrderedDict[str, tuple[float, Caller]] = OrderedDict()
        self._listening = False
        # Advanced by every drop: a lookup that began before one may have read the row as it was before the
        # change that caused it, and must not store its answer.
        self._generation = 0
        # A change this process commits is dropped at once, without waiting for its notice to come back.
        tell_of_changes(self)

    @property
    def listening(self) -> bool:
        """Whether entries are served: the connection is listening for changes."""
        return self._listening

    def __len__(self) -> int:
        return len(self._entries)

    async def caller(self, key: str) -> Caller | None:
        """The caller of the active key `key`, or None; from memory when it is there and may be served."""
        key_hash = hash_key(key)
        now = self._clock()
        # Empty whenever it is not listening (see _stop_serving), so whatever is found may be served.
        entry = self._entries.get(key_hash)
        if entry is not None and now - entry[0] < self._max_age:
            self._entries.move_to_end(key_hash)
            return entry[1]
        generation = self._generation
        caller = await caller_by_hash(self._engine, key_hash)
        if caller is not None and self._listening and generation == self._generation:
            self._entries[key_hash] = (now, caller)
            self._entries.move_to_end(key_hash)
            if len(self._entries) > self._max_entries:
                self._entries.popitem(last=False)
        return caller

    async def listen(self) -> None:
        """Serve entries while listening for key changes; reconnect until cancelled. Returns at once on SQLite."""
        if self._engine.dialect.name != "postgresql":
            return
        # A connection outside the application's pool, held for as long as the process runs.
        listener = create_async_engine(
            self._engine.url,
            poolclass=NullPool,
            connect_args={"server_settings": {"application_name": LISTENER_APPLICATION_NAME}},
        )
        try:
            while True:
                try:
                    await self._listen_once(listener)
                except asyncio.CancelledError:
                    raise
                except Exception as exc:
                    logger.warning("api_key_cache.listen_failed error=%s", type(exc).__name__)
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

            driver.add_termination_listener(on_lost)
            await driver.add_listener(CHANGES_CHANNEL, self._on_notice)
            # Anything looked up before the LISTEN took effect may have missed its notice.
            self._entries.clear()
            self._generation += 1
            self._listening = True
            while not lost.is_set():
                try:
                    await asyncio.wait_for(lost.wait(), self._health_seconds)
                except TimeoutError:
                    await driver.fetchval("SELECT 1", timeout=self._health_seconds)
            raise ConnectionError("the listening connection was closed")

    def _on_notice(self, _connection: Any, _pid: int, _channel: str, key_hash: str) -> None:
        self.key_changed(key_hash)

    def key_changed(self, key_hash: str) -> None:
        """Drop the key: it was revoked (or otherwise changed) and committed."""
        self._generation += 1
        self._entries.pop(key_hash, None)

    def _stop_serving(self) -> None:
        self._listening = False
        self._generation += 1
        self._entries.clear()
