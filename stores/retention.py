"""Retention: archive old lineage and billing rows to gzip-compressed JSON-lines files, then delete them.

Lineage older than N days (default 90) and billing usage older than 13 months leave the database in batches.
Each batch moves through three durable states, named by its file's suffix, so a run stopped at any point
(crash, kill, power loss after an fsync) resumes without losing or duplicating a row:

1. `<name>.tmp`: being written. Its rows are all still in the database; a restart removes the file.
2. `<name>.pending`: written and fsynced, then atomically renamed, so it is complete. Its rows may or may not
   have been deleted yet; a restart deletes whichever still exist (the file already holds them, it is not
   written again) and finalises it.
3. `<name>.jsonl.gz`: its rows are archived and deleted. Nothing touches it again.

A batch's rows are deleted by exactly the ids in its file, in one transaction. Old batches are always
taken from the front of the expired range, so a restart never selects a row that a pending file holds:
pending files are settled before anything new is selected. One run at a time per archive directory (a
file lock) and, on PostgreSQL, per database (an advisory lock): two runs would archive the same rows twice.
"""

from __future__ import annotations

import asyncio
import calendar
import fcntl
import gzip
import hashlib
import json
import os
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any, TextIO

import sqlalchemy as sa
from sqlalchemy.ext.asyncio import AsyncEngine

from external_agents.errors import ConflictError, ValidationError
from external_agents.models import TABLES

DEFAULT_LINEAGE_DAYS = 90
DEFAULT_BILLING_MONTHS = 13
DEFAULT_BATCH_SIZE = 5_000
ARCHIVE_SUFFIX = ".jsonl.gz"
PENDING_SUFFIX = ".pending"
TMP_SUFFIX = ".tmp"
LOCK_FILE = ".retention.lock"
# Any fixed number; PostgreSQL advisory locks are keyed by a bigint shared by the whole server.
_POSTGRES_LOCK_KEY = 0x45A_0002

OnBatch = Callable[[str, int], None]


@dataclass(frozen=True)
class RetentionTarget:
    """A table whose old rows are archived, and the column that says how old a row is."""

    table: str
    timestamp_column: str


LINEAGE = RetentionTarget("invocation_lineage", "request_timestamp")
BILLING = RetentionTarget("billing_usage", "created_at")


@dataclass(frozen=True, kw_only=True)
class RetentionResult:
    table: str
    cutoff: datetime
    archived_rows: int
    # Files written by this run, and interrupted batches of an earlier run that this run completed.
    files: tuple[Path, ...]
    recovered_files: int


def lineage_cutoff(now: datetime, *, days: int = DEFAULT_LINEAGE_DAYS) -> datetime:
    if days < 1:
        raise ValidationError("days: must be at least 1")
    return now - timedelta(days=days)


def billing_cutoff(now: datetime, *, months: int = DEFAULT_BILLING_MONTHS) -> datetime:
    """The same day and time `months` calendar months earlier (the 31st becomes the month's last day)."""
    if months < 1:
        raise ValidationError("months: must be at least 1")
    index = now.year * 12 + now.month - 1 - months
    year, month = divmod(index, 12)
    month += 1
    return now.replace(year=year, month=month, day=min(now.day, calendar.monthrange(year, month)[1]))


def retention_cutoffs(
    now: datetime, *, lineage_days: int = DEFAULT_LINEAGE_DAYS, billing_months: int = DEFAULT_BILLING_MONTHS
) -> dict[RetentionTarget, datetime]:
    """What each table keeps: rows at or after its cutoff stay."""
    return {LINEAGE: lineage_cutoff(now, days=lineage_days), BILLING: billing_cutoff(now, months=billing_months)}


def _expired(target: RetentionTarget, cutoff: datetime) -> sa.ColumnElement[bool]:
    return TABLES[target.table].c[target.timestamp_column] < cutoff


async def count_expired(engine: AsyncEngine, *, target: RetentionTarget, cutoff: datetime) -> int:
    table = TABLES[target.table]
    async with engine.connect() as connection:
        query = sa.select(sa.func.count()).select_from(table).where(_expired(target, cutoff))
        return (await connection.execute(query)).scalar_one()


async def _select_batch(
    engine: AsyncEngine, *, target: RetentionTarget, cutoff: datetime, batch_size: int
) -> list[dict[str, Any]]:
    table = TABLES[target.table]
    query = (
        sa.select(table)
        .where(_expired(target, cutoff))
        .order_by(table.c[target.timestamp_column], table.c.id)
        .limit(batch_size)
    )
    async with engine.connect() as connection:
        return [dict(r._mapping) for r in await connection.execute(query)]


async def _delete_ids(engine: AsyncEngine, *, target: RetentionTarget, ids: list[str]) -> int:
    """Delete exactly these rows, all or none."""
    table = TABLES[target.table]
    async with engine.begin() as connection:
        result = await connection.execute(table.delete().where(table.c.id.in_(ids)))
    return result.rowcount


def _archive_line(row: dict[str, Any]) -> str:
    flat = {key: item.isoformat() if isinstance(item, datetime) else item for key, item in row.items()}
    return json.dumps(flat, ensure_ascii=False, separators=(",", ":")) + "\n"


def _batch_name(target: RetentionTarget, rows: list[dict[str, Any]]) -> str:
    """Sortable by time, and unique: the digest covers every id of the batch."""
    first: datetime = rows[0][target.timestamp_column]
    digest = hashlib.sha256("\n".join(row["id"] for row in rows).encode()).hexdigest()[:16]
    return f"{target.table}-{first.astimezone(UTC):%Y%m%dT%H%M%S%fZ}-{digest}"


