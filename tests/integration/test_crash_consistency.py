"""Issue 11, points 1, 2 and 6 in-process, on SQLite and PostgreSQL: the pending lineage row written with the
reservation and completed after delivery; the sweeper that settles an abandoned one exactly once; the
reconciliation of counters with billing plus live reservations; and erasure winning over an in-flight record.

The sweeper runs with a clock in the future instead of waiting out a lease. A real process killed with
SIGKILL, and three instances with one killed mid-burst, are in tests/faults/test_crash_consistency.py.
"""

from __future__ import annotations

import asyncio
import time
import uuid
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa
from sqlalchemy.ext.asyncio import AsyncEngine, create_async_engine

from external_agents.gateway.administration import reconcile_counters
from external_agents.money import to_micros
from external_agents.stores.budgets import BudgetLimits, Reservation, current_spend, reserve
from external_agents.stores.invocations import record_invocation, replay_unrecorded
from external_agents.stores.lineage import erase_user_lineage
from external_agents.stores.pending import INTERRUPTED, keep_sweeping, sweep_expired
from external_agents.stores.unrecorded import UnrecordedJournal
from tests.clocks import ManualTicker
from tests.factories import IDENTITY, INVOKE_METADATA, invoke, register, rows
from tests.platform_server import ScriptedResponse

ROOMY = BudgetLimits(daily_micros=to_micros(100), monthly_micros=to_micros(1000))
ESTIMATE = to_micros(0.05)
EMAIL = IDENTITY["X-External-User-Email"]


@pytest.fixture
def engine(gateway) -> AsyncEngine:
    return gateway.external_agents.engine


def pending_row(
    agent_id: str, invocation_id: str, *, now: datetime, email: str = "ada@example.com", lease_seconds: float = 30
) -> dict[str, Any]:
    return {
        "id": invocation_id,
        "external_user_id": "u-1",
        "external_user_email": email,
        "external_user_name": "Ada",
        "external_system": "tests",
        "external_session_id": "s-1",
        "external_trace_id": None,
        "external_context": {"environment": "prod"},
        "api_key_id": "k-1",
        "organization_id": "org-pending",
        "external_agent_id": agent_id,
        "external_agent_name": "pending",
        "platform": "custom_http",
        "trace_id": f"trc_{uuid.uuid4().hex}",
        "workflow_id": None,
        "input": {"text": "hello"},
        "metadata": {"ticket": "T-1", "owner": email},
        "cost_usd": ESTIMATE / 1_000_000,
        "request_timestamp": now,
        "instance_id": "instance-a",
        "lease_expires_at": now + timedelta(seconds=lease_seconds),
    }


def completed_row(pending: dict[str, Any], *, now: datetime) -> dict[str, Any]:
    """The full lineage row the record step writes for a successful delivery of `pending`."""
    return {
        **{k: v for k, v in pending.items() if k not in ("instance_id", "lease_expires_at")},
        "output": {"answer": 42, "for": pending["external_user_email"]},
        "status": "success",
        "denial_reason": None,
        "cost_usd": 0.02,
        "duration_ms": 250.0,
        "webhook_delivery_status": "delivered",
        "webhook_delivery_error": None,
        "webhook_attempts": 1,
        "response_timestamp": now + timedelta(milliseconds=250),
    }


async def reserve_pending(engine: AsyncEngine, agent_id: str, *, now: datetime, **row: Any) -> tuple[Reservation, dict]:
    pending = pending_row(agent_id, str(uuid.uuid4()), now=now, **row)
    outcome = await reserve(
        engine, agent_id=agent_id, amount_micros=ESTIMATE, limits=ROOMY, now=now, pending_row=pending
    )
    assert isinstance(outcome, Reservation)
    return outcome, pending


async def complete(engine: AsyncEngine, reservation: Reservation, pending: dict, *, now: datetime, **kw: Any) -> bool:
    row = completed_row(pending, now=now)
    billing = {
        "id": row["id"],
        "organization_id": row["organization_id"],
        "usage_type": "external_agent_invocation",
        "quantity": 1.0,
        "cost_usd": 0.02,
        "external_agent_id": row["external_agent_id"],
    }
    return await record_invocation(
        engine,
        lineage_row=row,
        billing_row=billing,
        reservation=reservation,
        actual_micros=to_micros(0.02),
        audit_events=[],
        **kw,
    )


async def state(gateway: Any, agent_id: str) -> dict[str, Any]:
    lineage = await rows(
        gateway,
        "SELECT id, status, cost_usd, instance_id, lease_expires_at, webhook_delivery_error "
        "FROM invocation_lineage WHERE external_agent_id = :agent",
        agent=agent_id,
    )
    billing = await rows(
        gateway, "SELECT id, cost_usd FROM billing_usage WHERE external_agent_id = :agent", agent=agent_id
    )
    return {"lineage": lineage, "billing": billing}


