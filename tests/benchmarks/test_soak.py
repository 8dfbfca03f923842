"""Memory soak: 100,000 invocations on one worker process, its resident memory sampled as they go.

One `external-agents serve` process (one worker, PostgreSQL + Redis) invokes an agent on the instant platform,
driven by 32 keep-alive connections of the lean client, so the load generator costs little of the 2 cores.
Every 5,000 completed invocations the server's RSS (VmRSS in /proc/<pid>/status) is read; the curve is printed.

Asserted:
- RSS <= 200 MiB at every sample;
- no growth over the second half: RSS at the end minus RSS at the half-way sample <= 5 MiB. Why 5 MiB: the
  allocators return memory to the OS in steps (glibc trims its heap only from the top, pymalloc frees a 1 MiB
  arena only once every object in it is gone), so a process that does not grow can still move by a MiB or two
  between samples (seen here: 0.2 MiB); a leak of 110 bytes or more per invocation (50,000 x 110 B = 5.2 MiB)
  fails, one of a lineage row's size (~1 kB) by ten times the tolerance;
- the record is exact: every invocation answered 200, and platform hits = lineage rows = billing rows =
  invocations, for the soak's agent.

SOAK_INVOCATIONS sets the count for a quick run (default the issue's 100,000: 11 minutes at 150/s, over an hour
on this 2-core machine while other work shares it). The platform's timeout is raised so that a slow machine
does not make the app retry a delivery, which the platform would count twice.
It runs on a database of its own, `ea_soak_bench` on the server of TEST_POSTGRES_URL, and TEST_REDIS_URL.

Run: pytest tests/benchmarks/test_soak.py -v
"""

from __future__ import annotations

import asyncio
import os
import time
import uuid
from collections.abc import Callable
from pathlib import Path

import httpx
import pytest
import redis
import sqlalchemy as sa

from external_agents.nodes.governance.rate_limiter import RedisRateLimiter
from tests.benchmarks.lean_http_client import LeanConnection
from tests.factories import TEST_POSTGRES_URL, TEST_REDIS_URL, UNLIMITED
from tests.process_servers import HEADERS, app_env, app_process, fresh_database, instant_platform

pytestmark = [pytest.mark.postgres, pytest.mark.redis]

SOAK_DB = sa.make_url(TEST_POSTGRES_URL).set(database="ea_soak_bench").render_as_string(hide_password=False)
INVOCATIONS = int(os.environ.get("SOAK_INVOCATIONS", "100000"))
SAMPLE_EVERY = 5_000
CONNECTIONS = 32
RSS_CEILING_MIB = 200.0
SECOND_HALF_GROWTH_MIB = 5.0
PLATFORM_PATH = "/soak"


def rss_mib(pid: int) -> float:
    """The process's resident set size, in MiB."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    raise RuntimeError(f"no VmRSS for process {pid}")


async def register_agent(base: str, platform: str) -> str:
    body = {
        "name": f"soak-{uuid.uuid4().hex[:8]}",
        "platform": "custom_http",
        "platform_config": {"url": f"{platform}{PLATFORM_PATH}"},
        "auth_config": {"auth_type": "bearer_token", "credentials": {"token": "soak-token"}},
        **UNLIMITED,
    }
    async with httpx.AsyncClient(base_url=base) as http:
        response = await http.post("/api/external-agents", json=body, headers=HEADERS)
    assert response.status_code == 201, response.text
    return response.json()["id"]


async def soak(base: str, agent_id: str, *, total: int, sample: Callable[[int], None]) -> dict[int, int]:
    """Send `total` invocations over CONNECTIONS connections; call `sample(done)` at every SAMPLE_EVERY-th
    answer. Returns the count of each status code."""
    path = f"/api/external-agents/{agent_id}/invoke"
    connections = [await LeanConnection.open(base) for _ in range(CONNECTIONS)]
    remaining = iter(range(total))
    statuses: dict[int, int] = {}
    done = 0

    async def client_loop(connection: LeanConnection) -> None:
        nonlocal done
        for index in remaining:
            status, _body = await connection.post(path, {"input": f"soak {index}"}, HEADERS)
            statuses[status] = statuses.get(status, 0) + 1
            done += 1
            if done % SAMPLE_EVERY == 0 or done == total:
                sample(done)

    try:
        await asyncio.gather(*(client_loop(connection) for connection in connections))
    finally:
        for connection in connections:
            await connection.close()
    return statuses


def recorded_rows(agent_id: str) -> tuple[int, int, int]:
    """The agent's lineage rows, those of them successful, and its billing rows."""
    engine = sa.create_engine(SOAK_DB.replace("postgresql://", "postgresql+psycopg2://"))
    try:
        with engine.connect() as connection:
            lineage, successes = connection.execute(
                sa.text(
                    "SELECT count(*), count(*) FILTER (WHERE status = 'success') FROM invocation_lineage "
                    "WHERE external_agent_id = :id"
                ),
                {"id": agent_id},
            ).one()
            billing = connection.execute(
                sa.text("SELECT count(*) FROM billing_usage WHERE external_agent_id = :id"), {"id": agent_id}
            ).scalar_one()
    finally:
        engine.dispose()
    return lineage, successes, billing


