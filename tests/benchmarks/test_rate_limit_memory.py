"""Redis memory per agent for the sliding-window rate limit, at day limits of 500, 100,000 and 1,000,000.

The limiter (`nodes/governance/rate_limiter.py`, `sliding_window.lua`) keeps, per agent, one sorted set holding
every request of the last day (score: microseconds; member: "<microseconds>-<sequence>") and a sequence counter;
the minute and hour windows are counts over the same set. With the day window full an agent at day limit N
holds N entries, whatever its minute and hour limits.

Each agent's log is filled to its day limit with the script's own member format, timestamps spread evenly over
the last day (a Lua loop in Redis, chunked); then the limiter itself is asked: its `hit` must refuse on the day
window with a day count of exactly N, which shows the filled keys are the ones the limiter reads. Then the
agent's keys are measured with `MEMORY USAGE ... SAMPLES 0` (every element counted) and by the change of
`INFO memory` used_memory, on a redis-server of our own (default configuration, no persistence) so that no other
client's keys move the second figure.

Asserted: the two measures agree (MEMORY USAGE counts hash entries at their struct size, 8 B under the
allocator's size class, so it reads a little low), and an entry costs at most BYTES_PER_ENTRY_BOUND of
used_memory, so memory per agent is linear in its day limit at that rate (a format or encoding change that
makes entries dearer fails here).

Run: pytest tests/benchmarks/test_rate_limit_memory.py -v
"""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator, Iterator

import pytest
import redis.asyncio

from external_agents.nodes.governance.rate_limiter import RateLimits, RedisRateLimiter
from tests.process_servers import RedisServer, redis_server

DAY_LIMITS = (500, 100_000, 1_000_000)
# Measured on Redis 7.0.15 / jemalloc: 126 bytes per entry of a skiplist-encoded sorted set (its hash entry,
# skiplist node, member string and hash bucket); the margin covers longer sequence numbers (a counter that has
# run for months) and allocator size classes of other builds.
BYTES_PER_ENTRY_BOUND = 140
# used_memory also counts the client's query and reply buffers, which Redis grows and shrinks lazily.
BUFFER_SLACK = 64 * 1024
# Redis runs one script at a time; chunks keep each one short.
FILL_CHUNK = 50_000

# Appends ARGV[3] entries with sequence numbers from ARGV[2] + 1, the i-th of all ARGV[4] entries at
# ARGV[1] - span + (i * span / total) microseconds: evenly over the last day but its first ten minutes, so that
# none has left the day window by the time the limiter looks. Member and score as sliding_window.lua makes them.
_FILL = """
local now, first, count, total = tonumber(ARGV[1]), tonumber(ARGV[2]), tonumber(ARGV[3]), tonumber(ARGV[4])
local span = 86400000000 - 600000000
for sequence = first + 1, first + count do
  local us = string.format('%.0f', now - span + math.floor(sequence * span / total))
  redis.call('ZADD', KEYS[1], us, us .. '-' .. sequence)
end
redis.call('SET', KEYS[2], first + count)
redis.call('PEXPIRE', KEYS[1], 86460000)
redis.call('PEXPIRE', KEYS[2], 86460000)
"""


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RedisServer]:
    with redis_server(tmp_path_factory.mktemp("rate-limit-memory")) as server:
        yield server


@pytest.fixture
async def client(server: RedisServer) -> AsyncIterator[redis.asyncio.Redis]:
    client = redis.asyncio.Redis.from_url(server.url)
    yield client
    await client.aclose()


async def used_memory(client: redis.asyncio.Redis) -> int:
    return (await client.info("memory"))["used_memory"]


async def fill_day_window(client: redis.asyncio.Redis, keys: tuple[str, str], entries: int) -> None:
    fill = client.register_script(_FILL)
    seconds, microseconds = await client.time()
    now = seconds * 1_000_000 + microseconds
    for first in range(0, entries, FILL_CHUNK):
        await fill(keys=keys, args=[now, first, min(FILL_CHUNK, entries - first), entries])


async def test_memory_per_agent_with_the_day_window_full(
    client: redis.asyncio.Redis, capsys: pytest.CaptureFixture[str]
) -> None:
    limiter = RedisRateLimiter(client)
    # One agent filled and dropped first: the keyspace's tables, the scripts and the client's buffers are then
    # in place and not counted against the first measured agent.
    warm_up = limiter.keys_for(str(uuid.uuid4()))
    await fill_day_window(client, warm_up, DAY_LIMITS[0])
    await client.delete(*warm_up)
    rows = []
    for day_limit in DAY_LIMITS:
        agent_id = str(uuid.uuid4())
        keys = limiter.keys_for(agent_id)
        before = await used_memory(client)
        await fill_day_window(client, keys, day_limit)
        after = await used_memory(client)

        decision = await limiter.hit(agent_id, RateLimits(per_minute=day_limit, per_hour=day_limit, per_day=day_limit))
        assert (decision.allowed, decision.exceeded_window) == (False, "day")
        assert decision.current_usage["day"] == day_limit

        usage = sum([await client.memory_usage(key, samples=0) or 0 for key in keys])
        encoding = (await client.object("encoding", keys[0])).decode()
        rows.append((day_limit, after - before, usage, encoding))

    with capsys.disabled():
        print()
        print("    Redis memory per agent with the day window full (one sorted set + one counter per agent):")
        print(f"    {'day limit':>10} {'INFO used_memory delta':>27} {'MEMORY USAGE':>23}  encoding")
        for day_limit, delta, usage, encoding in rows:
            print(
                f"    {day_limit:>10,} {delta / 2**20:>10.2f} MiB = {delta / day_limit:>4.0f} B/entry "
                f"{usage / 2**20:>8.2f} MiB = {usage / day_limit:>4.0f} B/entry  {encoding}"
            )

    for day_limit, delta, usage, _encoding in rows:
        assert delta <= BYTES_PER_ENTRY_BOUND * day_limit + BUFFER_SLACK
        # MEMORY USAGE counts each hash entry at its struct size (24 B), the allocator at its size class (32 B).
        assert abs(delta - (usage + 8 * day_limit)) <= 0.01 * usage + BUFFER_SLACK