def _fsync_directory(directory: Path) -> None:
    fd = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _write_tmp(path: Path, rows: list[dict[str, Any]]) -> None:
    with path.open("wb") as raw:
        # mtime=0: the same rows always make the same bytes.
        with gzip.GzipFile(fileobj=raw, mode="wb", mtime=0) as compressed:
            for row in rows:
                compressed.write(_archive_line(row).encode())
        raw.flush()
        os.fsync(raw.fileno())


def _publish(tmp: Path, pending: Path) -> None:
    """Make a complete batch file visible as pending; the rename is atomic and made durable."""
    os.replace(tmp, pending)
    _fsync_directory(pending.parent)


def _finalise(pending: Path) -> Path:
    final = pending.with_name(pending.name.removesuffix(PENDING_SUFFIX) + ARCHIVE_SUFFIX)
    os.replace(pending, final)
    _fsync_directory(final.parent)
    return final


def read_archive(path: Path) -> list[dict[str, Any]]:
    """The rows of an archive (or pending) file, as written."""
    with gzip.open(path, "rt", encoding="utf-8") as lines:
        return [json.loads(line) for line in lines]


async def _write_batch(archive_dir: Path, *, target: RetentionTarget, rows: list[dict[str, Any]]) -> Path:
    name = _batch_name(target, rows)
    tmp = archive_dir / (name + TMP_SUFFIX)
    pending = archive_dir / (name + PENDING_SUFFIX)
    await asyncio.to_thread(_write_tmp, tmp, rows)
    await asyncio.to_thread(_publish, tmp, pending)
    return pending


def _leftovers(archive_dir: Path, target: RetentionTarget) -> list[Path]:
    """Remove the target's unfinished files; return its pending ones, oldest first."""
    prefix = f"{target.table}-"
    for tmp in archive_dir.glob(f"{prefix}*{TMP_SUFFIX}"):
        tmp.unlink()
    return sorted(archive_dir.glob(f"{prefix}*{PENDING_SUFFIX}"))


async def _recover(engine: AsyncEngine, *, target: RetentionTarget, archive_dir: Path) -> int:
    """Settle what an interrupted run left: drop unfinished files, complete pending batches. Returns how many."""
    completed = 0
    for pending in await asyncio.to_thread(_leftovers, archive_dir, target):
        rows = await asyncio.to_thread(read_archive, pending)
        await _delete_ids(engine, target=target, ids=[row["id"] for row in rows])
        await asyncio.to_thread(_finalise, pending)
        completed += 1
    return completed


async def archive_expired(
    engine: AsyncEngine,
    *,
    target: RetentionTarget,
    cutoff: datetime,
    archive_dir: Path,
    batch_size: int = DEFAULT_BATCH_SIZE,
    on_batch: OnBatch | None = None,
) -> RetentionResult:
    """Archive and delete every row of `target` older than `cutoff`, batch by batch (see the module doc)."""
    recovered = await _recover(engine, target=target, archive_dir=archive_dir)
    files: list[Path] = []
    archived = 0
    while rows := await _select_batch(engine, target=target, cutoff=cutoff, batch_size=batch_size):
        pending = await _write_batch(archive_dir, target=target, rows=rows)
        await _delete_ids(engine, target=target, ids=[row["id"] for row in rows])
        files.append(await asyncio.to_thread(_finalise, pending))
        archived += len(rows)
        if on_batch is not None:
            on_batch(target.table, len(rows))
    return RetentionResult(
        table=target.table, cutoff=cutoff, archived_rows=archived, files=tuple(files), recovered_files=recovered
    )


def _lock_directory(archive_dir: Path) -> TextIO:
    """An exclusive lock on the archive directory, held while the returned file stays open."""
    lock = (archive_dir / LOCK_FILE).open("a")
    try:
        fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        lock.close()
        raise ConflictError(f"Another retention run is using {archive_dir}") from None
    return lock


@asynccontextmanager
async def _exclusive_run(engine: AsyncEngine, archive_dir: Path) -> AsyncIterator[None]:
    with await asyncio.to_thread(_lock_directory, archive_dir):
        if engine.dialect.name != "postgresql":
            yield
            return
        async with engine.connect() as connection:
            locked = (await connection.execute(sa.select(sa.func.pg_try_advisory_lock(_POSTGRES_LOCK_KEY)))).scalar()
            if not locked:
                raise ConflictError("Another retention run is working on this database")
            try:
                yield
            finally:
                await connection.execute(sa.select(sa.func.pg_advisory_unlock(_POSTGRES_LOCK_KEY)))
                await connection.commit()


async def run_retention(
    engine: AsyncEngine,
    *,
    archive_dir: Path,
    lineage_days: int = DEFAULT_LINEAGE_DAYS,
    billing_months: int = DEFAULT_BILLING_MONTHS,
    batch_size: int = DEFAULT_BATCH_SIZE,
    now: datetime | None = None,
    on_batch: OnBatch | None = None,
) -> list[RetentionResult]:
    """Archive lineage older than `lineage_days` and billing usage older than `billing_months`."""
    if batch_size < 1:
        raise ValidationError("batch_size: must be at least 1")
    cutoffs = retention_cutoffs(now or datetime.now(UTC), lineage_days=lineage_days, billing_months=billing_months)
    await asyncio.to_thread(archive_dir.mkdir, parents=True, exist_ok=True)
    async with _exclusive_run(engine, archive_dir):
        return [
            await archive_expired(
                engine,
                target=target,
                cutoff=cutoff,
                archive_dir=archive_dir,
                batch_size=batch_size,
                on_batch=on_batch,
            )
            for target, cutoff in cutoffs.items()
        ]
