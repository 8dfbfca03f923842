"""Records the database could not take in time: kept on local disk, then written once, on SQLite and PostgreSQL.

The database that "went away" is a real PostgreSQL address nothing listens on (127.0.0.1:1): connecting is
refused at once, as during a restart. The database the records are replayed into is the gateway's own.
"""

from __future__ import annotations

import asyncio
import json
import uuid
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
import sqlalchemy as sa
from sqlalchemy.ext.asyncio import AsyncEngine, create_async_engine

from external_agents.models import TABLES
from external_agents.money import to_micros
from external_agents.stores.audit import audit_row
from external_agents.stores.budgets import BudgetLimits, Reservation, current_spend, reserve
from external_agents.stores.invocations import (
    REPLAY_INTERVAL_SECONDS,
    keep_replaying,
    record_invocation,
    replay_unrecorded,
)
from external_agents.stores.lineage import erase_user_lineage
from external_agents.stores.unrecorded import InvocationRecord, UnrecordedJournal
from tests.clocks import ManualTicker
from tests.factories import invoke, register, running_app

NOW = datetime.now(UTC)
ROOMY = BudgetLimits(daily_micros=to_micros(100), monthly_micros=to_micros(1000))


@pytest.fixture
async def gone() -> AsyncEngine:
    engine = create_async_engine("postgresql+asyncpg://postgres@127.0.0.1:1/gone")
    yield engine
    await engine.dispose()


@pytest.fixture
def engine(gateway) -> AsyncEngine:
    return gateway.external_agents.engine


@pytest.fixture
def journal(tmp_path: Path) -> UnrecordedJournal:
    return UnrecordedJournal(tmp_path / "unrecorded")


def rows_for(agent_id: str, invocation_id: str, *, at: datetime = NOW, email: str = "ada@example.com") -> dict:
    ended = at + timedelta(milliseconds=250)
    return {
        "lineage_row": {
            "id": invocation_id,
            "external_user_id": "u-1",
            "external_user_email": email,
            "external_user_name": None,
            "external_system": "tests",
            "external_session_id": "s-1",
            "external_trace_id": None,
            "external_context": {"environment": "prod"},
            "api_key_id": "k-1",
            "organization_id": "org-journal",
            "external_agent_id": agent_id,
            "external_agent_name": "journalled",
            "platform": "custom_http",
            "trace_id": f"trc_{uuid.uuid4().hex}",
            "workflow_id": None,
            "input": {"text": "DELETE FROM x; ${agent_id}", "ratio": 0.1, "big": 10**30},
            "output": {"answer": 42},
            "status": "success",
            "denial_reason": None,
            "cost_usd": 0.02,
            "duration_ms": 250.0,
            "webhook_delivery_status": "delivered",
            "webhook_delivery_error": None,
            "webhook_attempts": 1,
            "request_timestamp": at,
            "response_timestamp": ended,
        },
        "billing_row": {
            "id": invocation_id,
            "organization_id": "org-journal",
            "usage_type": "external_agent_invocation",
            "quantity": 1.0,
            "cost_usd": 0.02,
            "external_agent_id": agent_id,
        },
        "audit_events": [
            {
                "event_type": "external_agent.invoked",
                "organization_id": "org-journal",
                "actor_id": "k-1",
                "resource_type": "external_agent",
                "resource_id": agent_id,
                "details": {"invocation_id": invocation_id},
            }
        ],
    }


async def reserved(engine: AsyncEngine, agent_id: str) -> Reservation:
    outcome = await reserve(engine, agent_id=agent_id, amount_micros=to_micros(0.05), limits=ROOMY, now=NOW)
    assert isinstance(outcome, Reservation)
    return outcome


async def record(
    engine: AsyncEngine, agent_id: str, invocation_id: str, reservation: Reservation, *, row: dict | None = None, **kw
) -> bool:
    rows = rows_for(agent_id, invocation_id, **(row or {}))
    return await record_invocation(engine, reservation=reservation, actual_micros=to_micros(0.02), **rows, **kw)


