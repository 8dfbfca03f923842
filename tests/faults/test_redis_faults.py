"""Redis stopped mid-load and started again, with a redis-server of our own, under both failure modes.

Fail-open (the default): no 5xx at any point; the per-instance fallback limit holds while Redis is down
(an agent limited to 5 a minute admits exactly 5); /api/health answers 200 with "degraded" and redis
"disconnected"; exact, shared limits resume within 1 s of Redis returning (the next invocation is counted in
Redis again); every invocation answered is in lineage and was delivered exactly once.
Fail-closed (EXTERNAL_AGENT_RATE_LIMIT_FAIL_OPEN=false): invocations get 503 with the fail-closed detail,
never a 500, nothing is delivered, health answers 503 naming redis; service resumes within 1 s of Redis
returning. Nothing recorded in PostgreSQL is lost either way.

Run: pytest tests/faults/test_redis_faults.py -s
"""

from __future__ import annotations

import asyncio
import time
from collections import Counter
from collections.abc import Iterator
from contextlib import ExitStack
from pathlib import Path
from typing import Any

import httpx
import pytest
from redis.exceptions import ConnectionError as RedisConnectionError

from external_agents.nodes.governance.rate_limiter import FAIL_CLOSED_DETAIL
from tests.factories import UNLIMITED, drop_database, sql
from tests.faults.support import SECRETS, RoundRobin, register, report, secrets_in_logs
from tests.process_servers import (
    HEADERS,
    RedisServer,
    app_env,
    app_server,
    fresh_database,
    instant_platform,
    redis_server,
)

DATABASE = "postgresql://postgres@127.0.0.1:5432/ea_issue6_redis"
FALLBACK_LIMIT = 5
RESUME_BOUND_SECONDS = 1.0


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Any]]:
    data_dir = tmp_path_factory.mktemp("redis-faults")
    fresh_database(DATABASE, str(data_dir))
    with ExitStack() as stack:
        redis = stack.enter_context(redis_server(data_dir))
        env = app_env(database_url=DATABASE, redis_url=redis.url, data_dir=str(data_dir), DATABASE_POOL_SIZE="10")
        closed_env = {**env, "EXTERNAL_AGENT_RATE_LIMIT_FAIL_OPEN": "false"}
        yield {
            "redis": redis,
            "platform": stack.enter_context(instant_platform(log_dir=data_dir)),
            "open": stack.enter_context(app_server(env, log_dir=data_dir)),
            "closed": stack.enter_context(app_server(closed_env, log_dir=data_dir)),
            "log_dir": data_dir,
        }
    drop_database(DATABASE)


@pytest.fixture
def redis_up(stack) -> RedisServer:
    redis: RedisServer = stack["redis"]
    try:
        redis.client().ping()
    except RedisConnectionError:
        redis.start()  # an earlier test failed while it was stopped
    return redis


class Load:
    """Clients invoking one agent in a loop until stopped; keeps every status and invocation id."""

    def __init__(self, client: RoundRobin, agent_id: str, workers: int) -> None:
        self.client, self.agent_id = client, agent_id
        self.statuses: Counter[int] = Counter()
        self.by_status: dict[int, list[str]] = {}
        self.errors: list[str] = []
        self._stop = asyncio.Event()
        self._tasks = [asyncio.create_task(self._loop()) for _ in range(workers)]

    async def _loop(self) -> None:
        deadline = time.monotonic() + 60  # bounded even if a test forgets to stop it
        while not self._stop.is_set() and time.monotonic() < deadline:
            try:
                response = await self.client.request(
                    "POST", f"/api/external-agents/{self.agent_id}/invoke", json={"input": "load"}, headers=HEADERS
                )
            except httpx.HTTPError as exc:
                self.errors.append(repr(exc))
                continue
            self.statuses[response.status_code] += 1
            body = response.json()
            self.by_status.setdefault(response.status_code, []).append(body.get("invocation_id") or body["detail"])
            await asyncio.sleep(0.01)

    async def stop(self) -> None:
        self._stop.set()
        await asyncio.gather(*self._tasks)


async def burst(client: RoundRobin, agent_id: str, count: int = 10) -> list[str]:
    """`count` concurrent invocations, all served: the app's Redis pool then holds that many connections, as
    it does under real load, and each of them is cut when Redis stops. Returns their invocation ids."""
    responses = await asyncio.gather(*(invoke(client, agent_id) for _ in range(count)))
    assert all(r.status_code == 200 for r in responses), [r.text for r in responses if r.status_code != 200]
    return [r.json()["invocation_id"] for r in responses]


async def invoke(client: RoundRobin, agent_id: str) -> httpx.Response:
    return await client.request("POST", f"/api/external-agents/{agent_id}/invoke", json={"input": 1}, headers=HEADERS)


def lineage_of(agent_id: str) -> dict[str, str]:
    rows = sql(DATABASE, "SELECT id, status FROM invocation_lineage WHERE external_agent_id = %s", agent_id)
    return dict(rows)


async def seconds_until(check: Any, *, bound: float = 5.0, every: float = 0.02) -> float | None:
    started = time.perf_counter()
    while time.perf_counter() - started < bound:
        if await check():
            return time.perf_counter() - started
        await asyncio.sleep(every)
    return None


