"""The rate limiter without any server: limit values, the in-process sliding log as time moves, and failover.

The behaviour both backends share is one table in tests/integration/test_rate_limiter_redis.py. Here a fake
clock moves the in-process limiter through its windows, and a stand-in primary that can be switched off drives
`FailoverRateLimiter` through an outage, fail-open and fail-closed, and recovery.
"""

from __future__ import annotations

import asyncio
import dataclasses

import pytest
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import TimeoutError as RedisTimeoutError

from external_agents.errors import ServiceUnavailableError, StorageError, ValidationError
from external_agents.nodes.governance.rate_limiter import (
    FAIL_CLOSED_DETAIL,
    FailoverRateLimiter,
    InProcessRateLimiter,
    RateLimitDecision,
    RateLimits,
)
from tests.clocks import FakeClock

MINUTE, HOUR, DAY = 60, 3_600, 86_400


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


@pytest.fixture
def wall_clock() -> FakeClock:
    return FakeClock(start=1_700_000_000.0)


@pytest.fixture
def memory(clock: FakeClock, wall_clock: FakeClock) -> InProcessRateLimiter:
    return InProcessRateLimiter(clock=clock, wall_clock=wall_clock)


@pytest.mark.parametrize("value", [0, -1, True, 1.5, "10"])
def test_limits_must_be_positive_integers(value: object) -> None:
    with pytest.raises(ValidationError, match="per_hour"):
        RateLimits(per_minute=10, per_hour=value, per_day=500)  # type: ignore[arg-type]


async def test_entries_leave_the_minute_window_after_sixty_seconds(
    memory: InProcessRateLimiter, clock: FakeClock
) -> None:
    limits = RateLimits(per_minute=2, per_hour=100, per_day=1_000)
    await memory.hit("agent", limits)
    clock.advance(20)
    await memory.hit("agent", limits)
    clock.advance(10)

    refused = await memory.hit("agent", limits)
    assert not refused.allowed and refused.retry_after_seconds == 30

    clock.advance(29.9)
    assert not (await memory.hit("agent", limits)).allowed
    # At exactly t + 60 s the first entry has left: the boundary belongs to the next window, as in the script.
    clock.advance(0.1)
    allowed = await memory.hit("agent", limits)
    assert allowed.allowed
    assert allowed.current_usage == {"minute": 2, "hour": 3, "day": 3}


async def test_hour_and_day_windows_slide_too(memory: InProcessRateLimiter, clock: FakeClock) -> None:
    limits = RateLimits(per_minute=10, per_hour=2, per_day=3)
    await memory.hit("agent", limits)
    clock.advance(HOUR - 100)
    await memory.hit("agent", limits)

    hour_full = await memory.hit("agent", limits)
    assert hour_full.exceeded_window == "hour" and hour_full.retry_after_seconds == 100

    clock.advance(100)
    assert (await memory.hit("agent", limits)).allowed  # the first entry left the hour
    clock.advance(HOUR)
    day_full = await memory.hit("agent", limits)
    assert day_full.exceeded_window == "day"
    assert day_full.current_usage == {"minute": 0, "hour": 0, "day": 3}
    assert day_full.retry_after_seconds == DAY - 2 * HOUR


async def test_a_lowered_limit_waits_for_enough_entries_to_leave(
    memory: InProcessRateLimiter, clock: FakeClock
) -> None:
    for _ in range(3):
        await memory.hit("agent", RateLimits(per_minute=10, per_hour=100, per_day=1_000))
        clock.advance(10)

    # Three entries, 30, 20 and 10 s old; under a limit of 2 one more fits once the two oldest have left.
    decision = await memory.peek("agent", RateLimits(per_minute=2, per_hour=100, per_day=1_000))

    assert decision.retry_after_seconds == 40
    assert decision.remaining == 0


async def test_reset_at_follows_the_oldest_minute_entry(
    memory: InProcessRateLimiter, clock: FakeClock, wall_clock: FakeClock
) -> None:
    limits = RateLimits(per_minute=5, per_hour=100, per_day=1_000)
    empty = await memory.peek("agent", limits)
    assert empty.reset_at == wall_clock.now  # nothing to wait for
    first = await memory.hit("agent", limits)
    assert first.reset_at == wall_clock.now + MINUTE
    clock.advance(15)
    wall_clock.advance(15)

    second = await memory.hit("agent", limits)

    # Still the first entry's reset, although the second came 15 s later.
    assert second.reset_at == first.reset_at


async def test_in_process_limit_is_exact_under_concurrency(memory: InProcessRateLimiter) -> None:
    limits = RateLimits(per_minute=37, per_hour=1_000, per_day=1_000)

    decisions = await asyncio.gather(*(memory.hit("agent", limits) for _ in range(200)))

    assert sum(d.allowed for d in decisions) == 37


