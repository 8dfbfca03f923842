"""Crash consistency with real processes (issue 11, points 1 and 2): app servers killed with SIGKILL while their
invocations wait on a slow platform, on one PostgreSQL and one Redis.

- One instance killed with five deliveries in flight: their lineage rows stay `pending` (with the killed
  instance as owner) and the counters hold their reservations, which `reconcile` finds consistent (counters =
  billing + live reservations). A sweep (a clock past the lease, as any instance's sweeper runs it) settles
  them as failures billed at the estimate: platform hits = lineage rows = billing rows, and a restarted
  instance serves the agent (200, not 402). A hand-edited counter is reported by `reconcile` (exit 1),
  repaired by `reconcile --repair` (exit 0) and then clean.
- Three instances, one killed mid-burst (every delivery of the burst at the platform, none answered yet): the
  same equalities across the survivors' completed rows and the victim's swept ones.

Every request of a burst reaches the platform before the kill, so each pending row stands for a platform hit:
a row reserved but killed before its request left would be billed at the estimate with no hit, since nothing
records that a request left (see stores/pending.py).

Run: pytest tests/faults/test_crash_consistency.py -s
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import ExitStack
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
import pytest
import redis

from external_agents.stores.pending import INTERRUPTED, sweep_expired
from tests.factories import TEST_REDIS_URL, UNLIMITED, drop_database, make_settings, sql
from tests.faults.support import RoundRobin, register, report
from tests.platform_server import PlatformServer, ScriptedResponse
from tests.process_servers import HEADERS, ROOT, app_env, app_process, fresh_database

DATABASE = "postgresql://postgres@127.0.0.1:5432/ea_issue11_crash"
# Long enough that every delivery of a burst is still waiting when its instance is killed.
PLATFORM_DELAY = 4.0
ESTIMATE = 0.01


@pytest.fixture(scope="module")
def setup(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Any]]:
    data_dir = tmp_path_factory.mktemp("crash")
    fresh_database(DATABASE, str(data_dir))
    redis.Redis.from_url(TEST_REDIS_URL).flushdb()
    env = app_env(database_url=DATABASE, redis_url=TEST_REDIS_URL, data_dir=str(data_dir), DATABASE_POOL_SIZE="10")
    platform = PlatformServer()
    try:
        yield {"env": env, "data_dir": data_dir, "platform": platform}
    finally:
        platform.close()
        drop_database(DATABASE)


def kill(process: subprocess.Popen[bytes]) -> None:
    os.kill(process.pid, signal.SIGKILL)
    process.wait(timeout=10)


async def sweep_as_a_later_instance(data_dir: Path) -> int:
    """What any instance's sweeper does once the leases have passed: run with a clock an hour ahead."""
    from external_agents.stores.database import create_engine

    engine = create_engine(make_settings(DATABASE, str(data_dir)))
    try:
        return await sweep_expired(engine, now=datetime.now(UTC) + timedelta(hours=1))
    finally:
        await engine.dispose()


