"""API keys: issued once in plaintext, stored as SHA-256 hashes, looked up by hash.

A key is 32 random bytes, so an unsalted SHA-256 is as strong as a slow hash here and lets the lookup use an
index; the stored and presented hashes are still compared in constant time.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
import uuid
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import sqlalchemy as sa
from sqlalchemy.ext.asyncio import AsyncEngine

from external_agents.models import TABLES
from external_agents.stores.database import autocommit

api_keys = TABLES["api_keys"]

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
    presented = hash_key(key)
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
    async with engine.begin() as connection:
        result = await connection.execute(
            api_keys.update()
            .where(api_keys.c.id == key_id, api_keys.c.revoked_at.is_(None))
            .values(revoked_at=datetime.now(UTC))
        )
    return result.rowcount == 1


async def has_any_key(engine: AsyncEngine) -> bool:
    async with autocommit(engine).connect() as connection:
        return (await connection.execute(sa.select(api_keys.c.id).limit(1))).first() is not None


async def key_exists(engine: AsyncEngine, key: str) -> bool:
    async with autocommit(engine).connect() as connection:
        result = await connection.execute(sa.select(api_keys.c.id).where(api_keys.c.key_hash == hash_key(key)))
        return result.first() is not None
