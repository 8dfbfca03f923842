"""PostgreSQL stopped mid-load and started again, on a private PostgreSQL instance of our own.

Eight clients invoke one agent in a loop; PostgreSQL is stopped for two seconds (then, in a second test, for
twelve: longer than a record's retries) and started again. Properties:
- requests during the outage get 503 with a clear detail, never a 500, and none hangs past the bound
  (the webhook timeout plus slack; a refused database connection fails at once);
- service resumes after the restart;
- afterwards, every invocation that returned 2xx has its lineage and billing rows, and deliveries and records
  reconcile exactly, by invocation id: no platform received a delivery that was not recorded, and nothing
  is recorded as delivered that the platform never received. The budget counters are compared with billing.

The platform answers after 50 ms, so some invocations are inside their delivery when the database goes away:
the case where delivery succeeded and the record that follows cannot be written. In the long outage those
records wait in the app's journal on disk and are written once PostgreSQL is back.

Run: pytest tests/faults/test_postgres_faults.py -s
"""

from __future__ import annotations

import asyncio
import time
from collections import Counter
from collections.abc import Iterator
from contextlib import ExitStack
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import pytest

from external_agents.stores.invocations import RECORD_RETRY_SECONDS
from tests.factories import UNLIMITED, sql
from tests.faults.support import SECRETS, RoundRobin, private_postgres, register, report, secrets_in_logs, summary_ms
from tests.platform_server import PlatformServer, ScriptedResponse
from tests.process_servers import HEADERS, app_env, app_server, fresh_database

REDIS_URL = "redis://127.0.0.1:6379/12"
WEBHOOK_TIMEOUT_SECONDS = 2.0
# No request may take longer than one delivery attempt plus this (a refused database connection fails at once).
LATENCY_BOUND_SECONDS = WEBHOOK_TIMEOUT_SECONDS + 3.0
OUTAGE_SECONDS = 2.0
# Longer than a record's retries (stores.invocations.RECORD_RETRY_SECONDS), so records go to the journal.
LONG_OUTAGE_SECONDS = 12.0
PLATFORM_DELAY_SECONDS = 0.05


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Any]]:
    data_dir = tmp_path_factory.mktemp("postgres-faults")
    with ExitStack() as stack:
        postgres = stack.enter_context(private_postgres())
        database = postgres.url("ea_pg_faults")
        fresh_database(database, str(data_dir))
        platform = PlatformServer()
        stack.callback(platform.close)
        env = app_env(
            database_url=database,
            redis_url=REDIS_URL,
            data_dir=str(data_dir),
            DATABASE_POOL_SIZE="10",
            EXTERNAL_AGENT_WEBHOOK_TIMEOUT_SECONDS=str(WEBHOOK_TIMEOUT_SECONDS),
        )
        app = stack.enter_context(app_server(env, log_dir=data_dir))
        yield {"postgres": postgres, "database": database, "platform": platform, "app": app, "log_dir": data_dir}


@dataclass
class Outcome:
    status: int
    seconds: float
    invocation_id: str | None
    body: dict[str, Any] = field(repr=False)


async def loop(client: RoundRobin, agent_id: str, until: float, outcomes: list[Outcome]) -> None:
    while time.perf_counter() < until:
        started = time.perf_counter()
        try:
            response = await client.request(
                "POST", f"/api/external-agents/{agent_id}/invoke", json={"input": "pg"}, headers=HEADERS
            )
        except httpx.HTTPError as exc:
            outcomes.append(Outcome(0, time.perf_counter() - started, None, {"error": repr(exc)}))
            continue
        body = response.json()
        outcomes.append(Outcome(response.status_code, time.perf_counter() - started, body.get("invocation_id"), body))
        await asyncio.sleep(0.005)


@dataclass
class Run:
    outcomes: list[Outcome]
    statuses: Counter
    delivered: list[str]
    lineage: dict[str, str]
    billed: set[str]
    billed_micros: int
    counted_micros: int
    lines: list[str]

    @property
    def unrecorded_ok(self) -> list[str]:
        succeeded = [o.invocation_id for o in self.outcomes if o.status == 200]
        return [i for i in succeeded if self.lineage.get(i) != "success" or i not in self.billed]

    @property
    def delivered_unrecorded(self) -> list[str]:
        return sorted(set(self.delivered) - set(self.lineage))

    @property
    def recorded_undelivered(self) -> list[str]:
        return sorted(i for i, status in self.lineage.items() if status == "success" and i not in self.delivered)

    @property
    def duplicates(self) -> list[str]:
        return [i for i, n in Counter(self.delivered).items() if n > 1]


def journalled(stack: dict[str, Any]) -> list[Path]:
    return sorted((Path(stack["log_dir"]) / "unrecorded").glob("*.json"))