def forget_rate_limit_keys(agent_id: str) -> None:
    """Delete the agent's sliding-window log: INVOCATIONS entries would otherwise hold Redis memory for a day."""
    client = redis.Redis.from_url(TEST_REDIS_URL)
    try:
        client.delete(*RedisRateLimiter(client).keys_for(agent_id))  # type: ignore[arg-type]  # only names keys
    finally:
        client.close()


async def test_memory_stays_flat_over_a_soak(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert INVOCATIONS >= 2 * SAMPLE_EVERY, "SOAK_INVOCATIONS must allow a half-way and a final sample"
    fresh_database(SOAK_DB, str(tmp_path))
    # A delivery timed out is retried, and the platform then counts it twice; on a busy shared machine the
    # instant platform has been seen to take over 5 s, so the timeout is long enough never to fire here.
    env = app_env(
        database_url=SOAK_DB,
        redis_url=TEST_REDIS_URL,
        data_dir=str(tmp_path),
        EXTERNAL_AGENT_WEBHOOK_TIMEOUT_SECONDS="120",
    )
    with instant_platform(log_dir=tmp_path) as platform, app_process(env, log_dir=tmp_path) as (base, server):
        agent_id = await register_agent(base, platform)
        curve: list[tuple[int, float]] = []
        start = time.perf_counter()

        def sample(done: int) -> None:
            """Record and print at once, so a run of a quarter of an hour shows its curve as it goes."""
            curve.append((done, rss_mib(server.pid)))
            with capsys.disabled():
                print(f"    {done:>12,} {curve[-1][1]:>9.1f} {time.perf_counter() - start:>10.0f}", flush=True)

        with capsys.disabled():
            print()
            print(f"    soak: {INVOCATIONS:,} invocations, one worker, {CONNECTIONS} connections, PostgreSQL + Redis")
            print(f"    {'invocations':>12} {'RSS MiB':>9} {'elapsed s':>10}")
        sample(0)
        try:
            statuses = await soak(base, agent_id, total=INVOCATIONS, sample=sample)
        finally:
            forget_rate_limit_keys(agent_id)
        elapsed = time.perf_counter() - start
        async with httpx.AsyncClient() as http:
            delivered = (await http.get(f"{platform}/count")).json().get(PLATFORM_PATH, 0)
    lineage, successes, billing = recorded_rows(agent_id)

    half = next(rss for done, rss in curve if done >= INVOCATIONS // 2)
    end = curve[-1][1]
    peak = max(rss for _, rss in curve)
    with capsys.disabled():
        print(
            f"    peak {peak:.1f} MiB (ceiling {RSS_CEILING_MIB:.0f}); second half {end - half:+.1f} MiB "
            f"(tolerance {SECOND_HALF_GROWTH_MIB:.0f}); {INVOCATIONS / elapsed:.0f} invocations/s"
        )
        print(f"    statuses {statuses}; platform hits {delivered}, lineage rows {lineage}, billing rows {billing}")

    assert statuses == {200: INVOCATIONS}
    assert delivered == lineage == successes == billing == INVOCATIONS
    assert peak <= RSS_CEILING_MIB
    assert end - half <= SECOND_HALF_GROWTH_MIB
