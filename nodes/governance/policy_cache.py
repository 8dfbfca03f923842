"""Each organisation's compiled policies, held in memory and dropped on every instance when one changes.

A change drops the local entry at once and publishes the organisation on a Redis channel that every
instance listens to. Entries also expire after a few seconds, so an instance that missed a message (Redis
was down) still sees the change soon; with no Redis (the embedded default) there is one instance only.
"""

from __future__ import annotations

import asyncio
import logging
import time

from redis.asyncio import Redis
from sqlalchemy.ext.asyncio import AsyncEngine

from external_agents.nodes.governance.policy_engine import Policy
from external_agents.stores.policies import list_policies

logger = logging.getLogger(__name__)

CHANNEL = "ea:policies:changed"


class PolicyCache:
    def __init__(self, engine: AsyncEngine, *, redis: Redis | None, ttl_seconds: float = 5.0) -> None:
        self._engine = engine
        self._redis = redis
        self._ttl = ttl_seconds
        self._entries: dict[str, tuple[float, tuple[Policy, ...]]] = {}

    async def policies_for(self, organization_id: str) -> tuple[Policy, ...]:
        entry = self._entries.get(organization_id)
        if entry is not None and time.monotonic() - entry[0] < self._ttl:
            return entry[1]
        rows = await list_policies(self._engine, organization_id=organization_id)
        compiled = tuple(Policy.from_row(r) for r in rows)
        self._entries[organization_id] = (time.monotonic(), compiled)
        return compiled

    async def invalidate(self, organization_id: str) -> None:
        self._entries.pop(organization_id, None)
        if self._redis is None:
            return
        try:
            await self._redis.publish(CHANNEL, organization_id)
        except Exception as exc:
            # Other instances fall back to the entry lifetime; the change itself is already stored.
            logger.warning("policy_cache.publish_failed error=%s", type(exc).__name__)

    async def listen(self) -> None:
        """Drop entries that other instances announce; reconnects until cancelled."""
        if self._redis is None:
            return
        while True:
            try:
                async with self._redis.pubsub() as pubsub:
                    await pubsub.subscribe(CHANNEL)
                    # Anything cached before the subscription took effect may have missed a message.
                    self._entries.clear()
                    async for message in pubsub.listen():
                        if message.get("type") == "message":
                            data = message["data"]
                            self._entries.pop(data.decode() if isinstance(data, bytes) else str(data), None)
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                logger.warning("policy_cache.listen_failed error=%s", type(exc).__name__)
                self._entries.clear()
                await asyncio.sleep(0.5)
