"""One agent whose platform hangs gets 503s beyond its bulkhead; every other agent keeps its normal latency.

The local platform server holds the slow agent's calls; the cap is small here (EXTERNAL_AGENT_MAX_CONCURRENT_
DELIVERIES_PER_AGENT=5) so the test stays quick. The fast agent's latency while the slow one is saturated is
compared with its own latency measured just before, as a ratio, never in absolute milliseconds.
"""

from __future__ import annotations

import asyncio
import statistics
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from external_agents.nodes.delivery import SATURATED
from tests.factories import UNLIMITED, app_client, invoke, make_settings, new_org, register, rows, running_app
from tests.platform_server import PlatformServer, ScriptedResponse

PER_AGENT = 5
HANGING = 2 * PER_AGENT
HANG_SECONDS = 1.5


@pytest.fixture
async def bulkhead_gateway(tmp_path: Path) -> AsyncIterator[Any]:
    settings = make_settings(
        f"sqlite:///{tmp_path}/bulkheads.db",
        str(tmp_path),
        external_agent_max_concurrent_deliveries_per_agent=PER_AGENT,
        external_agent_webhook_timeout_seconds=5.0,
        external_agent_webhook_retry_attempts=0,
    )
    async with running_app(settings) as app:
        yield app


async def median_latency(client: httpx.AsyncClient, org: Any, agent_id: str, *, calls: int) -> float:
    samples = []
    for _ in range(calls):
        started = time.perf_counter()
        response = await invoke(client, org, agent_id)
        samples.append(time.perf_counter() - started)
        assert response.status_code == 200, response.text
    return statistics.median(samples)


async def test_a_hanging_agent_gets_503s_beyond_its_cap_while_another_keeps_its_latency(
    bulkhead_gateway, platform_server: PlatformServer
) -> None:
    gateway = bulkhead_gateway
    async with app_client(gateway) as client:
        org = await new_org(gateway)
        slow = await register(client, org, platform_server, path="/hangs", name="slow", **UNLIMITED)
        fast = await register(client, org, platform_server, path="/fast", name="fast", **UNLIMITED)
        await median_latency(client, org, fast["id"], calls=5)  # warm-up
        before = await median_latency(client, org, fast["id"], calls=20)

        platform_server.script("/hangs", *[ScriptedResponse(200, body={"ok": True}, delay=HANG_SECONDS)] * HANGING)
        started = time.perf_counter()
        hanging = [asyncio.create_task(invoke(client, org, slow["id"])) for _ in range(HANGING)]
        refused: list[httpx.Response] = []
        # The refusals come back at once, while the admitted calls still hang.
        for task in asyncio.as_completed(hanging):
            response = await task
            if response.status_code != 503:
                break
            refused.append(response)
            if len(refused) == HANGING - PER_AGENT:
                break
        refused_within = time.perf_counter() - started
        during = await median_latency(client, org, fast["id"], calls=20)
        still_hanging = sum(not task.done() for task in hanging)
        finished = await asyncio.gather(*hanging)

    assert len(refused) == HANGING - PER_AGENT and refused_within < HANG_SECONDS
    assert still_hanging == PER_AGENT
    statuses = sorted(response.status_code for response in finished)
    assert statuses == [200] * PER_AGENT + [503] * (HANGING - PER_AGENT)
    assert len(platform_server.requests("/hangs")) == PER_AGENT
    for response in refused:
        assert response.headers["Retry-After"] == "1"
        assert response.json()["detail"] == SATURATED
        assert response.json()["error_code"] == "SERVICE_UNAVAILABLE"
    # The other agent answered as fast as before (a generous ratio: the event loop also serves the hanging calls).
    assert during < 3 * before, (before, during)

    recorded = await rows(
        gateway,
        "SELECT status, webhook_delivery_error, webhook_attempts, cost_usd FROM invocation_lineage "
        "WHERE external_agent_id = :id",
        id=slow["id"],
    )
    refused_rows = [row for row in recorded if row["webhook_delivery_error"] == SATURATED]
    assert len(refused_rows) == HANGING - PER_AGENT
    assert all((r["status"], r["webhook_attempts"], float(r["cost_usd"])) == ("failure", 0, 0.0) for r in refused_rows)
    billed = await rows(gateway, "SELECT cost_usd FROM billing_usage WHERE external_agent_id = :id", id=slow["id"])
    assert len(billed) == PER_AGENT
    async with app_client(gateway) as client:
        status = await client.get(f"/api/external-agents/{slow['id']}/governance-status", headers=org.headers)
    assert status.json()["budget"]["monthly_execution_count"] == PER_AGENT
