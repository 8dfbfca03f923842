"""Per-agent sliding-window rate limits (minute, hour, day), exact across any number of app instances.

Why not Kailash's `kailash.trust.rate_limit.backends.redis.RedisBackend`: it clocks its windows with each
app host's clock, one window per call, so hosts with skewed clocks disagree and three windows would take three
round trips. Here one Lua script (`sliding_window.lua`, registered once, run with EVALSHA) checks all three
windows and records the request in one atomic Redis round trip, clocked by the Redis server's `TIME`. The
limiting strategy (the script, or its in-memory twin) is kept apart from the choice of storage, as in
alisaifee/limits:

- `RedisRateLimiter`: the exact, shared limiter.
- `InProcessRateLimiter`: the same semantics in this process's memory; the embedded default, and the fallback.
- `FailoverRateLimiter`: Redis first; when Redis is unreachable either a per-instance limit (fail-open, never
  no limit) or `ServiceUnavailableError` (fail-closed), and back to Redis within a second of its return.

Usage::

    limiter = FailoverRateLimiter(RedisRateLimiter(client), InProcessRateLimiter(), fail_open=True)
    decision = await limiter.hit(agent_id, RateLimits(per_minute=10, per_hour=100, per_day=500))
    if not decision.allowed:
        ...  # 429 with decision.retry_after_seconds
"""

from __future__ import annotations

import logging
import math
import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Literal, Protocol

import redis.asyncio
from redis.exceptions import (
    AuthenticationError,
    AuthorizationError,
    ExternalAuthProviderError,
    RedisError,
)
from redis.exceptions import (
    ConnectionError as RedisConnectionError,
)
from redis.exceptions import (
    TimeoutError as RedisTimeoutError,
)

from external_agents.errors import ServiceUnavailableError, StorageError, ValidationError

logger = logging.getLogger(__name__)

# A source of seconds: monotonic where only intervals matter, wall-clock where a timestamp leaves the process.
# Injected so tests move time instead of waiting for it.
Clock = Callable[[], float]

WINDOWS: tuple[tuple[str, int], ...] = (("minute", 60), ("hour", 3_600), ("day", 86_400))

FAIL_CLOSED_DETAIL = "Rate limiter unavailable: Redis is unreachable and EXTERNAL_AGENT_RATE_LIMIT_FAIL_OPEN=false"

_SCRIPT = Path(__file__).with_name("sliding_window.lua").read_text(encoding="utf-8")

# Redis could not be reached or did not answer in time: the only failures that fail-open may absorb.
# redis-py maps socket errors to its own types; OSError covers anything that slips through.
REDIS_UNREACHABLE_ERRORS: tuple[type[BaseException], ...] = (RedisConnectionError, RedisTimeoutError, OSError)
# redis-py files these under ConnectionError, but a wrong password is a configuration fault that fail-open
# must not hide behind a per-instance limit.
_REDIS_MISCONFIGURED_ERRORS: tuple[type[BaseException], ...] = (
    AuthenticationError,
    AuthorizationError,
    ExternalAuthProviderError,
)


@dataclass(frozen=True, slots=True)
class RateLimits:
    """An agent's request limits per sliding minute, hour and day."""

    per_minute: int
    per_hour: int
    per_day: int

    def __post_init__(self) -> None:
        for name in ("per_minute", "per_hour", "per_day"):
            value = getattr(self, name)
            # bool is an int subclass; True as a limit is a caller's mistake, not a limit of 1.
            if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
                raise ValidationError(f"Rate limit {name} must be a positive integer, got {value!r}")

    def as_tuple(self) -> tuple[int, int, int]:
        """The limits in the order of `WINDOWS`."""
        return (self.per_minute, self.per_hour, self.per_day)


@dataclass(frozen=True, slots=True)
class RateLimitDecision:
    """The outcome of one check, with everything the 429 body, the X-RateLimit-* headers and status need.

    `limit` is the per-minute limit (X-RateLimit-Limit). `remaining` is the smallest number of further
    requests any window still admits, after this one. `reset_at` (epoch seconds) is when the per-minute window
    next gains room (its oldest entry leaves) or, for a refused request, when this request would be allowed.
    `current_usage` counts each window after the decision (a refused request is not counted).
    """

    allowed: bool
    limit: int
    remaining: int
    reset_at: float
    retry_after_seconds: int | None
    current_usage: dict[str, int]
    exceeded_window: str | None
    backend: Literal["redis", "memory"]

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


