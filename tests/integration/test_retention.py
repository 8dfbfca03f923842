"""Retention on SQLite and PostgreSQL: old lineage and billing rows are archived to .jsonl.gz and deleted, and a
run interrupted between any two steps resumes without losing or duplicating a row.

Each database is a fresh one of its own (not the shared gateway's), because retention works on every
organisation's rows at once.
"""

from __future__ import annotations

import asyncio
import gzip
import inspect
import json
import uuid
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa
from sqlalchemy.engine import make_url
from sqlalchemy.ext.asyncio import AsyncEngine
from typer.testing import CliRunner

from external_agents.errors import ConflictError, ValidationError
from external_agents.models import TABLES
from external_agents.stores import retention
from external_agents.stores.retention import billing_cutoff, lineage_cutoff, read_archive, run_retention
from tests.factories import make_settings, reset_postgres_database

lineage = TABLES["invocation_lineage"]
billing = TABLES["billing_usage"]
NOW = datetime(2026, 3, 31, 12, 0, tzinfo=UTC)


class SimulatedCrash(Exception):
    """Stands in for the process dying at one exact step."""


@pytest.fixture(scope="module", params=["sqlite", "postgres"])
def retention_settings(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory, postgres_url: str):
    from external_agents.models.migrate import upgrade

    data_dir = tmp_path_factory.mktemp(f"retention-{request.param}")
    if request.param == "postgres":
        url = make_url(postgres_url).set(database="external_agents_retention_test").render_as_string(False)
        reset_postgres_database(url)
    else:
        url = f"sqlite:///{data_dir}/retention.db"
    settings = make_settings(url, str(data_dir))
    upgrade(settings, report=lambda _line: None)
    return settings


@pytest.fixture
async def engine(retention_settings) -> AsyncIterator[AsyncEngine]:
    from external_agents.stores.database import create_engine

    engine = create_engine(retention_settings)
    async with engine.begin() as connection:
        await connection.execute(lineage.delete())
        await connection.execute(billing.delete())
    yield engine
    await engine.dispose()


def lineage_row(*, age: timedelta, **overrides: Any) -> dict[str, Any]:
    row: dict[str, Any] = {
        "id": str(uuid.uuid4()),
        "organization_id": f"org-{uuid.uuid4().hex[:6]}",
        "trace_id": f"trace-{uuid.uuid4().hex}",
        "external_user_email": "alice@example.com",
        "external_agent_name": "Support Bot ✓ -- select",
        "input": {"text": "hello", "n": [1, 2.5]},
        "output": "a bare string",
        "status": "success",
        "cost_usd": 0.1 + 0.2,
        "request_timestamp": NOW - age,
    }
    row.update(overrides)
    return row


def billing_row(*, age: timedelta) -> dict[str, Any]:
    return {
        "id": str(uuid.uuid4()),
        "organization_id": "org-b",
        "usage_type": "external_agent_invocation",
        "quantity": 1.0,
        "cost_usd": 0.05,
        "external_agent_id": "agent-1",
        "created_at": NOW - age,
    }


async def seed(engine: AsyncEngine) -> dict[str, list[dict[str, Any]]]:
    """12 expired lineage rows (four sharing one timestamp), 3 kept; 4 expired billing rows, 2 kept."""
    expired = [lineage_row(age=timedelta(days=200 - i)) for i in range(8)]
    expired += [lineage_row(age=timedelta(days=100)) for _ in range(4)]
    kept = [lineage_row(age=timedelta(days=89)), lineage_row(age=timedelta(days=1)), lineage_row(age=timedelta(0))]
    old_billing = [billing_row(age=timedelta(days=400 + i)) for i in range(4)]
    new_billing = [billing_row(age=timedelta(days=360)), billing_row(age=timedelta(days=1))]
    async with engine.begin() as connection:
        await connection.execute(lineage.insert(), expired + kept)
        await connection.execute(billing.insert(), old_billing + new_billing)
    return {"expired": expired, "kept": kept, "old_billing": old_billing, "new_billing": new_billing}


async def ids_in(engine: AsyncEngine, table: sa.Table) -> set[str]:
    async with engine.connect() as connection:
        return set((await connection.execute(sa.select(table.c.id))).scalars())


def archived_ids(archive_dir: Path, table: str) -> list[str]:
    """Every id in the finished archives of a table, repeats included."""
    return [row["id"] for path in sorted(archive_dir.glob(f"{table}-*.jsonl.gz")) for row in read_archive(path)]


def leftovers(archive_dir: Path) -> list[str]:
    return sorted(p.name for p in archive_dir.iterdir() if p.suffix in (".tmp", ".pending"))