async def select(engine: AsyncEngine, sql: str, **params) -> list[dict]:
    async with engine.connect() as connection:
        return [dict(r._mapping) for r in (await connection.execute(sa.text(sql), params)).all()]


async def recorded_rows(engine: AsyncEngine, agent_id: str) -> tuple[list[dict], list[dict], list[dict]]:
    """The agent's lineage, billing and audit rows, read through the tables so values come back typed."""
    lineage, billing, audit = TABLES["invocation_lineage"], TABLES["billing_usage"], TABLES["audit_log"]
    queries = (
        sa.select(lineage).where(lineage.c.external_agent_id == agent_id),
        sa.select(billing).where(billing.c.external_agent_id == agent_id),
        sa.select(audit).where(audit.c.resource_id == agent_id),
    )
    async with engine.connect() as connection:
        found = [[dict(r._mapping) for r in (await connection.execute(q)).all()] for q in queries]
    return found[0], found[1], found[2]


async def test_an_unreachable_database_sends_the_record_to_the_journal(gone, engine, journal):
    agent_id, invocation_id = str(uuid.uuid4()), str(uuid.uuid4())
    reservation = await reserved(engine, agent_id)

    written = await record(gone, agent_id, invocation_id, reservation, journal=journal, retry_seconds=0.3)

    assert written is False
    [path] = journal.pending()
    assert path.name == f"{invocation_id}.json"
    assert json.loads(path.read_text())["lineage_row"]["input"]["big"] == 10**30
    assert [p.name for p in journal.directory.iterdir()] == [path.name]  # no temporary file left
    assert path.stat().st_mode & 0o777 == 0o600 and journal.directory.stat().st_mode & 0o777 == 0o700
    assert await recorded_rows(engine, agent_id) == ([], [], [])


async def test_without_a_journal_the_database_error_is_raised(gone, engine):
    agent_id = str(uuid.uuid4())
    reservation = await reserved(engine, agent_id)

    with pytest.raises(OSError):
        await record(gone, agent_id, str(uuid.uuid4()), reservation, retry_seconds=0.3)


async def test_a_journal_that_cannot_be_written_gives_the_database_error(gone, engine, tmp_path):
    blocked = tmp_path / "not-a-directory"
    blocked.write_text("a file where the journal's directory should be")
    agent_id = str(uuid.uuid4())

    with pytest.raises(ConnectionRefusedError):
        await record(
            gone,
            agent_id,
            str(uuid.uuid4()),
            await reserved(engine, agent_id),
            journal=UnrecordedJournal(blocked),
            retry_seconds=0.1,
        )


async def test_replay_writes_the_record_exactly_as_it_would_have_been_written(gone, engine, journal):
    agent_id, invocation_id = str(uuid.uuid4()), str(uuid.uuid4())
    reservation = await reserved(engine, agent_id)
    await record(gone, agent_id, invocation_id, reservation, journal=journal, retry_seconds=0.3)

    report = await replay_unrecorded(engine, journal)

    assert (report.recorded, report.already_recorded, report.refused, report.waiting) == (1, 0, 0, 0)
    assert journal.pending() == []
    [lineage], [billing], [audit] = await recorded_rows(engine, agent_id)
    assert lineage["id"] == invocation_id and lineage["status"] == "success"
    assert lineage["input"] == {"text": "DELETE FROM x; ${agent_id}", "ratio": 0.1, "big": 10**30}
    ended = NOW + timedelta(milliseconds=250)
    assert lineage["response_timestamp"] == ended
    # Dated when the invocation ended, not when the replay got through.
    assert billing["created_at"] == ended and audit["created_at"] == ended
    assert billing["cost_usd"] == 0.02
    spend = await current_spend(engine, agent_id=agent_id, now=NOW)
    assert (spend.day_spent_micros, spend.month_spent_micros, spend.day_executions) == (20_000, 20_000, 1)


