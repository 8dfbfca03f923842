"""The agent registry through the API on PostgreSQL (issue 2): create, get and list, 500 requests each, next to a
bare asyncpg insert and select of the same rows and a bare route (GET /api/version, no key, no SQL) on the same
client, all measured in the same run, interleaved.

The assertion is a ratio: an authenticated GET of one agent costs at most GET_RATIO times the bare route (the
client's and the server's HTTP cost), whatever else runs on the machine.

Run: pytest tests/benchmarks/test_registry_performance.py -v
"""

from __future__ import annotations

import json
import statistics
import time
import uuid

import asyncpg
import httpx

from tests.process_servers import BENCH_API_KEY, app_env, app_server, fresh_database

BENCH_DB = "postgresql://postgres@127.0.0.1:5432/ea_bench_registry"
AUTH = {"Authorization": f"Bearer {BENCH_API_KEY}"}
REQUESTS = 500
# Auth (a key lookup), one SQL read and the agent's JSON on top of the HTTP round trip the bare route measures.
GET_RATIO = 4.0


def summary(samples: list[float]) -> str:
    ordered = sorted(samples)
    return f"median {statistics.median(ordered):.2f} ms  p95 {ordered[int(0.95 * (len(ordered) - 1))]:.2f} ms"


def body(name: str) -> dict:
    return {
        "name": name,
        "platform": "teams",
        "platform_config": {"webhook_url": "https://example.com/webhook"},
        "auth_config": {"auth_type": "bearer_token", "credentials": {"token": "bench-token"}},
        "max_monthly_cost": 100.0,
    }


async def timed(samples: list[float], call) -> object:
    start = time.perf_counter()
    result = await call
    samples.append((time.perf_counter() - start) * 1000)
    return result


async def test_create_get_and_list_through_the_api(tmp_path, capsys):
    fresh_database(BENCH_DB, str(tmp_path))
    env = app_env(database_url=BENCH_DB, redis_url=None, data_dir=str(tmp_path))
    api = {"create": [], "get": [], "list": [], "version": []}
    bare = {"insert": [], "select": [], "list": []}
    with app_server(env, log_dir=tmp_path) as base:
        connection = await asyncpg.connect(BENCH_DB)
        async with httpx.AsyncClient(base_url=base, headers=AUTH, timeout=30) as http:
            for index in range(REQUESTS):  # interleaved, so machine noise hits both alike
                created = await timed(api["create"], http.post("/api/external-agents", json=body(f"api-{index}")))
                assert created.status_code == 201, created.text
                agent_id = created.json()["id"]
                assert (await timed(api["get"], http.get(f"/api/external-agents/{agent_id}"))).status_code == 200
                assert (await timed(api["list"], http.get("/api/external-agents?limit=20"))).status_code == 200
                assert (await timed(api["version"], http.get("/api/version"))).status_code == 200

                bare_id = str(uuid.uuid4())
                await timed(
                    bare["insert"],
                    connection.execute(
                        "INSERT INTO external_agents (id, name, platform, platform_config, auth_config,"
                        " encrypted_credentials, max_monthly_cost, organization_id, created_by)"
                        " VALUES ($1, $2, 'teams', $3::jsonb, $4::jsonb, $5, 100.0, 'bare', 'bench')",
                        bare_id,
                        f"bare-{index}",
                        json.dumps({"webhook_url": "https://example.com/webhook"}),
                        json.dumps({"auth_type": "bearer_token"}),
                        b"x" * 164,
                    ),
                )
                select = connection.fetchrow("SELECT * FROM external_agents WHERE id = $1", bare_id)
                await timed(bare["select"], select)
                await timed(
                    bare["list"],
                    connection.fetch(
                        "SELECT * FROM external_agents WHERE organization_id = 'bare' ORDER BY created_at DESC LIMIT 20"
                    ),
                )
        await connection.close()
    with capsys.disabled():
        print(f"\n    agent registry on PostgreSQL, {REQUESTS} requests each (one app process, sequential):")
        for label, ours, baseline, theirs in (
            ("POST /api/external-agents     ", "create", "INSERT", "insert"),
            ("GET  /api/external-agents/{id}", "get", "SELECT", "select"),
            ("GET  /api/external-agents     ", "list", "page  ", "list"),
        ):
            print(f"    {label} {summary(api[ours])}   bare asyncpg {baseline} {summary(bare[theirs])}")
        get_median, version_median = statistics.median(api["get"]), statistics.median(api["version"])
        print(
            f"    GET  /api/version (bare route) {summary(api['version'])}; "
            f"get / bare route median {get_median / version_median:.2f}x (target <= {GET_RATIO}x)"
        )
    assert get_median <= GET_RATIO * version_median
