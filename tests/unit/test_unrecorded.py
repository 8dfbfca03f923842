"""stores/unrecorded.py without a database: a record's JSON round trip, and the journal's files on disk."""

from __future__ import annotations

import json
import os
import stat
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from external_agents.stores.budgets import Reservation
from external_agents.stores.unrecorded import InvocationRecord, UnrecordedJournal, from_json, to_json

STARTED = datetime(2026, 3, 1, 12, 0, tzinfo=UTC)
ENDED = STARTED + timedelta(milliseconds=250)
RESERVATION = Reservation(
    agent_id="agent-1",
    amount_micros=50_000,
    day_id="agent-1:d:2026-03-01",
    month_id="agent-1:m:2026-03",
    day_spent_micros=50_000,
    month_spent_micros=150_000,
    day_executions=1,
    month_executions=3,
)


def make_record(invocation_id: str = "inv-1", *, reservation: Reservation | None = RESERVATION) -> InvocationRecord:
    return InvocationRecord(
        lineage_row={
            "id": invocation_id,
            "input": {"text": "DELETE FROM x; ${agent_id} 😀", "ratio": 0.1, "big": 10**30},
            "output": None,
            "request_timestamp": STARTED,
            "response_timestamp": ENDED,
        },
        billing_row={"id": invocation_id, "cost_usd": 0.02},
        reservation=reservation,
        actual_micros=20_000,
        audit_rows=[{"event_type": "external_agent.invoked", "details": {"invocation_id": invocation_id}}],
    )


def test_a_record_comes_back_from_json_with_its_types() -> None:
    record = make_record()

    back = from_json(to_json(record))

    assert back.invocation_id == "inv-1"
    assert back.lineage_row == record.lineage_row  # datetimes are datetimes again, 10**30 exact
    assert back.reservation == RESERVATION
    assert back.actual_micros == 20_000


def test_rows_the_database_would_date_are_dated_when_the_invocation_ended() -> None:
    back = from_json(to_json(make_record()))

    # A replay days later must still count the cost in the budget period the invocation ran in.
    assert back.billing_row == {"id": "inv-1", "cost_usd": 0.02, "created_at": ENDED}
    assert [row["created_at"] for row in back.audit_rows] == [ENDED]


def test_a_record_without_a_reservation_or_billing_round_trips() -> None:
    record = InvocationRecord(
        lineage_row={"id": "inv-2", "request_timestamp": STARTED, "response_timestamp": None},
        billing_row=None,
        reservation=None,
        actual_micros=None,
        audit_rows=[],
    )

    assert from_json(to_json(record)) == record


def test_an_unknown_format_version_is_refused() -> None:
    document = json.loads(to_json(make_record()))
    document["version"] = 99

    with pytest.raises(ValueError, match="unknown unrecorded-invocation format 99"):
        from_json(json.dumps(document))


@pytest.fixture
def journal(tmp_path: Path) -> UnrecordedJournal:
    return UnrecordedJournal(tmp_path / "unrecorded")


def test_kept_records_are_complete_private_files_listed_oldest_first(journal: UnrecordedJournal) -> None:
    assert journal.pending() == []  # no directory yet

    first = journal.keep(make_record("inv-a"))
    second = journal.keep(make_record("inv-b"))
    os.utime(first, (1_000, 1_000))  # the older one, whatever the file system's timestamp resolution

    assert journal.pending() == [first, second]
    assert sorted(p.name for p in journal.directory.iterdir()) == ["inv-a.json", "inv-b.json"]  # no temporaries
    assert stat.S_IMODE(first.stat().st_mode) == 0o600
    assert stat.S_IMODE(journal.directory.stat().st_mode) == 0o700
    assert journal.read(first) == from_json(to_json(make_record("inv-a")))


def test_forget_deletes_and_a_vanished_file_reads_as_none(journal: UnrecordedJournal) -> None:
    path = journal.keep(make_record())

    journal.forget(path)
    journal.forget(path)  # another process got there first: not an error

    assert journal.pending() == []
    assert journal.read(path) is None


def test_an_unreadable_file_is_set_aside_for_an_operator(journal: UnrecordedJournal, caplog) -> None:
    journal.directory.mkdir(parents=True)
    broken = journal.directory / "inv-broken.json"
    broken.write_text('{"version": 1, "lineage_row": ', encoding="utf-8")

    assert journal.read(broken) is None

    assert journal.pending() == []
    assert (journal.refused_directory / "inv-broken.json").exists()
    assert "invocation.record_refused file=inv-broken.json reason=unreadable (JSONDecodeError)" in caplog.text
