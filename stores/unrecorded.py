"""Invocation records the database could not take in time, kept on local disk until it can.

`record_invocation` retries a lost database for a few seconds. An invocation still unrecorded after that has
usually been delivered already, so rather than lose its lineage, billing, budget settlement and audit rows,
the whole record is written to a file of its own under `<KAIZEN_DATA_DIR>/unrecorded/`: to a temporary name,
flushed to disk, then renamed, so a `.json` file there is always complete. Each app process replays the
directory every few seconds, writing each record in the same single transaction as a live one and deleting
its file once the database has it.

A record is never written twice: its lineage row's id is the invocation id, so a replay that finds the row
there (another process replayed it first, or the commit of a live attempt succeeded but its answer was lost)
only deletes the file. A record the database refuses outright moves to `unrecorded/refused/` and is logged
for an operator; it would be refused the same way on every replay.

For this to outlive a container, KAIZEN_DATA_DIR must be on a persistent volume.
"""

from __future__ import annotations

import json
import logging
import os
import uuid
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

import sqlalchemy as sa

from external_agents.models import TABLES
from external_agents.stores.budgets import Reservation

logger = logging.getLogger(__name__)

FORMAT_VERSION = 1
SUFFIX = ".json"


@dataclass(frozen=True, kw_only=True)
class InvocationRecord:
    """Everything one invocation writes when it ends (see stores/invocations.py)."""

    lineage_row: dict[str, Any]
    billing_row: dict[str, Any] | None
    # None when nothing was reserved.
    reservation: Reservation | None
    actual_micros: int | None
    audit_rows: list[dict[str, Any]]

    @property
    def invocation_id(self) -> str:
        return self.lineage_row["id"]


def _datetime_columns(table: str) -> frozenset[str]:
    # Our timestamp columns are TypeDecorators over DateTime (models/column_types.py).
    return frozenset(c.name for c in TABLES[table].c if isinstance(getattr(c.type, "impl", c.type), sa.DateTime))


_DATETIMES = {table: _datetime_columns(table) for table in ("invocation_lineage", "billing_usage", "audit_log")}


def _encode(value: Any) -> Any:
    if isinstance(value, datetime):
        return value.isoformat()
    raise TypeError(f"{type(value).__name__} is not JSON serializable")


def _decode_row(table: str, row: dict[str, Any]) -> dict[str, Any]:
    """A row read back from JSON, its timestamp columns datetimes again (their JSON values are ISO strings)."""
    return {
        key: datetime.fromisoformat(value) if key in _DATETIMES[table] and isinstance(value, str) else value
        for key, value in row.items()
    }


def to_json(record: InvocationRecord) -> str:
    # Rows the database dates itself (server default) are dated now, when the invocation ended, not when a
    # replay gets through: billing's date decides which budget period its cost is counted in.
    ended = record.lineage_row.get("response_timestamp")
    dated = {"created_at": ended} if ended is not None else {}
    document = {
        "version": FORMAT_VERSION,
        "lineage_row": record.lineage_row,
        "billing_row": {**dated, **record.billing_row} if record.billing_row is not None else None,
        "reservation": record.reservation.to_dict() if record.reservation is not None else None,
        "actual_micros": record.actual_micros,
        "audit_rows": [{**dated, **row} for row in record.audit_rows],
    }
    return json.dumps(document, default=_encode, ensure_ascii=False, allow_nan=False)


def from_json(text: str) -> InvocationRecord:
    document = json.loads(text)
    if document.get("version") != FORMAT_VERSION:
        raise ValueError(f"unknown unrecorded-invocation format {document.get('version')!r}")
    billing_row = document["billing_row"]
    return InvocationRecord(
        lineage_row=_decode_row("invocation_lineage", document["lineage_row"]),
        billing_row=_decode_row("billing_usage", billing_row) if billing_row is not None else None,
        reservation=Reservation.from_dict(document["reservation"]) if document["reservation"] is not None else None,
        actual_micros=document["actual_micros"],
        audit_rows=[_decode_row("audit_log", row) for row in document["audit_rows"]],
    )


class UnrecordedJournal:
    """The directory of records waiting for the database."""

    def __init__(self, directory: Path) -> None:
        self.directory = directory
        self.refused_directory = directory / "refused"

    def keep(self, record: InvocationRecord) -> Path:
        """Write `record` durably (blocking: call it in a thread); return its file."""
        # Records hold personal data (emails, inputs, outputs): readable by the service's user alone.
        self.directory.mkdir(mode=0o700, parents=True, exist_ok=True)
        final = self.directory / f"{record.invocation_id}{SUFFIX}"
        temporary = self.directory / f".{record.invocation_id}.{uuid.uuid4().hex}.tmp"
        descriptor = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        try:
            with open(descriptor, "w", encoding="utf-8") as file:
                file.write(to_json(record))
                file.flush()
                os.fsync(file.fileno())
            os.replace(temporary, final)
        except BaseException:
            temporary.unlink(missing_ok=True)
            raise
        # The rename itself is durable only once the directory is.
        directory = os.open(self.directory, os.O_RDONLY)
        try:
            os.fsync(directory)
        finally:
            os.close(directory)
        return final

    def pending(self) -> list[Path]:
        """The complete records waiting, oldest first."""
        if not self.directory.is_dir():
            return []
        files = [p for p in self.directory.iterdir() if p.suffix == SUFFIX and p.is_file()]
        return sorted(files, key=_modified)

    def read(self, path: Path) -> InvocationRecord | None:
        """The record in `path`; None when another process replayed it meanwhile. An unreadable file is refused."""
        try:
            return from_json(path.read_text(encoding="utf-8"))
        except FileNotFoundError:
            return None
        except (ValueError, KeyError, TypeError, AttributeError) as exc:
            self.refuse(path, f"unreadable ({type(exc).__name__})")
            return None

    def forget(self, path: Path) -> None:
        """The record is in the database: delete its file."""
        path.unlink(missing_ok=True)

    def refuse(self, path: Path, why: str) -> None:
        """Set a record the database will not take aside, for an operator to look at."""
        self.refused_directory.mkdir(parents=True, exist_ok=True)
        try:
            path.replace(self.refused_directory / path.name)
        except FileNotFoundError:
            return
        logger.error("invocation.record_refused file=%s reason=%s", path.name, why)


def _modified(path: Path) -> float:
    try:
        return path.stat().st_mtime
    except FileNotFoundError:
        return 0.0
