"""The rate limiter's behaviour, as one table run over every backend, and what only real Redis can show.

The shared table runs over the in-process limiter and the Redis limiter against the real Redis named by
TEST_REDIS_URL. The Redis-only tests prove what the product promises beyond the table: exact limits under
concurrency within one process and across processes, windows clocked by Redis `TIME` rather than the app host,
wrapped errors, fail-open and fail-closed when Redis is unreachable, and recovery once it returns (against a
redis-server these tests start themselves on a free local port).
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import shutil
import time
import uuid
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
import redis.asyncio
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import ResponseError

from external_agents.errors import ServiceUnavailableError, StorageError
from external_agents.nodes.governance import rate_limiter as rate_limiter_module
from external_agents.nodes.governance.rate_limiter import (
    FAIL_CLOSED_DETAIL,
    FailoverRateLimiter,
    InProcessRateLimiter,
    RateLimiter,
    RateLimits,
    RedisRateLimiter,
)
from tests.clocks import FakeClock
from tests.process_servers import RedisServer, race_children, redis_server

PROJECT_ROOT = Path(__file__).resolve().parents[2]
LUA_SHA = hashlib.sha1(
    (PROJECT_ROOT / "nodes" / "governance" / "sliding_window.lua").read_bytes(), usedforsecurity=False
).hexdigest()
MINUTE, HOUR, DAY = 60, 3_600, 86_400


@pytest.fixture
async def redis_client(redis_url: str) -> AsyncIterator[redis.asyncio.Redis]:
    # A blocking pool: 200 concurrent calls wait for a connection instead of failing with "too many".
    pool = redis.asyncio.BlockingConnectionPool.from_url(redis_url, max_connections=50, timeout=10)
    client = redis.asyncio.Redis(connection_pool=pool)
    await client.ping()
    yield client
    await client.aclose()
    await pool.aclose()


@pytest.fixture
async def key_prefix(redis_url: str) -> AsyncIterator[str]:
    """A prefix owned by one test; its keys are deleted afterwards, and nothing else in the database."""
    prefix = f"ea:rl:test:{uuid.uuid4().hex}:"
    yield prefix
    client = redis.asyncio.Redis.from_url(redis_url)
    keys = [key async for key in client.scan_iter(match=f"{prefix}*")]
    if keys:
        await client.delete(*keys)
    await client.aclose()


@pytest.fixture(params=["memory", pytest.param("redis", marks=pytest.mark.redis)])
def limiter(request: pytest.FixtureRequest) -> RateLimiter:
    if request.param == "memory":
        return InProcessRateLimiter()
    client = request.getfixturevalue("redis_client")
    return RedisRateLimiter(client, key_prefix=request.getfixturevalue("key_prefix"))


# ---- The behaviour table: every test below runs over both backends. ----


async def test_allows_exactly_the_limit_then_refuses(limiter: RateLimiter) -> None:
    limits = RateLimits(per_minute=5, per_hour=100, per_day=1_000)
    decisions = [await limiter.hit("agent", limits) for _ in range(7)]

    assert [d.allowed for d in decisions] == [True] * 5 + [False] * 2
    assert [d.remaining for d in decisions] == [4, 3, 2, 1, 0, 0, 0]
    assert all(d.limit == 5 for d in decisions)
    assert all(d.retry_after_seconds is None and d.exceeded_window is None for d in decisions[:5])
    refused = decisions[5]
    assert refused.exceeded_window == "minute"
    assert refused.retry_after_seconds is not None and MINUTE - 2 <= refused.retry_after_seconds <= MINUTE


async def test_refused_requests_are_not_recorded(limiter: RateLimiter) -> None:
    limits = RateLimits(per_minute=3, per_hour=100, per_day=1_000)
    for _ in range(3):
        assert (await limiter.hit("agent", limits)).allowed
    refusals = [await limiter.hit("agent", limits) for _ in range(10)]

    assert not any(d.allowed for d in refusals)
    assert all(d.current_usage == {"minute": 3, "hour": 3, "day": 3} for d in refusals)
    assert (await limiter.peek("agent", limits)).current_usage == {"minute": 3, "hour": 3, "day": 3}


@dataclass(frozen=True)
class WindowCase:
    limits: RateLimits
    allowed: int
    window: str
    retry_after: int


WINDOW_CASES = {
    "minute": WindowCase(RateLimits(per_minute=2, per_hour=10, per_day=100), 2, "minute", MINUTE),
    "hour": WindowCase(RateLimits(per_minute=10, per_hour=3, per_day=100), 3, "hour", HOUR),
    "day": WindowCase(RateLimits(per_minute=10, per_hour=10, per_day=4), 4, "day", DAY),
    # Every window full: the request fits only when the slowest one has room, so the day is reported.
    "all-full": WindowCase(RateLimits(per_minute=2, per_hour=2, per_day=2), 2, "day", DAY),
}


@pytest.mark.parametrize("case", WINDOW_CASES.values(), ids=WINDOW_CASES.keys())
async def test_each_window_can_refuse(limiter: RateLimiter, case: WindowCase) -> None:
    for _ in range(case.allowed):
        assert (await limiter.hit("agent", case.limits)).allowed
    refused = await limiter.hit("agent", case.limits)

    assert not refused.allowed
    assert refused.exceeded_window == case.window
    assert refused.remaining == 0
    n = case.allowed
    assert refused.current_usage == {"minute": n, "hour": n, "day": n}
    assert refused.retry_after_seconds is not None
    assert case.retry_after - 2 <= refused.retry_after_seconds <= case.retry_after
    # Refused: reset_at is when this request would be allowed.
    assert refused.reset_at == pytest.approx(time.time() + case.retry_after, abs=3)


async def test_remaining_is_the_smallest_across_windows(limiter: RateLimiter) -> None:
    limits = RateLimits(per_minute=10, per_hour=4, per_day=100)
    first = await limiter.hit("agent", limits)

    assert first.remaining == 3
    assert first.limit == 10
    # Allowed: reset_at is when the oldest entry leaves the minute window.
    assert first.reset_at == pytest.approx(time.time() + MINUTE, abs=3)


async def test_peek_does_not_record(limiter: RateLimiter) -> None:
    limits = RateLimits(per_minute=2, per_hour=10, per_day=100)
    for _ in range(5):
        fresh = await limiter.peek("agent", limits)
        assert fresh.allowed and fresh.remaining == 2
        assert fresh.current_usage == {"minute": 0, "hour": 0, "day": 0}

    await limiter.hit("agent", limits)
    await limiter.hit("agent", limits)
    full = await limiter.peek("agent", limits)

    assert not full.allowed and full.exceeded_window == "minute" and full.retry_after_seconds is not None
    assert full.current_usage == {"minute": 2, "hour": 2, "day": 2}
    assert (await limiter.peek("agent", limits)).current_usage == {"minute": 2, "hour": 2, "day": 2}


async def test_keys_are_independent(limiter: RateLimiter) -> None:
    limits = RateLimits(per_minute=2, per_hour=10, per_day=100)
    for _ in range(3):
        await limiter.hit("agent-a", limits)

    other = await limiter.hit("agent-b", limits)

    assert other.allowed
    assert other.current_usage == {"minute": 1, "hour": 1, "day": 1}
    assert not (await limiter.peek("agent-a", limits)).allowed


async def test_decision_serialises_to_json(limiter: RateLimiter) -> None:
    decision = await limiter.hit("agent", RateLimits(per_minute=1, per_hour=1, per_day=1))

    body = json.loads(json.dumps(decision.to_dict()))

    assert body["allowed"] is True
    assert body["current_usage"] == {"minute": 1, "hour": 1, "day": 1}
    assert body["backend"] in {"memory", "redis"}


# ---- Redis only ----


@pytest.mark.redis
async def test_exact_under_concurrency(redis_client: redis.asyncio.Redis, key_prefix: str) -> None:
    limiter = RedisRateLimiter(redis_client, key_prefix=key_prefix)
    limits = RateLimits(per_minute=37, per_hour=1_000, per_day=1_000)

    decisions = await asyncio.gather(*(limiter.hit("agent", limits) for _ in range(200)))

    assert sum(d.allowed for d in decisions) == 37
    log_key, _ = limiter.keys_for("agent")
    assert await redis_client.zcard(log_key) == 37


CHILD_SCRIPT = """
import asyncio, json, sys
import redis.asyncio
from external_agents.nodes.governance.rate_limiter import RateLimits, RedisRateLimiter

