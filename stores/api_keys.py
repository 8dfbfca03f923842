"""API keys: issued once in plaintext, stored as SHA-256 hashes, looked up by hash.

A key is 32 random bytes, so an unsalted SHA-256 is as strong as a slow hash here and lets the lookup use an
index; the stored and presented hashes are still compared in constant time.

A change that can end a key's use is announced, on PostgreSQL, by a NOTIFY on `CHANGES_CHANNEL` with the key's
hash, sent in the changing transaction itself: PostgreSQL delivers it exactly when the change commits, whichever
process commits it (a gateway instance or the CLI), and never for a change rolled back. Every instance's key
cache (stores/api_key_cache.py) listens and drops the entry; the caches of the process that commits the change
are also told directly, right after the commit, so a request that follows the change there never races its notice.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
import uuid
import weakref
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, Protocol

import sqlalchemy as sa
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from external_agents.models import TABLES
from external_agents.stores.database import autocommit
from external_agents.stores.notified_cache import notify_change

api_keys = TABLES["api_keys"]

# The PostgreSQL NOTIFY channel of key changes; each message is the changed key's hash.
CHANGES_CHANNEL = "external_agents_api_key_changed"


class KeyChangeListener(Protocol):
    def drop(self, key_hash: str) -> None: ...


# This process's key caches, told of each change it commits as soon as it commits.
_local_listeners: weakref.WeakSet[KeyChangeListener] = weakref.WeakSet()


def tell_of_changes(listener: KeyChangeListener) -> None:
    """Have `listener` told of every key change this process commits, for as long as it exists."""
    _local_listeners.add(listener)


KEY_PREFIX = "eak_"
PERMISSIONS = (
    "create:external_agent",
    "read:external_agent",
    "update:external_agent",
    "delete:external_agent",
    "invoke:external_agent",
    "manage:policy",
    "read:lineage",
    "erase:lineage",
    "read:metrics",
    "admin",
)


@dataclass(frozen=True)
class Caller:
    """Who is calling: the key's id, its organisation and what it may do."""

    api_key_id: str
    organization_id: str
    permissions: frozenset[str]

    def can(self, permission: str) -> bool:
        return "admin" in self.permissions or permission in self.permissions


def hash_key(key: str) -> str:
    return hashlib.sha256(key.encode()).hexdigest()


def generate_key() -> str:
    return KEY_PREFIX + secrets.token_urlsafe(32)


async def create_api_key(
    engine: AsyncEngine,
    *,
    organization_id: str,
    name: str,
    permissions: list[str],
    created_by: str | None = None,
    key: str | None = None,
) -> tuple[dict[str, Any], str]:
    """Store a new key (or the given one) and return its row and the plaintext, which is never stored."""
    key = key or generate_key()
    row = {
        "id": str(uuid.uuid4()),
        "organization_id": organization_id,
        "name": name,
        "key_hash": hash_key(key),
        "key_prefix": key[:12],
        "permissions": sorted(set(permissions)),
        "created_by": created_by,
    }
    async with engine.begin() as connection:
        result = await connection.execute(api_keys.insert().values(**row).returning(*api_keys.c))
        return dict(result.one()._mapping), key


async def authenticate(engine: AsyncEngine, key: str) -> Caller | None:
    return await caller_by_hash(engine, hash_key(key))


async def caller_by_hash(engine: AsyncEngine, presented: str) -> Caller | None:
    """The caller of the active key whose hash is `presented`, or None."""
    async with autocommit(engine).connect() as connection:
        result = await connection.execute(
            sa.select(api_keys.c.id, api_keys.c.organization_id, api_keys.c.permissions, api_keys.c.key_hash).where(
                api_keys.c.key_hash == presented, api_keys.c.revoked_at.is_(None)
            )
        )
        row = result.first()
    if row is None or not hmac.compare_digest(row.key_hash, presented):
        return None
    return Caller(api_key_id=row.id, organization_id=row.organization_id, permissions=frozenset(row.permissions))


async def list_api_keys(engine: AsyncEngine, *, organization_id: str | None = None) -> list[dict[str, Any]]:
    query = sa.select(api_keys).order_by(api_keys.c.created_at)
    if organization_id:
        query = query.where(api_keys.c.organization_id == organization_id)
    async with autocommit(engine).connect() as connection:
        return [dict(r._mapping) for r in (await connection.execute(query)).all()]


async def revoke_api_key(engine: AsyncEngine, *, key_id: str) -> bool:
    """Revoke the key. Its notice commits with it, so when this returns every listening instance has been sent it."""
    async with engine.begin() as connection:
        revoked = (
            await connection.execute(
                api_keys.update()
                .where(api_keys.c.id == key_id, api_keys.c.revoked_at.is_(None))
                .values(revoked_at=datetime.now(UTC))
                .returning(api_keys.c.key_hash)
            )
        ).scalar_one_or_none()
        if revoked is None:
            return False
        await announce_change(connection, revoked)
    for listener in list(_local_listeners):
        listener.drop(revoked)
    return True


async def announce_change(connection: AsyncConnection, key_hash: str) -> None:
    """Tell every instance's key cache, when `connection`'s transaction commits, that the key changed: to be
    called in the transaction of any statement that revokes a key, deletes it or changes its permissions."""
    await notify_change(connection, CHANGES_CHANNEL, key_hash)


async def has_any_key(engine: AsyncEngine) -> bool:
    async with autocommit(engine).connect() as connection:
        return (await connection.execute(sa.select(api_keys.c.id).limit(1))).first() is not None


async def key_exists(engine: AsyncEngine, key: str) -> bool:
    async with autocommit(engine).connect() as connection:
        result = await connection.execute(sa.select(api_keys.c.id).where(api_keys.c.key_hash == hash_key(key)))
        return result.first() is not None