async def outage_under_load(stack: dict[str, Any], path: str, outage_seconds: float) -> Run:
    """Eight clients invoke in a loop; PostgreSQL stops for `outage_seconds` and starts again; once the journal
    has drained (records it kept during the outage), everything is read back."""
    platform: PlatformServer = stack["platform"]
    database: str = stack["database"]
    platform.script(path, *[ScriptedResponse(200, body="ok", delay=PLATFORM_DELAY_SECONDS)] * 20_000)
    client = RoundRobin([stack["app"]], timeout=60)
    outcomes: list[Outcome] = []
    try:
        agent_id = await register(client, platform.base_url, path, **{**UNLIMITED, "cost_per_execution": 0.01})
        started = time.perf_counter()
        until = started + 1.5 + outage_seconds + 3.0
        workers = [asyncio.create_task(loop(client, agent_id, until, outcomes)) for _ in range(8)]
        await asyncio.sleep(1.5)
        stopped_at = time.perf_counter() - started
        await asyncio.to_thread(stack["postgres"].stop)
        # A caller arriving during the outage: the eight looping clients may all be mid-delivery when it begins,
        # then wait out the record's retries, and would never ask the app anything while the database is away.
        outage_ends = time.perf_counter() + outage_seconds * 0.8
        workers.append(asyncio.create_task(loop(client, agent_id, outage_ends, outcomes)))
        await asyncio.sleep(outage_seconds)
        await asyncio.to_thread(stack["postgres"].start)
        restarted_at = time.perf_counter() - started
        await asyncio.gather(*workers)
    finally:
        await client.aclose()
    kept = len(journalled(stack))
    drain_started = time.perf_counter()
    for _ in range(150):  # the app looks every 5 s; 30 s at most
        if not journalled(stack):
            break
        await asyncio.sleep(0.2)
    drained_in = time.perf_counter() - drain_started

    lineage = dict(sql(database, "SELECT id, status FROM invocation_lineage WHERE external_agent_id = %s", agent_id))
    billed = {row[0] for row in sql(database, "SELECT id FROM billing_usage WHERE external_agent_id = %s", agent_id)}
    [(billed_micros,)] = sql(
        database,
        "SELECT coalesce(sum(round(cost_usd * 1000000)), 0) FROM billing_usage WHERE external_agent_id = %s",
        agent_id,
    )
    [(counted_micros,)] = sql(
        database, "SELECT coalesce(max(spent_micros), 0) FROM budget_counters WHERE external_agent_id = %s", agent_id
    )
    run = Run(
        outcomes=outcomes,
        statuses=Counter(o.status for o in outcomes),
        delivered=[r.headers.get("X-Kaizen-Invocation-ID") for r in platform.requests(path)],
        lineage=lineage,
        billed=billed,
        billed_micros=billed_micros,
        counted_micros=counted_micros,
        lines=[],
    )
    run.lines = [
        f"PostgreSQL stopped at {stopped_at:.1f} s for {outage_seconds:g} s (back at {restarted_at:.1f} s), "
        f"8 clients looping; platform answers in {PLATFORM_DELAY_SECONDS * 1000:.0f} ms:",
        f"responses {dict(run.statuses)}; latency {summary_ms([o.seconds for o in outcomes])}",
        f"503 details: {sorted({o.body.get('detail') for o in outcomes if o.status == 503})}",
        f"records kept on disk during the outage: {kept}, written {drained_in:.1f} s after the load ended",
        f"platform deliveries {len(run.delivered)}, lineage rows {len(lineage)} {dict(Counter(lineage.values()))}, "
        f"billing rows {len(billed)}",
        f"2xx without lineage+billing: {len(run.unrecorded_ok)}; delivered but not recorded: "
        f"{len(run.delivered_unrecorded)}; recorded success never delivered: {len(run.recorded_undelivered)}; "
        f"delivered twice: {len(run.duplicates)}",
        f"budget counter ${counted_micros / 1e6:.2f} against billed ${billed_micros / 1e6:.2f}",
    ]
    return run


def assert_reconciled(run: Run) -> None:
    assert run.statuses[500] == 0 and run.statuses[0] == 0, run.statuses
    assert set(run.statuses) <= {200, 503}, run.statuses
    answered_503 = [o for o in run.outcomes if o.status == 503]
    assert answered_503, "the outage was not observed: no request got a 503"
    assert all(o.body["error_code"] == "SERVICE_UNAVAILABLE" and "database" in o.body["detail"] for o in answered_503)
    assert any(o.status == 200 for o in run.outcomes[-20:]), "service did not resume after the restart"
    assert not run.unrecorded_ok, run.unrecorded_ok[:5]
    assert not run.recorded_undelivered and not run.duplicates
    assert not run.delivered_unrecorded, (
        f"{len(run.delivered_unrecorded)} invocations reached the platform but have no lineage or billing row: "
        f"{run.delivered_unrecorded[:5]}"
    )
    assert run.counted_micros == run.billed_micros


async def test_postgres_restart_mid_load_gives_503s_and_reconciles(stack, capsys):
    run = await outage_under_load(stack, "/pg-load", OUTAGE_SECONDS)
    report(capsys, run.lines)
    assert_reconciled(run)
    assert max(o.seconds for o in run.outcomes) <= LATENCY_BOUND_SECONDS


async def test_an_outage_longer_than_the_record_retries_is_recorded_from_the_journal(stack, capsys):
    """Deliveries in flight when PostgreSQL went away outlast the record's retries: their records wait on disk,
    the callers get their 200, and the app writes the records once PostgreSQL is back."""
    run = await outage_under_load(stack, "/pg-long", LONG_OUTAGE_SECONDS)
    report(capsys, run.lines)
    assert_reconciled(run)
    assert max(o.seconds for o in run.outcomes) <= RECORD_RETRY_SECONDS + LATENCY_BOUND_SECONDS


def test_no_server_log_holds_a_secret(stack):
    found = secrets_in_logs(Path(stack["log_dir"]), SECRETS)
    assert not found, found
