"""Pending invocations: the lineage row written with the budget reservation, before delivery, and settled by
whichever instance finds it abandoned.

Why. A process killed while its invocations wait on their platforms used to take their reservations with it:
the counters kept the money, `billing_usage` had nothing, and the agent was refused with 402 for the rest of
the period. Now the reservation and a `pending` row (owner instance, lease = delivery deadline) commit
together (stores/budgets.py `reserve`), the record step completes the row after delivery
(stores/invocations.py), and every instance sweeps: a pending row whose lease has passed is claimed by one
conditional UPDATE (`status = 'pending'` in its WHERE, `FOR UPDATE SKIP LOCKED` on PostgreSQL), so exactly one
instance settles it, and its billing row and audit event are written in the same transaction.

A swept row is billed at its reservation. Nothing is written between the reservation and the request leaving
(that would cost a statement on every call), so no row can prove its request never left: "released when it
provably did not reach the platform" never applies to a swept row, and the counters keep the estimate.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime
from typing import Any

import sqlalchemy as sa
from sqlalchemy.ext.asyncio import AsyncEngine

from external_agents.models import TABLES
from external_agents.models.invocation_lineage import PENDING
from external_agents.stores.audit import audit_row, insert_audit_rows
from external_agents.stores.lineage import parent_invocation

logger = logging.getLogger(__name__)

lineage = TABLES["invocation_lineage"]
billing = TABLES["billing_usage"]

INTERRUPTED = "instance stopped during delivery; delivery unknown"
# How often each app process looks for abandoned pending rows.
SWEEP_INTERVAL_SECONDS = 10.0
SWEEP_BATCH = 200

# What a pending row holds; the record step completes the rest (stores/invocations.py COMPLETION_COLUMNS).
# `cost_usd` holds the reserved amount until then.
PENDING_COLUMNS = (
    "id",
    "external_user_id",
    "external_user_email",
    "external_user_name",
    "external_system",
    "external_session_id",
    "external_trace_id",
    "external_context",
    "api_key_id",
    "organization_id",
    "external_agent_id",
    "external_agent_name",
    "platform",
    "trace_id",
    "workflow_id",
    "input",
    "metadata",
    "cost_usd",
    "request_timestamp",
    "instance_id",
    "lease_expires_at",
)
# Bind names of the pending row's values, prefixed so they never meet the reservation's own parameters.
PREFIX = "pending_"


def _values() -> dict[str, Any]:
    values: dict[str, Any] = {
        name: sa.bindparam(f"{PREFIX}{name}", type_=lineage.c[name].type) for name in PENDING_COLUMNS
    }
    values["parent_invocation_id"] = parent_invocation(prefix=PREFIX)
    values["status"] = sa.literal(PENDING, lineage.c.status.type)
    return values


def pending_select(only_if: sa.ColumnElement[bool]) -> sa.Select[Any]:
    """The pending row as a SELECT of its bound values, yielding it only when `only_if` holds (PostgreSQL's
    INSERT ... SELECT inside the reservation's statement)."""
    # asyncpg's dialect sends each parameter with its type ($1::VARCHAR, $8::JSON), which PostgreSQL needs in
    # a SELECT list; no CAST to varchar(255) here, which would truncate an over-long value instead of refusing it.
    return sa.select(*_values().values()).where(only_if)


def pending_columns() -> list[str]:
    return list(_values())


PENDING_INSERT = lineage.insert().values(_values())


def pending_params(row: dict[str, Any]) -> dict[str, Any]:
    """The bind parameters of a pending row given by column name."""
    return {f"{PREFIX}{name}": row[name] for name in PENDING_COLUMNS}


def _claim(dialect: str, now: datetime, limit: int) -> sa.Update:
    expired = sa.and_(lineage.c.status == PENDING, lineage.c.lease_expires_at < now)
    candidates = sa.select(lineage.c.id).where(expired).order_by(lineage.c.lease_expires_at).limit(limit)
    if dialect == "postgresql":
        # Rows another instance is settling right now are skipped, not waited for; the status test in the
        # UPDATE's WHERE is what makes a claim exactly once.
        candidates = candidates.with_for_update(skip_locked=True)
    return (
        lineage.update()
        .where(lineage.c.id.in_(candidates.scalar_subquery()), expired)
        .values(
            status="failure",
            webhook_delivery_status="failure",
            webhook_delivery_error=INTERRUPTED,
            denial_reason=INTERRUPTED,
            response_timestamp=now,
            lease_expires_at=None,
        )
        .returning(
            lineage.c.id,
            lineage.c.organization_id,
            lineage.c.api_key_id,
            lineage.c.external_agent_id,
            lineage.c.cost_usd,
            lineage.c.request_timestamp,
        )
    )


async def sweep_expired(engine: AsyncEngine, *, now: datetime, limit: int = SWEEP_BATCH) -> int:
    """Settle up to `limit` pending rows whose lease passed before `now`: failure, billed at the reservation.

    Exactly once across instances; the claim, the billing rows and the audit events commit together. The
    counters already hold the reservation, so they are left as they are.
    """
    async with engine.begin() as connection:
        claimed = (await connection.execute(_claim(engine.dialect.name, now, limit))).all()
        if not claimed:
            return 0
        await connection.execute(
            billing.insert(),
            [
                {
                    "id": row.id,
                    "organization_id": row.organization_id,
                    "usage_type": "external_agent_invocation",
                    "quantity": 1.0,
                    "cost_usd": row.cost_usd or 0.0,
                    "external_agent_id": row.external_agent_id,
                    # The period the reservation was counted in, so billing and counters agree.
                    "created_at": row.request_timestamp,
                }
                for row in claimed
            ],
        )
        await insert_audit_rows(
            connection,
            [
                audit_row(
                    event_type="external_agent.invoked",
                    organization_id=row.organization_id,
                    actor_id=row.api_key_id,
                    resource_type="external_agent",
                    resource_id=row.external_agent_id,
                    details={
                        "invocation_id": row.id,
                        "status": "failure",
                        "cost_usd": row.cost_usd or 0.0,
                        "reason": INTERRUPTED,
                    },
                )
                for row in claimed
            ],
        )
    logger.warning("invocation.pending_swept count=%d", len(claimed))
    return len(claimed)


async def keep_sweeping(
    engine: AsyncEngine,
    *,
    every_seconds: float = SWEEP_INTERVAL_SECONDS,
    wait: Callable[[float], Awaitable[None]] = asyncio.sleep,
    clock: Callable[[], datetime] = lambda: datetime.now(UTC),
) -> None:
    """Sweep now and then every `every_seconds`, for as long as the app runs; a full batch sweeps again at once.

    `wait` and `clock` are injected so tests neither wait out the interval nor the lease.
    """
    while True:
        try:
            swept = await sweep_expired(engine, now=clock())
        except Exception:
            logger.exception("invocation.sweep_failed")
            swept = 0
        if swept < SWEEP_BATCH:
            await wait(every_seconds)