async def test_old_rows_are_archived_exactly_then_deleted(engine, tmp_path):
    rows = await seed(engine)
    results = await run_retention(engine, archive_dir=tmp_path, batch_size=5, now=NOW)
    by_table = {result.table: result for result in results}
    assert by_table["invocation_lineage"].archived_rows == 12 and len(by_table["invocation_lineage"].files) == 3
    assert by_table["billing_usage"].archived_rows == 4 and len(by_table["billing_usage"].files) == 1
    assert by_table["invocation_lineage"].cutoff == NOW - timedelta(days=90)
    assert by_table["billing_usage"].cutoff == datetime(2025, 2, 28, 12, 0, tzinfo=UTC)

    assert await ids_in(engine, lineage) == {r["id"] for r in rows["kept"]}
    assert await ids_in(engine, billing) == {r["id"] for r in rows["new_billing"]}
    assert sorted(archived_ids(tmp_path, "invocation_lineage")) == sorted(r["id"] for r in rows["expired"])
    assert sorted(archived_ids(tmp_path, "billing_usage")) == sorted(r["id"] for r in rows["old_billing"])
    assert leftovers(tmp_path) == []

    archived = {row["id"]: row for path in tmp_path.glob("invocation_lineage-*") for row in read_archive(path)}
    sample = rows["expired"][0]
    copy = archived[sample["id"]]
    assert set(copy) == {column.name for column in lineage.c}
    assert copy["input"] == {"text": "hello", "n": [1, 2.5]} and copy["output"] == "a bare string"
    assert copy["external_agent_name"] == "Support Bot ✓ -- select" and copy["cost_usd"] == 0.1 + 0.2
    assert datetime.fromisoformat(copy["request_timestamp"]) == sample["request_timestamp"]
    first_file = sorted(tmp_path.glob("invocation_lineage-*"))[0]
    assert gzip.open(first_file).read().decode().count("\n") == 5  # JSON lines, gzip-compressed

    again = await run_retention(engine, archive_dir=tmp_path, batch_size=5, now=NOW)
    assert [result.archived_rows for result in again] == [0, 0]
    assert len(list(tmp_path.glob("*.jsonl.gz"))) == 4


@pytest.mark.parametrize(
    ("step", "after_crash"),
    [
        # The second batch's file was written but not yet published: it is a .tmp, its rows all remain.
        ("_publish", {"tmp": 1, "pending": 0, "expired_left": 7}),
        # Published (pending) but its rows not deleted yet.
        ("_delete_ids", {"tmp": 0, "pending": 1, "expired_left": 7}),
        # Rows deleted, the file not yet marked finished.
        ("_finalise", {"tmp": 0, "pending": 1, "expired_left": 2}),
    ],
)
async def test_interrupted_run_resumes_without_losing_or_duplicating_a_row(
    engine, tmp_path, monkeypatch, step, after_crash
):
    rows = await seed(engine)
    real = getattr(retention, step)
    calls = 0

    def crash_on_second_call(*args: Any, **kwargs: Any) -> Any:
        nonlocal calls
        calls += 1
        if calls == 2:
            raise SimulatedCrash(step)
        return real(*args, **kwargs)

    async def async_crash_on_second_call(*args: Any, **kwargs: Any) -> Any:
        nonlocal calls
        calls += 1
        if calls == 2:
            raise SimulatedCrash(step)
        return await real(*args, **kwargs)

    monkeypatch.setattr(
        retention, step, async_crash_on_second_call if inspect.iscoroutinefunction(real) else crash_on_second_call
    )
    with pytest.raises(SimulatedCrash):
        await run_retention(engine, archive_dir=tmp_path, batch_size=5, now=NOW)
    monkeypatch.setattr(retention, step, real)

    names = [p.name for p in tmp_path.iterdir()]
    assert sum(name.endswith(".tmp") for name in names) == after_crash["tmp"]
    assert sum(name.endswith(".pending") for name in names) == after_crash["pending"]
    expired_ids = {r["id"] for r in rows["expired"]}
    assert len(await ids_in(engine, lineage) & expired_ids) == after_crash["expired_left"]
    assert len(archived_ids(tmp_path, "invocation_lineage")) == 5  # the first batch finished before the crash

    written: list[str] = []
    real_write = retention._write_tmp

    def spy(path: Path, batch: list[dict[str, Any]]) -> None:
        written.append(path.name)
        real_write(path, batch)

    monkeypatch.setattr(retention, "_write_tmp", spy)
    # A different batch size on restart: re-selecting the pending rows would now straddle two files.
    results = await run_retention(engine, archive_dir=tmp_path, batch_size=4, now=NOW)
    lineage_result = results[0]
    assert lineage_result.recovered_files == after_crash["pending"]
    # Only what was never published is written again; a pending batch is completed, not rewritten.
    expected_writes = {"_publish": 2, "_delete_ids": 1, "_finalise": 1}[step]
    assert sum(name.startswith("invocation_lineage-") for name in written) == expected_writes
    archived = archived_ids(tmp_path, "invocation_lineage")
    assert sorted(archived) == sorted(expired_ids)  # every expired row once: none lost, none twice
    assert len(set(archived)) == len(archived) == 12
    assert len(list(tmp_path.glob("invocation_lineage-*.jsonl.gz"))) == 3
    assert leftovers(tmp_path) == []
    assert await ids_in(engine, lineage) == {r["id"] for r in rows["kept"]}
    assert sorted(archived_ids(tmp_path, "billing_usage")) == sorted(r["id"] for r in rows["old_billing"])


