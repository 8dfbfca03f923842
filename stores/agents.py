"""Reads and writes of `external_agents` and each agent's `external_agent_limits` row, scoped to one organisation.

An agent is read as one row: its `external_agents` columns plus its execution limits (None without a row).

Every change to a stored agent or its limits is announced, on PostgreSQL, by a NOTIFY on `CHANGES_CHANNEL` with
the agent's id, sent in the changing transaction itself: PostgreSQL delivers it exactly when the change commits,
whichever process commits it (a gateway instance, or the CLI rotating the encryption key), and never for a change
rolled back. Every instance's agent cache (nodes/agent_cache.py) listens and drops the agent. A new agent needs no
notice: only agents that were found are cached, and a new agent's id was never found.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

import sqlalchemy as sa
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from external_agents.errors import ConflictError
from external_agents.models import TABLES
from external_agents.stores.database import autocommit
from external_agents.stores.notified_cache import notify_change

agents = TABLES["external_agents"]
limits = TABLES["external_agent_limits"]
counters = TABLES["budget_counters"]

# The PostgreSQL NOTIFY channel of agent changes; each message is the changed agent's id.
CHANGES_CHANNEL = "external_agents_agent_changed"

# Every column of the limits table but its key and time stamp is a limit of the agent's (see agent_fields.py).
LIMIT_COLUMNS = tuple(c.name for c in limits.c if c.name not in ("external_agent_id", "updated_at"))
_AGENT_COLUMNS = (*agents.c, *(limits.c[name] for name in LIMIT_COLUMNS))
_AGENTS_WITH_LIMITS = agents.outerjoin(limits, limits.c.external_agent_id == agents.c.id)


def _select_agents(*extra: Any) -> sa.Select[Any]:
    return sa.select(*_AGENT_COLUMNS, *extra).select_from(_AGENTS_WITH_LIMITS)


def _split(values: dict[str, Any]) -> tuple[dict[str, Any], dict[str, Any]]:
    """(external_agents columns, execution limits) of a row or a change."""
    return (
        {k: v for k, v in values.items() if k not in LIMIT_COLUMNS},
        {k: v for k, v in values.items() if k in LIMIT_COLUMNS},
    )


async def _write_limits(connection: AsyncConnection, agent_id: str, values: dict[str, Any]) -> None:
    """Insert the agent's limits row, or change just the given limits of the one it has."""
    dialect = postgresql if connection.dialect.name == "postgresql" else sqlite
    statement = dialect.insert(limits).values(external_agent_id=agent_id, **values)
    await connection.execute(
        statement.on_conflict_do_update(
            index_elements=[limits.c.external_agent_id], set_={**values, "updated_at": sa.func.now()}
        )
    )


async def _announce_change(connection: AsyncConnection, agent_id: str) -> None:
    """Tell every instance's agent cache, when this transaction commits, that the agent changed."""
    await notify_change(connection, CHANGES_CHANNEL, agent_id)


def _duplicate_name(name: str) -> ConflictError:
    return ConflictError(f"An external agent named '{name}' already exists in this organization")


async def insert_agent(engine: AsyncEngine, row: dict[str, Any]) -> dict[str, Any]:
    columns, execution_limits = _split(row)
    try:
        async with engine.begin() as connection:
            result = await connection.execute(agents.insert().values(**columns).returning(*agents.c))
            stored = dict(result.one()._mapping)
            if any(v is not None for v in execution_limits.values()):
                await _write_limits(connection, stored["id"], execution_limits)
    except IntegrityError as exc:
        raise _duplicate_name(row["name"]) from exc
    return {**stored, **dict.fromkeys(LIMIT_COLUMNS), **execution_limits}


# Built once with bind parameters: it runs on every invocation, and a statement built per call costs its
# construction and SQLAlchemy's cache key each time.
AGENT_BY_ID = _select_agents().where(
    agents.c.id == sa.bindparam("agent_id"), agents.c.organization_id == sa.bindparam("organization_id")
)


async def get_agent(engine: AsyncEngine, *, organization_id: str, agent_id: str) -> dict[str, Any] | None:
    async with autocommit(engine).connect() as connection:
        result = await connection.execute(AGENT_BY_ID, {"agent_id": agent_id, "organization_id": organization_id})
        row = result.first()
    return dict(row._mapping) if row else None