class RateLimiter(Protocol):
    """What the rate-limit node needs: an atomic check-and-record, and a read-only look for status."""

    async def hit(self, key: str, limits: RateLimits) -> RateLimitDecision: ...

    async def peek(self, key: str, limits: RateLimits) -> RateLimitDecision: ...


def _decision(
    *,
    allowed: bool,
    counts: tuple[int, int, int],
    limits: RateLimits,
    refusing: int,
    retry_after_ms: float,
    reset_at: float,
    backend: Literal["redis", "memory"],
) -> RateLimitDecision:
    """Build a decision from per-window counts and the refusing window (0 none, 1 minute, 2 hour, 3 day)."""
    remaining = min(limit - count for limit, count in zip(limits.as_tuple(), counts, strict=True))
    return RateLimitDecision(
        allowed=allowed,
        limit=limits.per_minute,
        remaining=max(0, remaining),
        reset_at=reset_at,
        retry_after_seconds=None if allowed else max(1, math.ceil(retry_after_ms / 1000)),
        current_usage={name: count for (name, _), count in zip(WINDOWS, counts, strict=True)},
        exceeded_window=WINDOWS[refusing - 1][0] if refusing else None,
        backend=backend,
    )


class RedisRateLimiter:
    """Exact sliding-log limits in Redis: one EVALSHA per call, one sorted set (plus a counter) per key.

    Connection failures and timeouts propagate as redis-py raised them (`REDIS_UNREACHABLE_ERRORS`) so that
    `FailoverRateLimiter` can choose between its fallback and a 503; any other Redis error is wrapped in
    `StorageError`.
    """

    def __init__(self, client: redis.asyncio.Redis, *, key_prefix: str = "ea:rl:") -> None:
        self._key_prefix = key_prefix
        # Only hashes the script locally; EVALSHA loads it on the first NOSCRIPT (new or restarted server).
        self._script = client.register_script(_SCRIPT)

    def keys_for(self, key: str) -> tuple[str, str]:
        """The sorted set and the sequence counter of `key`."""
        # The {hash tag} keeps both keys in one slot, which a script needs on Redis Cluster.
        log_key = f"{self._key_prefix}{{{key}}}"
        return log_key, f"{log_key}:seq"

    async def hit(self, key: str, limits: RateLimits) -> RateLimitDecision:
        return await self._run(key, limits, record=True)

    async def peek(self, key: str, limits: RateLimits) -> RateLimitDecision:
        return await self._run(key, limits, record=False)

    async def _run(self, key: str, limits: RateLimits, *, record: bool) -> RateLimitDecision:
        try:
            reply = await self._script(keys=self.keys_for(key), args=[int(record), *limits.as_tuple()])
        except _REDIS_MISCONFIGURED_ERRORS as exc:
            raise StorageError(f"Rate limiter cannot use Redis: {exc}") from exc
        except REDIS_UNREACHABLE_ERRORS:
            raise
        except RedisError as exc:
            raise StorageError(f"Rate limiter script failed in Redis: {exc}") from exc
        allowed, minute, hour, day, refusing, retry_after_ms, reset_ms = (int(value) for value in reply)
        return _decision(
            allowed=bool(allowed),
            counts=(minute, hour, day),
            limits=limits,
            refusing=refusing,
            retry_after_ms=retry_after_ms,
            reset_at=reset_ms / 1000,
            backend="redis",
        )


