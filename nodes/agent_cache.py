"""Recently invoked agents held in memory, so an invocation of a known agent costs no database query for it.

Entries are keyed by agent id and served only to the agent's own organisation; only agents that were found are
kept. Each change is announced by stores/agents.py with a NOTIFY in the changing transaction; how that keeps every
instance exact, and when the cache is bypassed, is told in stores/notified_cache.py.
"""

from __future__ import annotations

from typing import Any, NamedTuple

from sqlalchemy.ext.asyncio import AsyncEngine

from external_agents.nodes.invocation_state import AgentSnapshot
from external_agents.stores.agents import CHANGES_CHANNEL, get_agent
from external_agents.stores.notified_cache import NotifiedCache

# How the listening connection is named in pg_stat_activity.
LISTENER_APPLICATION_NAME = "external-agents-agent-listener"


class OwnedAgent(NamedTuple):
    organization_id: str
    snapshot: AgentSnapshot


class AgentCache(NotifiedCache[OwnedAgent]):
    def __init__(self, engine: AsyncEngine, **options: Any) -> None:
        super().__init__(
            engine, channel=CHANGES_CHANNEL, application_name=LISTENER_APPLICATION_NAME, name="agent_cache", **options
        )

    async def snapshot(self, *, organization_id: str, agent_id: str) -> AgentSnapshot | None:
        """The organisation's agent `agent_id`, or None; from memory when it is there and may be served."""

        async def read() -> OwnedAgent | None:
            row = await get_agent(self._engine, organization_id=organization_id, agent_id=agent_id)
            return None if row is None else OwnedAgent(organization_id, AgentSnapshot.from_row(row))

        found = await self._cached(agent_id, read, serves=lambda owned: owned.organization_id == organization_id)
        return None if found is None else found.snapshot