async def test_concurrent_replays_write_each_record_once(gone, engine, journal):
    agent_id = str(uuid.uuid4())
    ids = [str(uuid.uuid4()) for _ in range(5)]
    for invocation_id in ids:
        reservation = await reserved(engine, agent_id)
        await record(gone, agent_id, invocation_id, reservation, journal=journal, retry_seconds=0.1)
    assert len(journal.pending()) == 5

    reports = await asyncio.gather(*(replay_unrecorded(engine, journal) for _ in range(3)))

    assert sum(r.recorded for r in reports) == 5
    assert sum(r.refused for r in reports) == 0
    lineage, billing, _audit = await recorded_rows(engine, agent_id)
    assert sorted(r["id"] for r in lineage) == sorted(ids) and len(billing) == 5
    spend = await current_spend(engine, agent_id=agent_id, now=NOW)
    assert (spend.day_spent_micros, spend.day_executions) == (5 * 20_000, 5)
    assert journal.pending() == []


async def test_a_record_already_committed_is_not_written_twice(gone, engine, journal):
    agent_id, invocation_id = str(uuid.uuid4()), str(uuid.uuid4())
    reservation = await reserved(engine, agent_id)
    # The commit went through but its answer was lost, so the same record was also journalled.
    assert await record(engine, agent_id, invocation_id, reservation) is True
    await record(
        gone,
        agent_id,
        invocation_id,
        reservation,
        journal=journal,
        retry_seconds=0.1,
    )

    report = await replay_unrecorded(engine, journal)

    assert (report.recorded, report.already_recorded) == (0, 1)
    lineage, billing, audit = await recorded_rows(engine, agent_id)
    assert (len(lineage), len(billing), len(audit)) == (1, 1, 1)
    spend = await current_spend(engine, agent_id=agent_id, now=NOW)
    assert (spend.day_spent_micros, spend.day_executions) == (20_000, 1)
    assert journal.pending() == []


async def test_records_wait_while_the_database_is_still_away(gone, engine, journal):
    agent_id = str(uuid.uuid4())
    for _ in range(2):
        await record(
            gone, agent_id, str(uuid.uuid4()), await reserved(engine, agent_id), journal=journal, retry_seconds=0.1
        )

    report = await replay_unrecorded(gone, journal)

    assert (report.recorded, report.waiting) == (0, 2)
    assert len(journal.pending()) == 2


async def test_a_record_the_database_refuses_is_set_aside_and_the_rest_replayed(gone, engine, journal, caplog):
    agent_id = str(uuid.uuid4())
    good, bad = str(uuid.uuid4()), str(uuid.uuid4())
    await record(gone, agent_id, good, await reserved(engine, agent_id), journal=journal, retry_seconds=0.1)
    await record(gone, agent_id, bad, await reserved(engine, agent_id), journal=journal, retry_seconds=0.1)
    broken = json.loads((journal.directory / f"{bad}.json").read_text())
    broken["lineage_row"]["status"] = None  # NOT NULL: refused every time, never a reason to retry
    (journal.directory / f"{bad}.json").write_text(json.dumps(broken))
    (journal.directory / "truncated.json").write_text('{"version": 1, "lineage_row": {')
    (journal.directory / "not-an-object.json").write_text("[1, 2]")

    report = await replay_unrecorded(engine, journal)

    assert (report.recorded, report.refused) == (1, 1)
    assert journal.pending() == []
    assert sorted(p.name for p in journal.refused_directory.iterdir()) == sorted(
        [f"{bad}.json", "not-an-object.json", "truncated.json"]
    )
    lineage, _billing, _audit = await recorded_rows(engine, agent_id)
    assert [r["id"] for r in lineage] == [good]
    assert "invocation.record_refused" in caplog.text