async def test_idle_keys_are_forgotten(memory: InProcessRateLimiter, clock: FakeClock) -> None:
    limits = RateLimits(per_minute=10_000, per_hour=10_000, per_day=10_000)
    await memory.hit("deleted-agent", limits)
    clock.advance(DAY)
    # A peek empties the idle key's logs without removing it; the sweep must cope with that.
    await memory.peek("deleted-agent", limits)

    for _ in range(InProcessRateLimiter._SWEEP_EVERY):
        await memory.hit("busy-agent", limits)

    assert set(memory._logs) == {"busy-agent"}


class SwitchablePrimary:
    """Stands in for RedisRateLimiter: an exact limiter that can be made to fail like an unreachable Redis."""

    def __init__(self) -> None:
        self.error: BaseException | None = None
        self.calls = 0
        self._limiter = InProcessRateLimiter()

    async def hit(self, key: str, limits: RateLimits) -> RateLimitDecision:
        return self._answer(await self._limiter.hit(key, limits))

    async def peek(self, key: str, limits: RateLimits) -> RateLimitDecision:
        return self._answer(await self._limiter.peek(key, limits))

    def _answer(self, decision: RateLimitDecision) -> RateLimitDecision:
        self.calls += 1
        if self.error is not None:
            raise self.error
        return dataclasses.replace(decision, backend="redis")


LIMITS = RateLimits(per_minute=2, per_hour=100, per_day=1_000)


@pytest.mark.parametrize(
    "error", [RedisConnectionError("refused"), RedisTimeoutError("timed out"), OSError("unreachable")]
)
async def test_fail_open_answers_from_the_fallback_with_the_same_limits(error: BaseException, clock: FakeClock) -> None:
    primary = SwitchablePrimary()
    failover = FailoverRateLimiter(primary, InProcessRateLimiter(), fail_open=True, clock=clock)
    assert (await failover.hit("agent", LIMITS)).backend == "redis"

    primary.error = error
    decisions = [await failover.hit("agent", LIMITS) for _ in range(3)]

    assert [d.backend for d in decisions] == ["memory"] * 3
    # A per-instance limit, never no limit.
    assert [d.allowed for d in decisions] == [True, True, False]
    assert (await failover.peek("agent", LIMITS)).current_usage["minute"] == 2
    # Marked down: only the first failing call tried Redis, the rest waited out the back-off on the fallback.
    assert primary.calls == 2


async def test_fail_closed_raises_from_the_redis_error() -> None:
    primary = SwitchablePrimary()
    primary.error = RedisConnectionError("refused")
    failover = FailoverRateLimiter(primary, InProcessRateLimiter(), fail_open=False)

    with pytest.raises(ServiceUnavailableError) as caught:
        await failover.peek("agent", LIMITS)

    assert caught.value.detail == FAIL_CLOSED_DETAIL
    assert caught.value.status_code == 503
    assert caught.value.__cause__ is primary.error


async def test_redis_is_retried_at_most_once_per_interval_and_resumes(clock: FakeClock) -> None:
    primary = SwitchablePrimary()
    primary.error = RedisConnectionError("refused")
    failover = FailoverRateLimiter(
        primary, InProcessRateLimiter(), fail_open=True, retry_interval_seconds=0.2, clock=clock
    )

    for _ in range(5):
        await failover.hit("agent", LIMITS)
    assert primary.calls == 1  # the failed call; the others went straight to the fallback

    primary.error = None
    assert (await failover.hit("agent", LIMITS)).backend == "memory"  # still inside the back-off
    clock.advance(0.19)
    assert (await failover.hit("agent", LIMITS)).backend == "memory"
    assert primary.calls == 1
    clock.advance(0.01)
    assert (await failover.hit("agent", LIMITS)).backend == "redis"
    assert primary.calls == 2
    # Back up: every call goes to Redis again, with no back-off in between.
    assert (await failover.hit("agent", LIMITS)).backend == "redis"
    assert primary.calls == 3


async def test_other_storage_errors_propagate_and_do_not_switch_to_the_fallback() -> None:
    primary = SwitchablePrimary()
    primary.error = StorageError("Rate limiter script failed in Redis: WRONGTYPE")
    failover = FailoverRateLimiter(primary, InProcessRateLimiter(), fail_open=True)

    with pytest.raises(StorageError):
        await failover.hit("agent", LIMITS)

    # Not taken for an outage: the very next call goes to the primary again, no back-off, no fallback.
    primary.error = None
    assert (await failover.hit("agent", LIMITS)).backend == "redis"
    assert primary.calls == 2