class InProcessRateLimiter:
    """The sliding log of `sliding_window.lua` in this process's memory: exact for this process only.

    One deque of monotonic timestamps per window and key. Each call checks and records under a lock with no
    await in between, so it is atomic for coroutines and threads alike.
    """

    # Every this many recorded requests, forget keys with nothing in their day window (deleted agents).
    _SWEEP_EVERY = 1024

    def __init__(self, *, clock: Clock = time.monotonic, wall_clock: Clock = time.time) -> None:
        # Monotonic, so a wall-clock step does not empty or freeze the windows; `wall_clock` only dates reset_at.
        self._clock = clock
        self._wall_clock = wall_clock
        self._logs: dict[str, tuple[deque[float], deque[float], deque[float]]] = {}
        self._lock = threading.Lock()
        self._recorded_since_sweep = 0

    async def hit(self, key: str, limits: RateLimits) -> RateLimitDecision:
        return self._run(key, limits, record=True)

    async def peek(self, key: str, limits: RateLimits) -> RateLimitDecision:
        return self._run(key, limits, record=False)

    def _run(self, key: str, limits: RateLimits, *, record: bool) -> RateLimitDecision:
        with self._lock:
            now = self._clock()
            logs = self._logs.get(key) or (deque(), deque(), deque())
            counts: list[int] = []
            refusing, wait = 0, 0.0
            for index, ((_, length), log, limit) in enumerate(
                zip(WINDOWS, logs, limits.as_tuple(), strict=True), start=1
            ):
                while log and log[0] <= now - length:
                    log.popleft()
                counts.append(len(log))
                if len(log) >= limit:
                    # Same rule as the script: room returns when the entry at position count - limit leaves.
                    window_wait = log[len(log) - limit] + length - now
                    if window_wait >= wait:
                        refusing, wait = index, window_wait
            allowed = refusing == 0
            if allowed and record:
                for log in logs:
                    log.append(now)
                counts = [count + 1 for count in counts]
                self._logs[key] = logs
                self._sweep(now)
            minute_log = logs[0]
            if not allowed:
                reset_in = wait
            elif minute_log:
                reset_in = minute_log[0] + WINDOWS[0][1] - now
            else:
                reset_in = 0.0
            return _decision(
                allowed=allowed,
                counts=(counts[0], counts[1], counts[2]),
                limits=limits,
                refusing=refusing,
                retry_after_ms=wait * 1000,
                reset_at=self._wall_clock() + reset_in,
                backend="memory",
            )

    def _sweep(self, now: float) -> None:
        self._recorded_since_sweep += 1
        if self._recorded_since_sweep < self._SWEEP_EVERY:
            return
        self._recorded_since_sweep = 0
        day = WINDOWS[-1][1]
        # A peek may have emptied a day log without removing its key.
        for stale in [key for key, logs in self._logs.items() if not logs[-1] or logs[-1][-1] <= now - day]:
            del self._logs[stale]


class FailoverRateLimiter:
    """Redis while it answers; when unreachable, the in-process limit (fail-open) or a 503 (fail-closed).

    While Redis is failing, at most one call every `retry_interval_seconds` tries it again (the others answer
    at once), so exact limits resume within a second of Redis returning without every request paying for a
    dead connection. Requests answered by the fallback are not replayed into Redis.
    """

    def __init__(
        self,
        primary: RateLimiter,
        fallback: InProcessRateLimiter,
        *,
        fail_open: bool,
        retry_interval_seconds: float = 0.5,
        clock: Clock = time.monotonic,
    ) -> None:
        self._primary = primary
        self._clock = clock
        self._fallback = fallback
        self._fail_open = fail_open
        self._retry_interval = retry_interval_seconds
        self._healthy = True
        self._retry_at = 0.0
        self._last_error: BaseException | None = None

    async def hit(self, key: str, limits: RateLimits) -> RateLimitDecision:
        return await self._run(key, limits, record=True)

    async def peek(self, key: str, limits: RateLimits) -> RateLimitDecision:
        return await self._run(key, limits, record=False)

    async def _run(self, key: str, limits: RateLimits, *, record: bool) -> RateLimitDecision:
        now = self._clock()
        if self._healthy or now >= self._retry_at:
            # Claimed before awaiting, so calls arriving during this attempt do not pile onto a dead Redis.
            self._retry_at = now + self._retry_interval
            try:
                if record:
                    decision = await self._primary.hit(key, limits)
                else:
                    decision = await self._primary.peek(key, limits)
            except REDIS_UNREACHABLE_ERRORS as exc:
                if self._healthy:
                    logger.warning("rate_limiter.redis_unavailable fail_open=%s error=%r", self._fail_open, exc)
                self._healthy = False
                self._last_error = exc
            else:
                if not self._healthy:
                    logger.info("rate_limiter.redis_recovered")
                self._healthy = True
                return decision
        if not self._fail_open:
            raise ServiceUnavailableError(FAIL_CLOSED_DETAIL) from self._last_error
        if record:
            return await self._fallback.hit(key, limits)
        return await self._fallback.peek(key, limits)
