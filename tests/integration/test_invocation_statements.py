"""What one invocation costs the database (issue 12): its statements, and on PostgreSQL its round trips.

On PostgreSQL an invocation is three statements, each its own implicit transaction, so three round trips: the
agent load, the reservation with its pending lineage row, and the record (completion, billing, settlement and
audit rows in one statement). SQLite runs the reservation and the record each as a transaction of a few
statements. The caller's key lookup is left out: it belongs to authentication, which may cache it.
"""

from __future__ import annotations

import contextvars
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

import sqlalchemy as sa

from tests.factories import invoke, register, rows
from tests.platform_server import ScriptedResponse

# Set by the test around its one request: statements of the app's background loops (the pending-row sweeper)
# run in tasks that never saw it, so they are not counted.
_COUNTING: contextvars.ContextVar[Count | None] = contextvars.ContextVar("counting", default=None)


@dataclass
class Count:
    statements: list[str] = field(default_factory=list)
    # Transactions opened by BEGIN (each a round trip for BEGIN and one for COMMIT on PostgreSQL).
    transactions: int = 0

    @property
    def round_trips(self) -> int:
        return len(self.statements) + 2 * self.transactions


def _autocommit(connection: sa.Connection) -> bool:
    return connection.get_execution_options().get("isolation_level") == "AUTOCOMMIT"


@contextmanager
def counting(engine: Any) -> Iterator[Count]:
    def statement(_connection: Any, _cursor: Any, text: str, *_args: Any) -> None:
        count = _COUNTING.get()
        if count is not None and "api_keys" not in text:
            count.statements.append(text)

    def begin(connection: sa.Connection) -> None:
        count = _COUNTING.get()
        if count is not None and not _autocommit(connection):
            count.transactions += 1

    count = Count()
    token = _COUNTING.set(count)
    sa.event.listen(engine.sync_engine, "before_cursor_execute", statement)
    sa.event.listen(engine.sync_engine, "begin", begin)
    try:
        yield count
    finally:
        sa.event.remove(engine.sync_engine, "before_cursor_execute", statement)
        sa.event.remove(engine.sync_engine, "begin", begin)
        _COUNTING.reset(token)


async def test_one_invocation_is_three_statements_on_postgresql_each_one_round_trip(
    gateway, client, org, platform_server
):
    platform_server.script("/counted", ScriptedResponse(200, body={"answer": 42}))
    agent = await register(client, org, platform_server, path="/counted", cost_per_execution=0.05)
    engine = gateway.external_agents.engine
    # The agent's first invocation seeds its day and month counters; the count is of every one after it.
    assert (await invoke(client, org, agent["id"])).status_code == 200

    with counting(engine) as count:
        response = await invoke(client, org, agent["id"])

    assert response.status_code == 200, response.text
    found = await rows(gateway, "SELECT status FROM invocation_lineage WHERE external_agent_id = :a", a=agent["id"])
    assert [row["status"] for row in found] == ["success", "success"]
    if engine.dialect.name == "postgresql":
        assert (len(count.statements), count.round_trips) == (3, 3), count.statements
    else:
        # The agent load; the reservation's UPDATE and pending INSERT; the completion, billing and audit rows.
        assert (len(count.statements), count.transactions) == (6, 2), count.statements
