"""Recently invoked agents held in memory, so an invocation of a known agent costs no database query for it.

Entries are keyed by agent id and served only to the agent's own organisation; only agents that were found are
kept, so invoking unknown ids neither grows the cache nor evicts anything. The cache holds at most `max_entries`
agents, the least recently used leaving first.

An entry is dropped on every instance as soon as its agent changes: the store announces each change with a
PostgreSQL NOTIFY inside the changing transaction (stores/agents.py), and each instance LISTENs on a connection of
its own. Unlike the policy cache's Redis message, published after the change commits, the notice cannot be lost
while the change stands, and the CLI, which rotates the encryption key with the database alone, sends it too.

While that connection is not listening (starting, dropped, PostgreSQL restarting), a notice may be missed, so the
cache is emptied and bypassed: every agent is read from the database, as if there were no cache, until it listens
again. A query every `health_seconds` finds a connection that died without closing. Entries also expire after
`max_age_seconds`, which bounds what a change made outside the store (SQL by hand, sending no notice) may take.

On SQLite nothing is cached: the CLI may change agents from another process writing the same file, which no
notice reaches, and in that embedded, single-instance mode the read is of a local file, not a round trip.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import OrderedDict
from collections.abc import Callable
from typing import Any, NamedTuple

from sqlalchemy.ext.asyncio import AsyncEngine, create_async_engine
from sqlalchemy.pool import NullPool

from external_agents.nodes.invocation_state import AgentSnapshot
from external_agents.stores.agents import CHANGES_CHANNEL, get_agent

logger = logging.getLogger(__name__)

# How the listening connection is named in pg_stat_activity.
LISTENER_APPLICATION_NAME = "external-agents-agent-listener"


class _Entry(NamedTuple):
    stored_at: float
    organization_id: str
    snapshot: AgentSnapshot


class AgentCache:
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
        self._entries: OrderedDict[str, _Entry] = OrderedDict()
        self._listening = False
        # Advanced by every drop: a read that began before one may have found the agent as it was before the
        # change that caused it, and must not store it.
        self._generation = 0

    @property
    def listening(self) -> bool:
        """Whether entries are served: the connection is listening for changes."""
        return self._listening

    def __len__(self) -> int:
        return len(self._entries)

    async def snapshot(self, *, organization_id: str, agent_id: str) -> AgentSnapshot | None:
        """The organisation's agent `agent_id`, or None; from memory when it is there and may be served."""
        now = self._clock()
        # Empty whenever it is not listening (see _stop_serving), so whatever is found may be served.
        entry = self._entries.get(agent_id)
        if entry is not None and entry.organization_id == organization_id and now - entry.stored_at < self._max_age:
            self._entries.move_to_end(agent_id)
            return entry.snapshot
        generation = self._generation
        row = await get_agent(self._engine, organization_id=organization_id, agent_id=agent_id)
        if row is None:
            return None
        snapshot = AgentSnapshot.from_row(row)
        if self._listening and generation == self._generation:
            self._entries[agent_id] = _Entry(now, organization_id, snapshot)
            self._entries.move_to_end(agent_id)
            if len(self._entries) > self._max_entries:
                self._entries.popitem(last=False)
        return snapshot

    async def listen(self) -> None:
        """Serve entries while listening for agent changes; reconnect until cancelled. Returns at once on SQLite."""
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
                    logger.warning("agent_cache.listen_failed error=%s", type(exc).__name__)
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
            await driver.add_listener(CHANGES_CHANNEL, self._on_change)
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

    def _on_change(self, _connection: Any, _pid: int, _channel: str, agent_id: str) -> None:
        self._generation += 1
        self._entries.pop(agent_id, None)

    def _stop_serving(self) -> None:
        self._listening = False
        self._generation += 1
        self._entries.clear()