async def test_a_second_run_at_the_same_time_is_refused(engine, tmp_path):
    await seed(engine)
    lock = retention._lock_directory(tmp_path)
    try:
        with pytest.raises(ConflictError, match="Another retention run is using"):
            await run_retention(engine, archive_dir=tmp_path, now=NOW)
    finally:
        lock.close()
    if engine.dialect.name == "postgresql":
        async with engine.connect() as holder:
            await holder.execute(sa.select(sa.func.pg_advisory_lock(retention._POSTGRES_LOCK_KEY)))
            with pytest.raises(ConflictError, match="working on this database"):
                await run_retention(engine, archive_dir=tmp_path / "elsewhere", now=NOW)
            await holder.execute(sa.select(sa.func.pg_advisory_unlock(retention._POSTGRES_LOCK_KEY)))
    assert len(await ids_in(engine, lineage)) == 15  # nothing was archived by the refused runs
    results = await run_retention(engine, archive_dir=tmp_path, now=NOW)
    assert results[0].archived_rows == 12


def test_cutoffs() -> None:
    assert lineage_cutoff(NOW) == datetime(2025, 12, 31, 12, 0, tzinfo=UTC)
    assert billing_cutoff(NOW) == datetime(2025, 2, 28, 12, 0, tzinfo=UTC)
    assert billing_cutoff(datetime(2026, 1, 15, tzinfo=UTC), months=1) == datetime(2025, 12, 15, tzinfo=UTC)
    with pytest.raises(ValidationError, match="days"):
        lineage_cutoff(NOW, days=0)
    with pytest.raises(ValidationError, match="months"):
        billing_cutoff(NOW, months=0)


async def test_cli_retention_run_reports_what_it_archived(engine, retention_settings, tmp_path):
    from external_agents.channels.cli.lineage import lineage_app

    await seed(engine)
    # The CLI takes its cutoff from the clock, so these are dated from now rather than from NOW.
    real_now = datetime.now(UTC)
    async with engine.begin() as connection:
        await connection.execute(lineage.update().values(request_timestamp=real_now - timedelta(days=120)))
        await connection.execute(lineage.insert(), [lineage_row(age=timedelta(0), request_timestamp=real_now)])
    env = {"DATABASE_URL": retention_settings.database_url, "KAIZEN_DATA_DIR": str(tmp_path / "data")}
    archive_dir = tmp_path / "archive"
    args = ["retention", "run", "--days", "90", "--archive-dir", str(archive_dir), "--batch-size", "4"]
    result = await asyncio.to_thread(CliRunner().invoke, lineage_app, args, env=env)
    assert result.exit_code == 0, result.output
    assert "invocation_lineage: archived 15 row(s)" in result.output
    assert "into 4 file(s)" in result.output
    assert len(archived_ids(archive_dir, "invocation_lineage")) == 15
    assert len(await ids_in(engine, lineage)) == 1

    bad = await asyncio.to_thread(CliRunner().invoke, lineage_app, ["retention", "run", "--days", "0", *args[4:]])
    assert bad.exit_code == 2


def test_archive_lines_are_utf8_json(tmp_path: Path) -> None:
    path = tmp_path / "sample.jsonl.gz"
    retention._write_tmp(path, [{"id": "x", "text": "中文 😀", "at": NOW}])
    assert (
        gzip.open(path).read()
        == json.dumps(
            {"id": "x", "text": "中文 😀", "at": NOW.isoformat()}, ensure_ascii=False, separators=(",", ":")
        ).encode()
        + b"\n"
    )
