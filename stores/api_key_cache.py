"""The callers of recently used API keys, held in memory, so a request with a known key costs no database query.

Entries are keyed by the key's SHA-256 (the key itself is never held) and only keys that authenticated are kept:
an unknown or revoked key is looked up every time. Each change is announced by stores/api_keys.py with a NOTIFY in
the changing transaction; how that keeps every instance exact, and when the cache is bypassed, is told in
stores/notified_cache.py.
"""

from __future__ import annotations

from typing import Any

from sqlalchemy.ext.asyncio import AsyncEngine

from external_agents.stores.api_keys import CHANGES_CHANNEL, Caller, caller_by_hash, hash_key, tell_of_changes
from external_agents.stores.notified_cache import NotifiedCache

# How the listening connection is named in pg_stat_activity.
LISTENER_APPLICATION_NAME = "external-agents-key-listener"


class ApiKeyCache(NotifiedCache[Caller]):
    def __init__(self, engine: AsyncEngine, **options: Any) -> None:
        super().__init__(
            engine, channel=CHANGES_CHANNEL, application_name=LISTENER_APPLICATION_NAME, name="api_key_cache", **options
        )
        # A change this process commits is dropped at once, without waiting for its notice to come back.
        tell_of_changes(self)

    async def caller(self, key: str) -> Caller | None:
        """The caller of the active key `key`, or None; from memory when it is there and may be served."""
        key_hash = hash_key(key)
        return await self._cached(key_hash, lambda: caller_by_hash(self._engine, key_hash))