async def test_fail_open_keeps_serving_with_a_per_instance_limit_and_resumes_exact_limits(stack, redis_up, capsys):
    client = RoundRobin([stack["open"]])
    platform = stack["platform"]
    try:
        load_agent = await register(client, platform, "/open-load", **UNLIMITED)
        fallback_agent = await register(client, platform, "/open-fallback", **{**UNLIMITED, "requests_per_minute": 5})
        resume_agent = await register(client, platform, "/open-resume", **UNLIMITED)
        healthy = await client.request("GET", "/api/health")
        assert healthy.status_code == 200 and healthy.json()["status"] == "healthy", healthy.text
        warm = await burst(client, load_agent)

        load = Load(client, load_agent, workers=4)
        await asyncio.sleep(0.5)
        redis_up.stop()
        await asyncio.sleep(0.3)
        degraded = await client.request("GET", "/api/health")
        fallback = Counter([(await invoke(client, fallback_agent)).status_code for _ in range(3 * FALLBACK_LIMIT)])
        await asyncio.sleep(1.0)
        redis_up.start()
        returned = time.perf_counter()
        rate_limit_key = f"ea:rl:{{{resume_agent}}}"
        probe = redis_up.client()

        async def counted_in_redis() -> bool:
            before = probe.zcard(rate_limit_key)
            assert (await invoke(client, resume_agent)).status_code == 200
            return probe.zcard(rate_limit_key) == before + 1

        exact_after = await seconds_until(counted_in_redis)
        # Resumed means resumed for good: from 1 s after Redis returned, every invocation is counted in Redis.
        await asyncio.sleep(max(0.0, returned + RESUME_BOUND_SECONDS - time.perf_counter()))
        settled = [await counted_in_redis() for _ in range(40)]

        async def healthy_again() -> bool:
            return (await client.request("GET", "/api/health")).json()["status"] == "healthy"

        health_after = await seconds_until(healthy_again)
        await asyncio.sleep(0.5)
        await load.stop()
        delivered = (await client.http.get(f"{platform}/count")).json()
    finally:
        await client.aclose()
    recorded = lineage_of(load_agent)
    answered = warm + load.by_status.get(200, [])
    report(
        capsys,
        [
            "fail-open, Redis stopped for ~1.5 s under 4 looping clients:",
            f"load statuses {dict(load.statuses)} (transport errors {len(load.errors)}); "
            f"lineage rows {len(recorded)}; platform received {delivered.get('/open-load', 0)}",
            f"health while down: {degraded.status_code} {degraded.json()}",
            f"fallback limit {FALLBACK_LIMIT}/min per instance while down: {dict(fallback)}",
            f"exact (Redis-counted) limits again {exact_after:.3f} s after Redis returned; healthy after "
            f"{health_after:.3f} s"
            if exact_after is not None and health_after is not None
            else "never resumed",
            f"from {RESUME_BOUND_SECONDS:g} s after Redis returned: {settled.count(True)} of {len(settled)} "
            "invocations counted in Redis (the others fell back to the per-instance limit)",
        ],
    )
    assert not load.errors and set(load.statuses) == {200}, (load.statuses, load.errors[:3])
    assert degraded.status_code == 200
    assert degraded.json()["status"] == "degraded" and degraded.json()["services"]["redis"] == "disconnected"
    assert fallback == Counter({200: FALLBACK_LIMIT, 429: 2 * FALLBACK_LIMIT})
    assert exact_after is not None and exact_after <= RESUME_BOUND_SECONDS
    assert all(settled), settled
    assert health_after is not None and health_after <= RESUME_BOUND_SECONDS
    assert set(answered) <= set(recorded) and all(recorded[i] == "success" for i in answered)
    assert len(recorded) == len(answered) == delivered.get("/open-load", 0)


async def test_fail_closed_answers_503_never_500_and_resumes(stack, redis_up, capsys):
    client = RoundRobin([stack["closed"]])
    platform = stack["platform"]
    try:
        agent_id = await register(client, platform, "/closed", **UNLIMITED)

        async def served() -> bool:
            response = await invoke(client, agent_id)
            assert response.status_code in (200, 503), response.text
            return response.status_code == 200

        # Served before the outage (an earlier restart may leave this process a moment to notice Redis is back).
        assert await seconds_until(served) is not None
        before = await burst(client, agent_id)
        redis_up.stop()
        refused = await asyncio.gather(*(invoke(client, agent_id) for _ in range(30)))
        health = await client.request("GET", "/api/health")
        redis_up.start()
        resumed_after = await seconds_until(served)
        delivered = (await client.http.get(f"{platform}/count")).json().get("/closed", 0)
    finally:
        await client.aclose()
    statuses = Counter(r.status_code for r in refused)
    recorded = lineage_of(agent_id)
    report(
        capsys,
        [
            "fail-closed, Redis stopped:",
            f"30 concurrent invocations: {dict(statuses)}; detail {refused[0].json()['detail']!r}",
            f"health: {health.status_code} {health.json()}",
            f"served again {resumed_after:.3f} s after Redis returned" if resumed_after else "never resumed",
            f"lineage rows {len(recorded)}, platform received {delivered}",
        ],
    )
    assert statuses == Counter({503: 30})
    assert all(r.json()["detail"] == FAIL_CLOSED_DETAIL for r in refused)
    assert all(r.json()["error_code"] == "SERVICE_UNAVAILABLE" for r in refused)
    assert health.status_code == 503 and health.json()["services"]["redis"] == "disconnected"
    assert resumed_after is not None and resumed_after <= RESUME_BOUND_SECONDS
    # The invocations before the outage are still recorded; the refused ones were never delivered.
    assert all(recorded[invocation_id] == "success" for invocation_id in before)
    assert delivered == len(recorded) == sum(1 for status in recorded.values() if status == "success")


def test_no_server_log_holds_a_secret(stack):
    found = secrets_in_logs(Path(stack["log_dir"]), SECRETS)
    assert not found, found