async def test_the_reservation_writes_a_pending_row_and_a_refusal_writes_none(gateway, engine):
    agent_id, now = str(uuid.uuid4()), datetime.now(UTC)
    _, pending = await reserve_pending(engine, agent_id, now=now)
    refused = await reserve(
        engine,
        agent_id=agent_id,
        amount_micros=ESTIMATE,
        limits=BudgetLimits(daily_micros=ESTIMATE, monthly_micros=to_micros(1000)),
        now=now,
        pending_row=pending_row(agent_id, str(uuid.uuid4()), now=now),
    )

    assert not isinstance(refused, Reservation)
    [row] = (await state(gateway, agent_id))["lineage"]
    assert (row["id"], row["status"], row["cost_usd"], row["instance_id"]) == (
        pending["id"],
        "pending",
        0.05,
        "instance-a",
    )
    [stored] = await rows(gateway, "SELECT input, metadata FROM invocation_lineage WHERE id = :id", id=pending["id"])
    assert stored["metadata"] is not None


async def test_recording_completes_the_pending_row_once(gateway, engine):
    agent_id, now = str(uuid.uuid4()), datetime.now(UTC)
    reservation, pending = await reserve_pending(engine, agent_id, now=now)

    assert await complete(engine, reservation, pending, now=now)

    found = await state(gateway, agent_id)
    assert [(r["status"], r["cost_usd"], r["lease_expires_at"]) for r in found["lineage"]] == [("success", 0.02, None)]
    assert [r["cost_usd"] for r in found["billing"]] == [0.02]
    assert (await current_spend(engine, agent_id=agent_id, now=now)).day_spent_micros == to_micros(0.02)


async def test_the_sweeper_settles_an_expired_pending_row_exactly_once_and_the_late_owner_bills_nothing(
    gateway, engine
):
    agent_id, now = str(uuid.uuid4()), datetime.now(UTC)
    reservation, pending = await reserve_pending(engine, agent_id, now=now)
    _, live = await reserve_pending(engine, agent_id, now=now, lease_seconds=300)
    await sweep_expired(engine, now=now + timedelta(seconds=29))
    assert [r["status"] for r in (await state(gateway, agent_id))["lineage"]] == ["pending", "pending"]

    # Two instances sweeping at once, a clock past the first lease: one of them settles it.
    await asyncio.gather(*(sweep_expired(engine, now=now + timedelta(seconds=31)) for _ in range(2)))
    late = await complete(engine, reservation, pending, now=now)

    settled = await rows(gateway, "SELECT details FROM audit_log WHERE resource_id = :agent", agent=agent_id)
    assert len(settled) == 1
    assert late  # the owner's record step ends normally: the sweeper's settlement stands
    found = await state(gateway, agent_id)
    by_id = {r["id"]: r for r in found["lineage"]}
    assert by_id[pending["id"]]["status"] == "failure"
    assert by_id[pending["id"]]["webhook_delivery_error"] == INTERRUPTED
    assert by_id[live["id"]]["status"] == "pending"
    # Billed at the reservation, once; the counters keep it and the live reservation.
    assert found["billing"] == [{"id": pending["id"], "cost_usd": 0.05}]
    spend = await current_spend(engine, agent_id=agent_id, now=now)
    assert (spend.day_spent_micros, spend.day_executions) == (2 * ESTIMATE, 2)


async def test_keep_sweeping_runs_on_its_injected_clock_and_interval(gateway, engine):
    agent_id, now = str(uuid.uuid4()), datetime.now(UTC)
    await reserve_pending(engine, agent_id, now=now)
    ticker = ManualTicker()
    task = asyncio.create_task(
        keep_sweeping(engine, every_seconds=7, wait=ticker, clock=lambda: now + timedelta(hours=1))
    )
    try:
        await ticker.until_waiting(1)
    finally:
        task.cancel()
    assert ticker.waited == [7]
    assert [r["status"] for r in (await state(gateway, agent_id))["lineage"]] == ["failure"]