async def test_an_erasure_made_while_a_record_waited_applies_to_it(gone, engine, journal):
    agent_id = str(uuid.uuid4())
    email = f"erase-{uuid.uuid4().hex[:8]}@Example.com"
    before, after = str(uuid.uuid4()), str(uuid.uuid4())
    # Begun a moment before the erasure, within the same second (SQLite dates the erasure to the second).
    await record(
        gone,
        agent_id,
        before,
        await reserved(engine, agent_id),
        row={"email": email, "at": datetime.now(UTC)},
        journal=journal,
        retry_seconds=0.1,
    )
    await erase_user_lineage(engine, organization_id="org-journal", email=email.lower(), actor_id="k-1")
    # An invocation that began after the erasure is a new record of this user, and stays as it is.
    later = datetime.now(UTC) + timedelta(seconds=5)
    await record(
        gone,
        agent_id,
        after,
        await reserved(engine, agent_id),
        row={"email": email, "at": later},
        journal=journal,
        retry_seconds=0.1,
    )

    report = await replay_unrecorded(engine, journal)

    assert report.recorded == 2
    lineage, billing, _audit = await recorded_rows(engine, agent_id)
    by_id = {row["id"]: row for row in lineage}
    assert by_id[before]["external_user_email"] == "[REDACTED]" and by_id[before]["input"] == "[REDACTED]"
    assert by_id[before]["cost_usd"] == 0.02 and len(billing) == 2
    assert by_id[after]["external_user_email"] == email and by_id[after]["input"]["ratio"] == 0.1


async def test_keep_replaying_replays_at_once_and_then_every_interval(gone, engine, journal):
    """The loop every app process runs: a pass at start, then one after each interval (ticked by hand here)."""
    ticker = ManualTicker()
    replaying = asyncio.create_task(keep_replaying(engine, journal, wait=ticker))
    try:
        await ticker.until_waiting(1)  # the first pass found nothing
        agent_id, invocation_id = str(uuid.uuid4()), str(uuid.uuid4())
        await record(
            gone, agent_id, invocation_id, await reserved(engine, agent_id), journal=journal, retry_seconds=0.1
        )
        assert len(journal.pending()) == 1

        await ticker.tick()
        await ticker.until_waiting(2)

        assert await select(engine, "SELECT id FROM invocation_lineage WHERE id = :i", i=invocation_id)
        assert journal.pending() == []
        assert ticker.waited == [REPLAY_INTERVAL_SECONDS, REPLAY_INTERVAL_SECONDS]
    finally:
        replaying.cancel()
        await asyncio.gather(replaying, return_exceptions=True)


async def test_the_app_replays_its_journal_when_it_starts(gateway, client, org, platform_server, gone, tmp_path):
    """The app's own background task: a record journalled while the database was away reaches lineage."""
    agent = await register(client, org, platform_server, name=f"journal-{uuid.uuid4().hex[:6]}")
    engine = gateway.external_agents.engine
    settings = gateway.external_agents.settings.model_copy(update={"kaizen_data_dir": tmp_path})
    journal = UnrecordedJournal(tmp_path / "unrecorded")
    invocation_id = str(uuid.uuid4())
    await record(
        gone, agent["id"], invocation_id, await reserved(engine, agent["id"]), journal=journal, retry_seconds=0.1
    )
    assert (await invoke(client, org, agent["id"])).status_code == 200

    async with running_app(settings):
        # The first pass runs as the app starts, not after an interval: this waits for that task, not a timer.
        for _ in range(500):
            if not journal.pending():
                break
            await asyncio.sleep(0.02)

    assert await select(engine, "SELECT id FROM invocation_lineage WHERE id = :i", i=invocation_id)


async def test_a_journal_file_written_before_metadata_was_kept_is_still_replayed(engine, journal):
    """A record an older release left in the journal has no `metadata`: it is written with none."""
    agent_id, invocation_id = str(uuid.uuid4()), str(uuid.uuid4())
    old = rows_for(agent_id, invocation_id)
    assert "metadata" not in old["lineage_row"]
    journal.keep(
        InvocationRecord(
            lineage_row=old["lineage_row"],
            billing_row=old["billing_row"],
            reservation=None,
            actual_micros=None,
            audit_rows=[audit_row(**event) for event in old["audit_events"]],
        )
    )

    report = await replay_unrecorded(engine, journal)

    assert (report.recorded, report.refused) == (1, 0)
    lineage = TABLES["invocation_lineage"]
    async with engine.connect() as connection:
        stored = (await connection.execute(sa.select(lineage.c.metadata).where(lineage.c.id == invocation_id))).one()
    assert stored.metadata is None
