"""Append-only writes and reads of `audit_log`."""

from __future__ import annotations

import uuid
from typing import Any

from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from external_agents.models import TABLES

audit_log = TABLES["audit_log"]
AUDIT_INSERT = audit_log.insert()


def audit_row(
    *,
    event_type: str,
    organization_id: str,
    actor_id: str | None,
    resource_type: str | None,
    resource_id: str | None,
    details: dict[str, Any] | None,
) -> dict[str, Any]:
    return {
        "id": str(uuid.uuid4()),
        "event_type": event_type,
        "organization_id": organization_id,
        "actor_id": actor_id,
        "resource_type": resource_type,
        "resource_id": resource_id,
        "details": details or {},
    }


async def insert_audit_rows(target: AsyncEngine | AsyncConnection, rows: list[dict[str, Any]]) -> None:
    """Write audit rows, in their own transaction or inside the caller's."""
    if not rows:
        return
    if isinstance(target, AsyncConnection):
        await target.execute(AUDIT_INSERT, rows)
        return
    async with target.begin() as connection:
        await connection.execute(AUDIT_INSERT, rows)
