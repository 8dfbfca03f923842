"""What one invocation costs the database (issue 12): its statements, and on PostgreSQL its round trips.

On PostgreSQL an invocation writes with two statements, each its own implicit transaction, so two round trips:
the reservation with its pending lineage row, and the record (the row's completion, the billing row, the
counters' settlement and the audit rows). SQLite runs each as a transaction of a few statements. Reads that a
cache may serve are bounded instead of counted exactly: the agent load (at most one statement) and the
caller's key lookup (authentication's, left out).
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
    agent_loads: int = 0
    # Every other statement but the key lookup.
    statements: list[str] = field(default_factory=list)
    # Transactions opened with BEGIN: on PostgreSQL a round trip for BEGIN and one for COMMIT.
    transactions: int = 0

    @property
    def round_trips(self) -> int:
        return self.agent_loads + len(self.statements) + 2 * self.transactions


@contextmanager
def counting(engine: Any) -> Iterator[Count]:
    def statement(_connection: Any, _cursor: Any, text: str, *_args: Any) -> None:
        count = _COUNTING.get()
        if count is None or "FROM api_keys" in text:
            return
        if text.startswith("SELECT") and "FROM external_agents" in text:
            count.agent_loads += 1
        else:
            count.statements.append(text)

    def begin(connection: sa.Connection) -> None:
        count = _COUNTING.get()
        if count is not None and connection.get_execution_options().get("isolation_level") != "AUTOCOMMIT":
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


async def test_an_invocation_writes_with_two_statements_and_on_postgresql_two_round_trips(
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
    [billed] = await rows(
        gateway, "SELECT count(*) AS n FROM billing_usage WHERE external_agent_id = :a", a=agent["id"]
    )
    assert billed["n"] == 2
    assert count.agent_loads <= 1
    if engine.dialect.name == "postgresql":
        assert (len(count.statements), count.transactions) == (2, 0), count.statements
        assert count.round_trips <= 3
    else:
        # The reservation's UPDATE and pending INSERT; the completion, the billing row and the audit rows.
        assert (len(count.statements), count.transactions) == (5, 2), count.statements
