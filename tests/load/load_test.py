"""One-command load test: starts its own stack and reports throughput and latency percentiles.

    python -m tests.load.load_test                       # 1, 8, 32 and 128 concurrent clients
    python -m tests.load.load_test --levels 1,32 --requests 2000 --seconds 60

The stack is a fresh PostgreSQL database (`ea_issue6_load` on the local server, dropped afterwards), Redis
database 13, a platform that answers at once and one app server process (`--instances N` for more, round
robin). At each level the given number of concurrent clients send `POST /invoke` to an agent with limits
high enough never to refuse, then `GET /governance-status`; each level stops at `--requests` requests or
`--seconds`, whichever comes first. Every non-2xx answer or transport error is counted as an error and makes
the exit status 1.
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Sequence
from contextlib import ExitStack
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import redis

from tests.factories import UNLIMITED, drop_database
from tests.faults.support import RoundRobin, percentile, register
from tests.process_servers import HEADERS, app_env, app_server, fresh_database, instant_platform

DEFAULT_DATABASE = "postgresql://postgres@127.0.0.1:5432/ea_issue6_load"
DEFAULT_REDIS = "redis://127.0.0.1:6379/13"
LEVELS = (1, 8, 32, 128)


@dataclass
class Result:
    endpoint: str
    clients: int
    seconds: float = 0.0
    latencies: list[float] = field(default_factory=list)
    statuses: Counter[int] = field(default_factory=Counter)
    details: list[str] = field(default_factory=list)

    @property
    def errors(self) -> int:
        return sum(count for status, count in self.statuses.items() if not 200 <= status < 300)

    @property
    def throughput(self) -> float:
        return len(self.latencies) / self.seconds if self.seconds else 0.0

    def row(self) -> str:
        ms = [s * 1000 for s in self.latencies]
        failed = {status: count for status, count in self.statuses.items() if not 200 <= status < 300}
        return (
            f"{self.endpoint:18} {self.clients:7} {len(ms):8} {self.errors:6} {self.throughput:9.0f} "
            f"{statistics.median(ms):8.1f} {percentile(ms, 0.95):8.1f} {percentile(ms, 0.99):8.1f} {max(ms):8.1f}"
            + (f"  errors by status (0: no answer): {failed}" if failed else "")
        )


HEADER = (
    f"{'endpoint':18} {'clients':>7} {'requests':>8} {'errors':>6} {'req/s':>9} "
    f"{'p50 ms':>8} {'p95 ms':>8} {'p99 ms':>8} {'max ms':>8}"
)


async def measure(
    bases: Sequence[str], method: str, path: str, body: dict | None, *, clients: int, requests: int, seconds: float
) -> Result:
    result = Result(endpoint=path.rsplit("/", 1)[-1], clients=clients)
    client = RoundRobin(bases, connections=clients, timeout=60)
    remaining = iter(range(requests))
    deadline = time.perf_counter() + seconds

    async def worker() -> None:
        for _ in remaining:
            if time.perf_counter() >= deadline:
                return
            started = time.perf_counter()
            try:
                response = await client.request(method, path, json=body, headers=HEADERS)
                status = response.status_code
                if status >= 500:
                    result.details.append(response.text[:200])
            except httpx.HTTPError as exc:
                status = 0
                result.details.append(repr(exc))
            result.latencies.append(time.perf_counter() - started)
            result.statuses[status] += 1

    started = time.perf_counter()
    try:
        await asyncio.gather(*(worker() for _ in range(clients)))
    finally:
        await client.aclose()
    result.seconds = time.perf_counter() - started
    return result


async def run_levels(
    bases: Sequence[str], platform: str, *, levels: Sequence[int], requests: int, seconds: float
) -> list[Result]:
    setup = RoundRobin(bases)
    try:
        agent_id = await register(setup, platform, "/load", **UNLIMITED)
    finally:
        await setup.aclose()
    invoke = f"/api/external-agents/{agent_id}/invoke"
    status = f"/api/external-agents/{agent_id}/governance-status"
    # Warm the pools and caches of every instance before anything is measured.
    await measure(bases, "POST", invoke, {"input": "warm"}, clients=8, requests=100 * len(bases), seconds=30)
    results = []
    for clients in levels:
        results.append(
            await measure(bases, "POST", invoke, {"input": "load"}, clients=clients, requests=requests, seconds=seconds)
        )
        results.append(await measure(bases, "GET", status, None, clients=clients, requests=requests, seconds=seconds))
    return results


def run_load(
    *,
    levels: Sequence[int] = LEVELS,
    requests: int = 1000,
    seconds: float = 20.0,
    instances: int = 1,
    database: str = DEFAULT_DATABASE,
    redis_url: str = DEFAULT_REDIS,
) -> list[Result]:
    """Start the stack, run every level, stop the stack; the results in level order (invoke, then status)."""
    with tempfile.TemporaryDirectory(prefix="ea-load-") as tmp, ExitStack() as stack:
        data_dir = Path(tmp)
        fresh_database(database, str(data_dir))
        stack.callback(drop_database, database)
        redis.Redis.from_url(redis_url).flushdb()
        env = app_env(database_url=database, redis_url=redis_url, data_dir=str(data_dir), DATABASE_POOL_SIZE="20")
        platform = stack.enter_context(instant_platform(log_dir=data_dir))
        bases = [stack.enter_context(app_server(env, log_dir=data_dir)) for _ in range(instances)]
        return asyncio.run(run_levels(bases, platform, levels=levels, requests=requests, seconds=seconds))


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m tests.load.load_test", description=__doc__.split("\n")[0])
    parser.add_argument("--levels", default=",".join(map(str, LEVELS)), help="concurrent clients, comma-separated")
    parser.add_argument("--requests", type=int, default=1000, help="requests per endpoint and level (at most)")
    parser.add_argument("--seconds", type=float, default=20.0, help="time per endpoint and level (at most)")
    parser.add_argument("--instances", type=int, default=1, help="app server processes, round robin")
    parser.add_argument("--database", default=DEFAULT_DATABASE, help="PostgreSQL database to create and drop")
    parser.add_argument("--redis", default=DEFAULT_REDIS, help="Redis database (flushed first)")
    args = parser.parse_args(argv)
    levels = [int(level) for level in args.levels.split(",")]
    started = time.perf_counter()
    results = run_load(
        levels=levels,
        requests=args.requests,
        seconds=args.seconds,
        instances=args.instances,
        database=args.database,
        redis_url=args.redis,
    )
    print(f"load test: {args.instances} app instance(s), PostgreSQL + Redis, platform answering at once")
    print(HEADER)
    for result in results:
        print(result.row())
    for result in results:
        for detail in result.details[:3]:
            print(f"{result.endpoint} x{result.clients}: {detail}")
    errors = sum(result.errors for result in results)
    print(f"{sum(len(r.latencies) for r in results)} requests, {errors} errors, {time.perf_counter() - started:.0f} s")
    return 1 if errors else 0


if __name__ == "__main__":
    sys.exit(main())
