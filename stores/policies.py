"""Reads and writes of `policies`, scoped to one organisation."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

import sqlalchemy as sa
from sqlalchemy.ext.asyncio import AsyncEngine

from external_agents.models import TABLES
from external_agents.stores.database import autocommit

policies = TABLES["policies"]


async def list_policies(
    engine: AsyncEngine, *, organization_id: str, external_agent_id: str | None = None
) -> list[dict[str, Any]]:
    query = sa.select(policies).where(policies.c.organization_id == organization_id)
    if external_agent_id is not None:
        query = query.where(
            sa.or_(policies.c.external_agent_id.is_(None), policies.c.external_agent_id == external_agent_id)
        )
    query = query.order_by(policies.c.priority.desc(), policies.c.created_at, policies.c.id)
    async with autocommit(engine).connect() as connection:
        return [dict(r._mapping) for r in (await connection.execute(query)).all()]


async def get_policy(engine: AsyncEngine, *, organization_id: str, policy_id: str) -> dict[str, Any] | None:
    async with autocommit(engine).connect() as connection:
        row = (
            await connection.execute(
                sa.select(policies).where(policies.c.id == policy_id, policies.c.organization_id == organization_id)
            )
        ).first()
    return dict(row._mapping) if row else None


async def insert_policy(engine: AsyncEngine, row: dict[str, Any]) -> dict[str, Any]:
    async with engine.begin() as connection:
        return dict((await connection.execute(policies.insert().values(**row).returning(*policies.c))).one()._mapping)


async def update_policy(
    engine: AsyncEngine, *, organization_id: str, policy_id: str, values: dict[str, Any]
) -> dict[str, Any] | None:
    async with engine.begin() as connection:
        row = (
            await connection.execute(
                policies.update()
                .where(policies.c.id == policy_id, policies.c.organization_id == organization_id)
                .values(**values, updated_at=datetime.now(UTC))
                .returning(*policies.c)
            )
        ).first()
    return dict(row._mapping) if row else None


async def delete_policy(engine: AsyncEngine, *, organization_id: str, policy_id: str) -> bool:
    async with engine.begin() as connection:
        result = await connection.execute(
            policies.delete().where(policies.c.id == policy_id, policies.c.organization_id == organization_id)
        )
    return result.rowcount == 1