async def main(url, prefix, calls, per_minute):
    pool = redis.asyncio.BlockingConnectionPool.from_url(url, max_connections=20, timeout=10)
    client = redis.asyncio.Redis(connection_pool=pool)
    limiter = RedisRateLimiter(client, key_prefix=prefix)
    limits = RateLimits(per_minute=per_minute, per_hour=10_000, per_day=10_000)
    await client.ping()
    print("ready", flush=True)
    await asyncio.get_running_loop().run_in_executor(None, sys.stdin.readline)
    decisions = await asyncio.gather(*(limiter.hit("agent", limits) for _ in range(calls)))
    print(json.dumps(sum(d.allowed for d in decisions)), flush=True)
    await client.aclose()
    await pool.aclose()

asyncio.run(main(sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4])))
"""


@pytest.mark.redis
async def test_exact_across_processes(redis_url: str, key_prefix: str) -> None:
    # Every process connected before any fires, so their requests overlap in Redis.
    results = await race_children(
        CHILD_SCRIPT, [redis_url, key_prefix, "100", "37"], count=3, ready_timeout=30, run_timeout=30
    )

    assert [code for code, _ in results] == [0, 0, 0]
    allowed = [int(stdout) for _, stdout in results]
    assert sum(allowed) == 37, allowed


@pytest.mark.redis
async def test_windows_are_clocked_by_redis_time(
    redis_client: redis.asyncio.Redis, key_prefix: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Ten years ahead: had the limiter read this host's clock, scores and reset_at would follow it.
    skew = 10 * 365 * DAY
    real_time = time.time
    monkeypatch.setattr(rate_limiter_module.time, "time", lambda: real_time() + skew)
    limiter = RedisRateLimiter(redis_client, key_prefix=key_prefix)
    limits = RateLimits(per_minute=3, per_hour=100, per_day=1_000)

    decisions = [await limiter.hit("agent", limits) for _ in range(4)]

    assert [d.allowed for d in decisions] == [True, True, True, False]
    seconds, microseconds = await redis_client.time()
    redis_now = seconds + microseconds / 1e6
    log_key, _ = limiter.keys_for("agent")
    scores = [score / 1e6 for _, score in await redis_client.zrange(log_key, 0, -1, withscores=True)]
    assert len(scores) == 3
    assert all(redis_now - 5 < score <= redis_now for score in scores)
    assert decisions[0].reset_at == pytest.approx(scores[0] + MINUTE, abs=0.01)
    assert decisions[3].reset_at == pytest.approx(redis_now + MINUTE, abs=5)


@pytest.mark.redis
async def test_entries_count_in_the_windows_their_redis_time_falls_in(
    redis_client: redis.asyncio.Redis, key_prefix: str
) -> None:
    limiter = RedisRateLimiter(redis_client, key_prefix=key_prefix)
    log_key, _ = limiter.keys_for("agent")
    seconds, microseconds = await redis_client.time()
    now_us = seconds * 1_000_000 + microseconds
    ages = {"half-hour": 1_800, "almost-hour": HOUR - 10, "two-hours": 2 * HOUR, "over-a-day": DAY + 60}
    await redis_client.zadd(log_key, {name: now_us - age * 1_000_000 for name, age in ages.items()})

    # Two entries are within the hour: with an hour limit of 2 the request waits for the older to leave.
    refused = await limiter.hit("agent", RateLimits(per_minute=10, per_hour=2, per_day=10))
    assert not refused.allowed and refused.exceeded_window == "hour"
    assert refused.current_usage == {"minute": 0, "hour": 2, "day": 3}
    assert refused.retry_after_seconds is not None and 8 <= refused.retry_after_seconds <= 10
    # The entry older than a day was trimmed; nothing was recorded.
    assert await redis_client.zcard(log_key) == 3

    # Limit lowered below the count: room returns only when the newer of the two leaves too.
    lowered = await limiter.peek("agent", RateLimits(per_minute=10, per_hour=1, per_day=10))
    assert lowered.retry_after_seconds is not None and 1_795 <= lowered.retry_after_seconds <= 1_800

    allowed = await limiter.hit("agent", RateLimits(per_minute=10, per_hour=10, per_day=10))
    assert allowed.allowed
    assert allowed.current_usage == {"minute": 1, "hour": 3, "day": 4}
    assert 0 < await redis_client.pttl(log_key) <= (DAY + 60) * 1_000


@pytest.mark.redis
async def test_other_redis_errors_are_wrapped(redis_client: redis.asyncio.Redis, key_prefix: str) -> None:
    limiter = RedisRateLimiter(redis_client, key_prefix=key_prefix)
    log_key, _ = limiter.keys_for("agent")
    await redis_client.set(log_key, "not a sorted set")
    failover = FailoverRateLimiter(limiter, InProcessRateLimiter(), fail_open=True)

    with pytest.raises(StorageError) as caught:
        await failover.hit("agent", RateLimits(per_minute=1, per_hour=1, per_day=1))

    assert isinstance(caught.value.__cause__, ResponseError)
    # A script error is not an outage: no silent switch to the per-instance limit, no back-off.
    await redis_client.delete(log_key)
    assert (await failover.hit("agent", RateLimits(per_minute=1, per_hour=1, per_day=1))).backend == "redis"


def _unreachable_client() -> redis.asyncio.Redis:
    # Port 1 on loopback: nothing listens, so connecting fails at once; no retries, no back-off.
    return redis.asyncio.Redis(
        host="127.0.0.1", port=1, socket_timeout=0.2, socket_connect_timeout=0.2, retry=Retry(NoBackoff(), 0)
    )


async def test_fail_open_applies_the_in_process_limit_when_redis_is_unreachable() -> None:
    client = _unreachable_client()
    failover = FailoverRateLimiter(RedisRateLimiter(client), InProcessRateLimiter(), fail_open=True)
    limits = RateLimits(per_minute=3, per_hour=100, per_day=1_000)

    decisions = [await failover.hit("agent", limits) for _ in range(5)]

    assert [d.allowed for d in decisions] == [True, True, True, False, False]
    assert all(d.backend == "memory" for d in decisions)
    assert decisions[3].exceeded_window == "minute"
    await client.aclose()


async def test_fail_closed_raises_service_unavailable() -> None:
    client = _unreachable_client()
    failover = FailoverRateLimiter(RedisRateLimiter(client), InProcessRateLimiter(), fail_open=False)
    limits = RateLimits(per_minute=3, per_hour=100, per_day=1_000)

    for _ in range(2):  # the first call tries Redis; the second, within the back-off, does not
        with pytest.raises(ServiceUnavailableError) as caught:
            await failover.hit("agent", limits)
        assert caught.value.detail == FAIL_CLOSED_DETAIL
        assert isinstance(caught.value.__cause__, RedisConnectionError)
    await client.aclose()


def script_loaded(server: RedisServer) -> bool:
    client = server.client()
    try:
        return bool(client.script_exists(LUA_SHA)[0])
    finally:
        client.close()


@pytest.fixture
def own_redis(tmp_path: Path) -> Iterator[RedisServer]:
    with redis_server(tmp_path) as server:
        yield server


@pytest.mark.skipif(shutil.which("redis-server") is None, reason="needs redis-server to stop and restart")
async def test_recovers_to_redis_within_a_second_of_its_return(own_redis: RedisServer) -> None:
    client = redis.asyncio.Redis(
        host="127.0.0.1",
        port=own_redis.port,
        socket_timeout=0.5,
        socket_connect_timeout=0.5,
        # One immediate retry replaces a pooled connection the restarted server has closed.
        retry=Retry(NoBackoff(), 1),
    )
    clock = FakeClock()
    # The retry interval the app uses (its default): under a second, which is the promise.
    failover = FailoverRateLimiter(RedisRateLimiter(client), InProcessRateLimiter(), fail_open=True, clock=clock)
    limits = RateLimits(per_minute=1_000, per_hour=1_000, per_day=1_000)
    assert (await failover.hit("agent", limits)).backend == "redis"

    own_redis.stop()
    assert (await failover.hit("agent", limits)).backend == "memory"

    own_redis.start()
    # A restarted server has no scripts: the limiter's EVALSHA meets NOSCRIPT and loads the script again.
    assert not script_loaded(own_redis)
    # Within the back-off after the failed call, Redis is not tried yet ...
    clock.advance(0.49)
    assert (await failover.hit("agent", limits)).backend == "memory"
    # ... and the first call once it has passed (0.5 s after the failure, under a second) uses Redis again.
    clock.advance(0.01)
    assert (await failover.hit("agent", limits)).backend == "redis"
    assert script_loaded(own_redis)
    await client.aclose()