async def test_the_journal_completes_a_pending_row_and_a_second_replay_writes_nothing(gateway, engine, tmp_path: Path):
    agent_id, now = str(uuid.uuid4()), datetime.now(UTC)
    reservation, pending = await reserve_pending(engine, agent_id, now=now)
    journal = UnrecordedJournal(tmp_path / "unrecorded")
    gone = create_async_engine("postgresql+asyncpg://postgres@127.0.0.1:1/gone")
    try:
        assert not await complete(gone, reservation, pending, now=now, journal=journal, retry_seconds=0.1)
    finally:
        await gone.dispose()
    [path] = journal.pending()
    copy = path.read_bytes()

    first = await replay_unrecorded(engine, journal)
    path.write_bytes(copy)  # the same file replayed by a second process
    second = await replay_unrecorded(engine, journal)

    assert (first.recorded, second.recorded, second.already_recorded) == (1, 0, 1)
    found = await state(gateway, agent_id)
    assert [r["status"] for r in found["lineage"]] == ["success"]
    assert len(found["billing"]) == 1
    assert (await current_spend(engine, agent_id=agent_id, now=now)).day_spent_micros == to_micros(0.02)


async def test_reconcile_reports_a_hand_edited_counter_and_repairs_it(gateway, engine, client, org, platform_server):
    agent = await register(client, org, platform_server, path="/reconcile", cost_per_execution=0.05)
    for _ in range(2):
        assert (await invoke(client, org, agent["id"])).status_code == 200
    now = datetime.now(UTC)
    clean = await reconcile_counters(engine, organization_id=org.organization_id, repair=False, now=now)
    assert [c.period for c in clean.checks] == ["day", "month"] and not clean.drifted
    async with engine.begin() as connection:
        await connection.execute(
            sa.text(
                "UPDATE budget_counters SET spent_micros = 999000000, executions = 77 WHERE external_agent_id = :a"
            ),
            {"a": agent["id"]},
        )

    reported = await reconcile_counters(engine, organization_id=org.organization_id, repair=False, now=now)
    repaired = await reconcile_counters(engine, organization_id=org.organization_id, repair=True, now=now)
    after = await reconcile_counters(engine, organization_id=org.organization_id, repair=False, now=now)

    assert [(c.period, c.counter_micros, c.expected_micros, c.expected_executions) for c in reported.drifted] == [
        ("day", 999_000_000, 2 * ESTIMATE, 2),
        ("month", 999_000_000, 2 * ESTIMATE, 2),
    ]
    assert reported.unrepaired == reported.drifted
    assert [c.repaired for c in repaired.drifted] == [True, True] and not repaired.unrepaired
    assert not after.drifted
    assert (await invoke(client, org, agent["id"])).status_code == 200


async def test_erasure_during_delivery_redacts_the_pending_row_and_the_completion_keeps_it_redacted(
    gateway, engine, client, org, platform_server
):
    agent = await register(client, org, platform_server, path="/erase-in-flight")
    platform_server.script("/erase-in-flight", ScriptedResponse(body={"reply": f"hello {EMAIL}"}, delay=1.0))
    call = asyncio.create_task(
        invoke(client, org, agent["id"], body={"input": {"for": EMAIL}, "metadata": INVOKE_METADATA})
    )
    deadline = time.monotonic() + 10
    while not await rows(gateway, "SELECT id FROM invocation_lineage WHERE external_agent_id = :a", a=agent["id"]):
        assert time.monotonic() < deadline, "no pending row appeared"
        await asyncio.sleep(0.02)
    [pending] = await rows(
        gateway, "SELECT status, instance_id FROM invocation_lineage WHERE external_agent_id = :a", a=agent["id"]
    )
    assert pending == {"status": "pending", "instance_id": gateway.external_agents.lease.instance_id}

    erased = await client.delete(f"/api/lineage/user/{EMAIL}", headers=org.headers)
    response = await call

    assert erased.json()["erased_rows"] >= 1
    assert response.status_code == 200, response.text
    [row] = await rows(
        gateway,
        "SELECT status, external_user_email, external_user_id, input, output, metadata FROM invocation_lineage "
        "WHERE external_agent_id = :a",
        a=agent["id"],
    )
    assert row["status"] == "success"
    assert all(EMAIL not in str(value) for value in row.values()), row
    assert row["external_user_email"] == "[REDACTED]"


async def test_a_pending_row_written_while_an_erasure_committed_is_completed_redacted(gateway, engine):
    # The erasure's UPDATE missed the row (it was not there yet); its audit event is what the completion sees.
    agent_id, email = str(uuid.uuid4()), f"late-{uuid.uuid4().hex[:6]}@example.com"
    now = datetime.now(UTC)
    await erase_user_lineage(engine, organization_id="org-pending", email=email, actor_id="k-1")
    reservation, pending = await reserve_pending(engine, agent_id, now=now - timedelta(seconds=1), email=email)

    assert await complete(engine, reservation, pending, now=now)

    [row] = await rows(gateway, "SELECT * FROM invocation_lineage WHERE id = :id", id=pending["id"])
    assert row["status"] == "success"
    assert all(email not in str(value) for value in row.values()), row
    assert row["external_user_name"] == "[REDACTED]"
