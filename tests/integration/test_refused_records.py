"""A record the database refuses is still written, normalised and noted, while an unreachable database is told
apart (retried, journalled): one classification, stores.database.database_error_kind, on SQLite and PostgreSQL.

Before, every database error counted as "unavailable": a refused value was retried for 8 s, then lost.
"""

from __future__ import annotations

import contextlib
import time
import uuid
from datetime import UTC, datetime

import pytest
import sqlalchemy as sa
from sqlalchemy.ext.asyncio import AsyncEngine, create_async_engine

from external_agents.models import TABLES
from external_agents.money import to_micros
from external_agents.stores.budgets import BudgetLimits, Reservation, current_spend, reserve
from external_agents.stores.database import database_error_kind
from external_agents.stores.invocations import record_invocation

NOW = datetime.now(UTC)
ROOMY = BudgetLimits(daily_micros=to_micros(100), monthly_micros=to_micros(1000))
lineage, billing = TABLES["invocation_lineage"], TABLES["billing_usage"]


def lineage_row(agent_id: str, invocation_id: str, **values: object) -> dict:
    return {
        "id": invocation_id,
        "external_user_id": "u-1",
        "external_user_email": "ada@example.com",
        "external_user_name": None,
        "external_system": "tests",
        "external_session_id": "s-1",
        "external_trace_id": None,
        "external_context": {},
        "api_key_id": "k-1",
        "organization_id": "org-refused",
        "external_agent_id": agent_id,
        "external_agent_name": "refused",
        "platform": "custom_http",
        "trace_id": f"trc_{uuid.uuid4().hex}",
        "workflow_id": None,
        "input": {"q": 1},
        "output": {"answer": 42},
        "status": "success",
        "denial_reason": None,
        "cost_usd": 0.05,
        "duration_ms": 10.0,
        "webhook_delivery_status": "delivered",
        "webhook_delivery_error": None,
        "webhook_attempts": 1,
        "request_timestamp": NOW,
        "response_timestamp": NOW,
        **values,
    }


async def write(engine: AsyncEngine, agent_id: str, invocation_id: str, **values: object) -> bool:
    reservation = await reserve(engine, agent_id=agent_id, amount_micros=to_micros(0.05), limits=ROOMY, now=NOW)
    assert isinstance(reservation, Reservation)
    return await record_invocation(
        engine,
        lineage_row=lineage_row(agent_id, invocation_id, **values),
        billing_row={
            "id": invocation_id,
            "organization_id": "org-refused",
            "usage_type": "external_agent_invocation",
            "quantity": 1.0,
            "cost_usd": 0.05,
            "external_agent_id": agent_id,
        },
        reservation=reservation,
        actual_micros=to_micros(0.05),
        audit_events=[
            {
                "event_type": "external_agent.invoked",
                "organization_id": "org-refused",
                "actor_id": "k-1",
                "resource_type": "external_agent",
                "resource_id": agent_id,
                "details": {"invocation_id": invocation_id},
            }
        ],
    )


async def test_a_refused_record_is_stored_normalised_with_a_note(gateway) -> None:
    engine: AsyncEngine = gateway.external_agents.engine
    agent_id, invocation_id = str(uuid.uuid4()), str(uuid.uuid4())

    started = time.perf_counter()
    # A lone surrogate in text: neither SQLite's driver nor asyncpg can encode it; NaN: PostgreSQL's json refuses it.
    assert await write(
        engine, agent_id, invocation_id, output={"v": float("nan")}, webhook_delivery_error="bad \ud800 text"
    )
    elapsed = time.perf_counter() - started

    assert elapsed < 2.0  # written at once, not retried for 8 s as if the database were away
    async with engine.connect() as connection:
        [row] = (await connection.execute(sa.select(lineage).where(lineage.c.id == invocation_id))).mappings().all()
        [bill] = (await connection.execute(sa.select(billing).where(billing.c.id == invocation_id))).mappings().all()
    assert row["output"] == '{"v": NaN}'
    assert row["webhook_delivery_error"] == "bad \ufffd text"
    assert row["record_note"].startswith("the database refused the record (")
    assert row["cost_usd"] == 0.05 and bill["cost_usd"] == 0.05
    spend = await current_spend(engine, agent_id=agent_id, now=NOW)
    assert spend.day_spent_micros == to_micros(0.05) and spend.day_executions == 1


async def test_a_duplicate_record_is_not_taken_for_a_refused_value(gateway) -> None:
    engine: AsyncEngine = gateway.external_agents.engine
    agent_id, invocation_id = str(uuid.uuid4()), str(uuid.uuid4())
    assert await write(engine, agent_id, invocation_id)

    # Refused as a duplicate, or found settled already: either way written once, never stored again in another form.
    with contextlib.suppress(sa.exc.IntegrityError):
        await write(engine, agent_id, invocation_id)

    async with engine.connect() as connection:
        billed = (await connection.execute(sa.select(billing).where(billing.c.id == invocation_id))).all()
        [row] = (await connection.execute(sa.select(lineage).where(lineage.c.id == invocation_id))).mappings().all()
    assert len(billed) == 1 and row["record_note"] is None


async def test_unreachable_and_refused_are_told_apart(gateway) -> None:
    engine: AsyncEngine = gateway.external_agents.engine
    gone = create_async_engine("postgresql+asyncpg://postgres@127.0.0.1:1/gone")
    try:
        with pytest.raises(Exception) as unreachable:
            async with gone.connect() as connection:
                await connection.execute(sa.text("SELECT 1"))
    finally:
        await gone.dispose()
    with pytest.raises(Exception) as refused:
        async with engine.connect() as connection:
            await connection.execute(sa.text("SELECT :v"), {"v": "\ud800"})
    with pytest.raises(Exception) as no_table:
        async with engine.connect() as connection:
            await connection.execute(sa.text("SELECT * FROM no_such_table"))

    assert database_error_kind(unreachable.value) == "unavailable"
    assert database_error_kind(refused.value) == "refused"
    assert database_error_kind(no_table.value) == "refused"
    assert database_error_kind(ValueError("not a database error")) is None