def reconcile_cli(env: dict[str, str], *args: str) -> tuple[int, dict[str, Any]]:
    done = subprocess.run(
        [sys.executable, "-m", "external_agents.channels.cli", "reconcile", "--json", *args],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    return done.returncode, json.loads(done.stdout)


def recorded(agent_id: str) -> dict[str, Any]:
    by_status = dict(
        sql(
            DATABASE,
            "SELECT status, count(*) FROM invocation_lineage WHERE external_agent_id = %s GROUP BY status",
            agent_id,
        )
    )
    [(billed, micros)] = sql(
        DATABASE,
        "SELECT count(*), coalesce(sum(round(cost_usd * 1000000)), 0) FROM billing_usage WHERE external_agent_id = %s",
        agent_id,
    )
    [(spent, executions)] = sql(
        DATABASE, "SELECT spent_micros, executions FROM budget_counters WHERE id LIKE %s", f"{agent_id}|day|%"
    )
    return {"lineage": by_status, "billing_rows": billed, "billing_micros": int(micros), "counter": (spent, executions)}


def hits_of(platform: PlatformServer, path: str) -> int:
    """Invocations that reached the platform: distinct inputs (each call of a burst sends its own), so a
    delivery retried after a slow attempt counts once, as it is one invocation."""
    return len({json.dumps(request.json()["input"]) for request in platform.requests(path)})


async def until(condition: Any, *, seconds: float, what: str) -> None:
    deadline = time.monotonic() + seconds
    while not condition():
        assert time.monotonic() < deadline, what
        await asyncio.sleep(0.02)


async def invoke_once(base: str, agent_id: str) -> httpx.Response:
    async with httpx.AsyncClient(timeout=30) as http:
        return await http.post(
            f"{base}/api/external-agents/{agent_id}/invoke", json={"input": "after"}, headers=HEADERS
        )


async def burst(bases: list[str], agent_id: str, count: int) -> list[httpx.Response | BaseException]:
    client = RoundRobin(bases, connections=count)
    try:
        calls = [
            client.request("POST", f"/api/external-agents/{agent_id}/invoke", json={"input": i}, headers=HEADERS)
            for i in range(count)
        ]
        return await asyncio.gather(*calls, return_exceptions=True)
    finally:
        await client.aclose()


async def test_a_killed_instance_leaves_pending_rows_that_a_sweep_settles_and_reconcile_checks(setup, capsys):
    platform: PlatformServer = setup["platform"]
    env, data_dir = setup["env"], setup["data_dir"]
    path = "/crash-one"
    in_flight = 5
    platform.script(path, *(ScriptedResponse(body={"ok": True}, delay=60) for _ in range(in_flight)))
    with app_process(env, log_dir=data_dir) as (base, process):
        client = RoundRobin([base])
        try:
            agent_id = await register(
                client, platform.base_url, path, **{**UNLIMITED, "cost_per_execution": ESTIMATE, "max_daily_cost": 0.06}
            )
        finally:
            await client.aclose()
        calls = asyncio.create_task(burst([base], agent_id, in_flight))
        await until(lambda: len(platform.requests(path)) == in_flight, seconds=30, what="deliveries never arrived")
        kill(process)
        answers = await calls
    assert all(isinstance(a, httpx.TransportError) for a in answers), answers

    before = recorded(agent_id)
    owners = sql(DATABASE, "SELECT DISTINCT instance_id FROM invocation_lineage WHERE external_agent_id = %s", agent_id)
    code_before, drift_before = reconcile_cli(env)
    swept = await sweep_as_a_later_instance(data_dir)
    after = recorded(agent_id)
    hits, requests = hits_of(platform, path), len(platform.requests(path))
    code_after, drift_after = reconcile_cli(env)
    reasons = sql(
        DATABASE,
        "SELECT DISTINCT webhook_delivery_error FROM invocation_lineage WHERE external_agent_id = %s",
        agent_id,
    )
    with app_process(env, log_dir=data_dir) as (restarted, _):
        again = await invoke_once(restarted, agent_id)
    # Drift made by hand: reported (exit 1), repaired (exit 0), then clean.
    sql(
        DATABASE, "UPDATE budget_counters SET spent_micros = spent_micros + 40000 WHERE id LIKE %s", f"{agent_id}|day|%"
    )
    edited = reconcile_cli(env, "--org", bootstrap_org())
    repaired = reconcile_cli(env, "--repair")
    clean = reconcile_cli(env)
    report(
        capsys,
        [
            f"killed with {in_flight} deliveries in flight: lineage {before['lineage']}, "
            f"billing {before['billing_rows']}, counter {before['counter']}; reconcile exit {code_before}",
            f"swept {swept}: lineage {after['lineage']}, billing {after['billing_rows']} rows = "
            f"${after['billing_micros'] / 1e6:.2f}, counter {after['counter']}; "
            f"platform hits {hits} ({requests} requests)",
            f"restarted instance: {again.status_code}; hand-edited counter: reconcile exit {edited[0]}, "
            f"--repair exit {repaired[0]}, then exit {clean[0]}",
        ],
    )
    assert len(owners) == 1
    assert before["lineage"] == {"pending": in_flight} and before["billing_rows"] == 0
    assert before["counter"] == (in_flight * 10_000, in_flight)
    assert (code_before, drift_before["drift"]) == (0, [])
    assert swept == in_flight
    assert after["lineage"] == {"failure": in_flight}
    assert reasons == [(INTERRUPTED,)]
    assert hits == sum(after["lineage"].values()) == after["billing_rows"] == in_flight
    assert after["counter"] == (after["billing_micros"], after["billing_rows"])
    assert (code_after, drift_after["drift"]) == (0, [])
    assert again.status_code == 200, again.text
    assert edited[0] == 1 and [(d["agent_id"], d["period"]) for d in edited[1]["drift"]] == [(agent_id, "day")]
    assert repaired[0] == 0 and all(d["repaired"] for d in repaired[1]["drift"])
    assert clean == (0, {"checked": clean[1]["checked"], "drift": []})


def bootstrap_org() -> str:
    """The organisation of the bootstrap key the servers run with."""
    [(org,)] = sql(DATABASE, "SELECT organization_id FROM api_keys LIMIT 1")
    return org


async def test_three_instances_one_killed_mid_burst_keep_hits_lineage_and_billing_equal(setup, capsys):
    platform: PlatformServer = setup["platform"]
    env, data_dir = setup["env"], setup["data_dir"]
    path, count = "/crash-three", 30
    platform.script(path, *(ScriptedResponse(body={"ok": True}, delay=PLATFORM_DELAY) for _ in range(count)))
    with ExitStack() as stack:
        instances = [stack.enter_context(app_process(env, log_dir=data_dir)) for _ in range(3)]
        bases = [base for base, _ in instances]
        client = RoundRobin(bases)
        try:
            agent_id = await register(client, platform.base_url, path, **{**UNLIMITED, "cost_per_execution": ESTIMATE})
        finally:
            await client.aclose()
        started = time.perf_counter()
        calls = asyncio.create_task(burst(bases, agent_id, count))
        await until(
            lambda: len(platform.requests(path)) == count, seconds=60, what="the burst never reached the platform"
        )
        kill(instances[2][1])
        answers = await calls
        elapsed = time.perf_counter() - started
        survivors_done = recorded(agent_id)
        swept = await sweep_as_a_later_instance(data_dir)
        after = recorded(agent_id)
        hits, requests = hits_of(platform, path), len(platform.requests(path))
        code, drift = reconcile_cli(env)
        again = await invoke_once(bases[0], agent_id)
    statuses = [a.status_code if isinstance(a, httpx.Response) else type(a).__name__ for a in answers]
    report(
        capsys,
        [
            f"3 instances, {count} invocations, instance 3 killed with its deliveries in flight ({elapsed:.1f} s):",
            f"answers {sorted(set(map(str, statuses)))}; before the sweep lineage {survivors_done['lineage']}",
            f"swept {swept}; lineage {after['lineage']}, billing {after['billing_rows']} rows = "
            f"${after['billing_micros'] / 1e6:.2f}; counter {after['counter']}; "
            f"platform hits {hits} ({requests} requests)",
        ],
    )
    answered = statuses.count(200)
    assert answered == 2 * count // 3 and swept == count - answered
    assert survivors_done["lineage"] == {"success": answered, "pending": count - answered}
    assert hits == count == sum(after["lineage"].values()) == after["billing_rows"]
    assert after["lineage"] == {"success": answered, "failure": count - answered}
    # Counters = billing + live reservations (none left): exactly, and as reconcile sees it.
    assert after["counter"] == (after["billing_micros"], after["billing_rows"])
    assert (code, drift["drift"]) == (0, [])
    assert again.status_code == 200, again.text