def month_counter_id(agent_id_column: Any, now: datetime) -> Any:
    """SQL for the id of an agent's counter row of the current UTC month (see models/budget_counter.py)."""
    return agent_id_column + sa.literal(f"|month|{now:%Y-%m}")


async def list_agents(
    engine: AsyncEngine,
    *,
    organization_id: str,
    page: int,
    limit: int,
    platform: str | None = None,
    search: str | None = None,
) -> tuple[list[dict[str, Any]], int]:
    """One page of agents, newest first, each with this month's spend in micro-dollars, and the true total."""
    conditions = [agents.c.organization_id == organization_id]
    if platform:
        conditions.append(agents.c.platform == platform)
    if search:
        needle = search.lower()
        conditions.append(
            sa.or_(
                sa.func.lower(agents.c.name).contains(needle, autoescape=True),
                sa.func.lower(sa.func.coalesce(agents.c.description, "")).contains(needle, autoescape=True),
            )
        )
    now = datetime.now(UTC)
    page_query = (
        _select_agents(sa.func.coalesce(counters.c.spent_micros, 0).label("month_spent_micros"))
        .outerjoin(counters, counters.c.id == month_counter_id(agents.c.id, now))
        .where(*conditions)
        .order_by(agents.c.created_at.desc(), agents.c.id)
        .limit(limit)
        .offset((page - 1) * limit)
    )
    count_query = sa.select(sa.func.count()).select_from(agents).where(*conditions)
    async with autocommit(engine).connect() as connection:
        rows = [dict(r._mapping) for r in (await connection.execute(page_query)).all()]
        total = (await connection.execute(count_query)).scalar_one()
    return rows, total


async def update_agent(
    engine: AsyncEngine, *, organization_id: str, agent_id: str, values: dict[str, Any]
) -> dict[str, Any] | None:
    columns, execution_limits = _split(values)
    where = (agents.c.id == agent_id, agents.c.organization_id == organization_id)
    try:
        async with engine.begin() as connection:
            result = await connection.execute(
                agents.update().where(*where).values(**columns, updated_at=datetime.now(UTC)).returning(agents.c.id)
            )
            if result.first() is None:
                return None
            await _announce_change(connection, agent_id)
            if execution_limits:
                await _write_limits(connection, agent_id, execution_limits)
            row = (await connection.execute(_select_agents().where(*where))).one()
    except IntegrityError as exc:
        raise _duplicate_name(values.get("name", "")) from exc
    return dict(row._mapping)


async def delete_agent(engine: AsyncEngine, *, organization_id: str, agent_id: str) -> bool:
    async with engine.begin() as connection:
        result = await connection.execute(
            agents.delete().where(agents.c.id == agent_id, agents.c.organization_id == organization_id)
        )
        if result.rowcount == 1:
            await connection.execute(limits.delete().where(limits.c.external_agent_id == agent_id))
            await _announce_change(connection, agent_id)
    return result.rowcount == 1


async def all_credential_tokens(engine: AsyncEngine) -> list[tuple[str, bytes]]:
    """Every agent's id and credential token, for key rotation."""
    async with autocommit(engine).connect() as connection:
        result = await connection.execute(
            sa.select(agents.c.id, agents.c.encrypted_credentials).where(agents.c.encrypted_credentials.is_not(None))
        )
        return [(r.id, bytes(r.encrypted_credentials)) for r in result.all()]


async def replace_credential_token(engine: AsyncEngine, *, agent_id: str, old: bytes, new: bytes) -> bool:
    """Swap one token, only if it is still the one that was read (a concurrent PATCH wins)."""
    async with engine.begin() as connection:
        result = await connection.execute(
            agents.update()
            .where(agents.c.id == agent_id, agents.c.encrypted_credentials == old)
            .values(encrypted_credentials=new)
        )
        if result.rowcount == 1:
            await _announce_change(connection, agent_id)
    return result.rowcount == 1


async def get_agent_by_name(engine: AsyncEngine, *, organization_id: str, name: str) -> dict[str, Any] | None:
    async with autocommit(engine).connect() as connection:
        result = await connection.execute(
            _select_agents().where(agents.c.organization_id == organization_id, agents.c.name == name)
        )
        row = result.first()
    return dict(row._mapping) if row else None
