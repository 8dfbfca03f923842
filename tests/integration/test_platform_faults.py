"""Platforms that hang, reset connections, answer slowly, fail with 5xx or throttle with 429, invoked over REST.

For each fault the invocation must hold its timeout and retry budget, and so bound the caller's latency:
at most `attempts x timeout + the backoff between attempts` (plus any Retry-After the platform asked for).
The failure lands in lineage with its error and attempt count, and the budget reservation is settled when the
platform may have acted on the request (it was sent) and released when it certainly was not (the connection
was refused), as governance-status shows.

Runs on SQLite and PostgreSQL + Redis, with a 0.5 s delivery timeout and 2 retries (3 attempts), against the
local platform server and a raw socket server that hangs or resets connections.
"""

from __future__ import annotations

import asyncio
import dataclasses
import socket
import struct
import threading
import time
import uuid
from collections.abc import AsyncIterator, Iterator
from contextlib import ExitStack
from typing import Any

import httpx
import pytest

from external_agents.nodes.platforms.base import DeliveryOptions
from tests.factories import (
    IDENTITY,
    TEST_REDIS_URL,
    app_client,
    make_settings,
    new_org,
    running_app,
    throwaway_database,
)
from tests.platform_server import PlatformServer, ScriptedResponse, closed_port_url

TIMEOUT_SECONDS = 0.5
RETRIES = 2
ATTEMPTS = 1 + RETRIES
COST = 0.25
# In-process scheduling, the URL check and recording add a little to every call; this is the slack allowed.
OVERHEAD_SECONDS = 0.75


def _option_default(name: str) -> float:
    return next(f.default for f in dataclasses.fields(DeliveryOptions) if f.name == name)


BACKOFF_BASE = _option_default("backoff_base_seconds")


def backoff_bounds(attempts: int) -> tuple[float, float]:
    """Least and most total wait between `attempts` attempts: base x 2^i each, plus up to `base` of jitter."""
    waits = [BACKOFF_BASE * 2**i for i in range(attempts - 1)]
    return sum(waits), sum(waits) + BACKOFF_BASE * len(waits)


def latency_bound(attempts: int, *, retry_after: float = 0.0) -> float:
    return attempts * TIMEOUT_SECONDS + backoff_bounds(attempts)[1] + retry_after + OVERHEAD_SECONDS


class RawServer:
    """A TCP server on 127.0.0.1 that either never answers (`hang`) or resets each connection (`reset`)."""

    def __init__(self, mode: str) -> None:
        self.mode = mode
        self.connections = 0
        self._stop = threading.Event()
        self._sock = socket.create_server(("127.0.0.1", 0))
        self._sock.settimeout(0.1)
        self.url = f"http://127.0.0.1:{self._sock.getsockname()[1]}/agent"
        self._thread = threading.Thread(target=self._serve, daemon=True)
        self._thread.start()

    def _serve(self) -> None:
        while not self._stop.is_set():
            try:
                conn, _ = self._sock.accept()
            except TimeoutError:
                continue
            self.connections += 1
            threading.Thread(target=self._handle, args=(conn,), daemon=True).start()

    def _handle(self, conn: socket.socket) -> None:
        conn.settimeout(0.1)
        with conn:
            if self.mode == "reset":
                try:
                    conn.recv(65536)
                except TimeoutError:
                    pass
                # Linger 0: close() sends RST instead of FIN, as a crashing or hostile peer would.
                conn.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
                return
            while not self._stop.is_set():
                try:
                    if not conn.recv(65536):
                        return
                except TimeoutError:
                    continue
                except OSError:
                    return

    def close(self) -> None:
        self._stop.set()
        self._thread.join(timeout=2)
        self._sock.close()


@pytest.fixture
def hanging_server() -> Iterator[RawServer]:
    server = RawServer("hang")
    yield server
    server.close()


@pytest.fixture
def resetting_server() -> Iterator[RawServer]:
    server = RawServer("reset")
    yield server
    server.close()


@pytest.fixture(scope="module", params=["sqlite", "postgres"])
async def fault_gateway(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory, postgres_url: str):
    """An app of its own with a short delivery timeout and two retries (the shared one has 2 s and one)."""
    data_dir = tmp_path_factory.mktemp(f"platform-faults-{request.param}")
    overrides: dict[str, Any] = {
        "external_agent_webhook_timeout_seconds": TIMEOUT_SECONDS,
        "external_agent_webhook_retry_attempts": RETRIES,
    }
    with ExitStack() as cleanup:
        if request.param == "postgres":
            database_url = cleanup.enter_context(throwaway_database(postgres_url, prefix="ea_platform_faults_"))
            settings = make_settings(database_url, str(data_dir), redis_url=TEST_REDIS_URL, **overrides)
        else:
            settings = make_settings(f"sqlite:///{data_dir}/faults.db", str(data_dir), **overrides)
        async with running_app(settings) as app:
            yield app


@pytest.fixture
async def http(fault_gateway) -> AsyncIterator[httpx.AsyncClient]:
    async with app_client(fault_gateway, timeout=60) as client:
        yield client


@pytest.fixture
async def caller(fault_gateway):
    return await new_org(fault_gateway)


async def register(http: httpx.AsyncClient, caller, url: str) -> str:
    body = {
        "name": f"faulty-{uuid.uuid4().hex[:8]}",
        "platform": "custom_http",
        "platform_config": {"url": url},
        "cost_per_execution": COST,
        "max_daily_cost": 100.0,
        "max_monthly_cost": 100.0,
        "requests_per_minute": 1000,
    }
    response = await http.post("/api/external-agents", json=body, headers=caller.headers)
    assert response.status_code == 201, response.text
    return response.json()["id"]


async def invoke_timed(http: httpx.AsyncClient, caller, agent_id: str) -> tuple[httpx.Response, float]:
    started = time.perf_counter()
    response = await http.post(
        f"/api/external-agents/{agent_id}/invoke", json={"input": "fault?"}, headers={**caller.headers, **IDENTITY}
    )
    return response, time.perf_counter() - started


async def lineage_of(http: httpx.AsyncClient, caller, response: httpx.Response) -> dict[str, Any]:
    invocation_id = response.json()["invocation_id"]
    row = await http.get(f"/api/lineage/{invocation_id}", headers=caller.headers)
    assert row.status_code == 200, row.text
    return row.json()


async def spend_of(http: httpx.AsyncClient, caller, agent_id: str) -> tuple[float, int]:
    status = await http.get(f"/api/external-agents/{agent_id}/governance-status", headers=caller.headers)
    budget = status.json()["budget"]
    return budget["daily_spent_usd"], budget["monthly_execution_count"]


def report(capsys: pytest.CaptureFixture[str], line: str) -> None:
    with capsys.disabled():
        print(f"\n    {line}")


async def test_hanging_platform_times_out_every_attempt_within_the_bound_and_settles(
    http, caller, hanging_server, capsys
):
    agent_id = await register(http, caller, hanging_server.url)
    concurrent = 10
    results = await asyncio.gather(*(invoke_timed(http, caller, agent_id) for _ in range(concurrent)))
    least = ATTEMPTS * TIMEOUT_SECONDS + backoff_bounds(ATTEMPTS)[0]
    bound = latency_bound(ATTEMPTS)
    slowest = max(elapsed for _, elapsed in results)
    report(
        capsys,
        f"hang x{concurrent} concurrent: {min(e for _, e in results):.2f}-{slowest:.2f} s "
        f"(floor {least:.2f} s, bound {bound:.2f} s = {ATTEMPTS} x {TIMEOUT_SECONDS} s + backoff + slack)",
    )
    for response, elapsed in results:
        assert response.status_code == 504, response.text
        assert response.json()["error_code"] == "PLATFORM_TIMEOUT"
        assert least - 0.05 <= elapsed <= bound
    assert hanging_server.connections == concurrent * ATTEMPTS
    row = await lineage_of(http, caller, results[0][0])
    assert row["status"] == "timeout" and row["webhook_attempts"] == ATTEMPTS
    assert f"did not answer within {TIMEOUT_SECONDS:g} seconds" in row["webhook_delivery_error"]
    # The request was sent each time: the platform may have acted on it, so the estimate is charged.
    assert await spend_of(http, caller, agent_id) == (COST * concurrent, concurrent)


async def test_connection_reset_is_retried_within_the_bound_and_settled(http, caller, resetting_server, capsys):
    agent_id = await register(http, caller, resetting_server.url)
    response, elapsed = await invoke_timed(http, caller, agent_id)
    report(capsys, f"reset: {elapsed:.2f} s (bound {latency_bound(ATTEMPTS):.2f} s)")
    assert response.status_code == 502 and response.json()["error_code"] == "PLATFORM_ERROR"
    assert elapsed <= latency_bound(ATTEMPTS)
    assert resetting_server.connections == ATTEMPTS
    row = await lineage_of(http, caller, response)
    assert row["status"] == "failure" and row["webhook_attempts"] == ATTEMPTS
    assert row["webhook_delivery_error"]
    assert await spend_of(http, caller, agent_id) == (COST, 1)


async def test_refused_connection_is_retried_then_released(http, caller, capsys):
    agent_id = await register(http, caller, closed_port_url("/agent"))
    response, elapsed = await invoke_timed(http, caller, agent_id)
    report(capsys, f"refused: {elapsed:.2f} s (bound {latency_bound(ATTEMPTS):.2f} s)")
    assert response.status_code == 502 and elapsed <= latency_bound(ATTEMPTS)
    row = await lineage_of(http, caller, response)
    assert row["status"] == "failure" and row["webhook_attempts"] == ATTEMPTS
    assert "ConnectError" in row["webhook_delivery_error"] and row["cost_usd"] == 0
    # Nothing reached the platform: the reservation is given back, money and execution alike.
    assert await spend_of(http, caller, agent_id) == (0, 0)


@pytest.mark.parametrize(
    ("script", "attempts", "retry_after"),
    [
        pytest.param([ScriptedResponse(200, body="late", delay=0.2)], 1, 0.0, id="slow-within-timeout"),
        pytest.param(
            [ScriptedResponse(200, body="too late", delay=1.0), ScriptedResponse(200, body="ok")],
            2,
            0.0,
            id="slower-than-timeout-then-ok",
        ),
        pytest.param([ScriptedResponse(500), ScriptedResponse(200, body="ok")], 2, 0.0, id="500-then-ok"),
        pytest.param(
            [ScriptedResponse(429, headers={"Retry-After": "1"}), ScriptedResponse(200, body="ok")],
            2,
            1.0,
            id="429-retry-after-then-ok",
        ),
    ],
)
async def test_transient_faults_recover_within_the_bound_and_settle(
    http, caller, platform_server: PlatformServer, capsys, script, attempts, retry_after
):
    path = f"/transient-{uuid.uuid4().hex[:6]}"
    platform_server.script(path, *script)
    agent_id = await register(http, caller, platform_server.url(path))
    response, elapsed = await invoke_timed(http, caller, agent_id)
    bound = latency_bound(attempts, retry_after=retry_after)
    report(capsys, f"{path}: {elapsed:.2f} s over {attempts} attempt(s) (bound {bound:.2f} s)")
    assert response.status_code == 200, response.text
    assert retry_after <= elapsed <= bound
    assert len(platform_server.requests(path)) == attempts
    row = await lineage_of(http, caller, response)
    assert row["status"] == "success" and row["webhook_attempts"] == attempts
    assert await spend_of(http, caller, agent_id) == (COST, 1)


@pytest.mark.parametrize(
    ("script", "attempts", "status", "error_text"),
    [
        pytest.param([ScriptedResponse(503, body="down")] * ATTEMPTS, ATTEMPTS, 502, "HTTP 503", id="5xx-always"),
        pytest.param([ScriptedResponse(429)] * ATTEMPTS, ATTEMPTS, 502, "HTTP 429", id="429-always"),
        pytest.param(
            [ScriptedResponse(429, headers={"Retry-After": "3600"})], 1, 502, "HTTP 429", id="429-retry-after-too-long"
        ),
        pytest.param([ScriptedResponse(400, body="bad")], 1, 502, "HTTP 400", id="4xx-not-retried"),
        pytest.param(
            [ScriptedResponse(302, headers={"Location": "/elsewhere"})], 1, 502, "not followed", id="redirect"
        ),
    ],
)
async def test_persistent_faults_fail_within_the_bound_into_lineage_and_settle(
    http, caller, platform_server: PlatformServer, capsys, script, attempts, status, error_text
):
    path = f"/persistent-{uuid.uuid4().hex[:6]}"
    platform_server.script(path, *script)
    agent_id = await register(http, caller, platform_server.url(path))
    response, elapsed = await invoke_timed(http, caller, agent_id)
    bound = latency_bound(attempts)
    report(capsys, f"{path}: {elapsed:.2f} s over {attempts} attempt(s) (bound {bound:.2f} s)")
    assert response.status_code == status, response.text
    assert elapsed <= bound
    assert len(platform_server.requests(path)) == attempts
    assert platform_server.requests("/elsewhere") == []
    row = await lineage_of(http, caller, response)
    assert row["status"] == "failure" and row["webhook_attempts"] == attempts
    assert error_text in row["webhook_delivery_error"]
    assert error_text in response.json()["detail"]
    # The platform answered: it saw the request, so the reservation is settled at the estimate.
    assert await spend_of(http, caller, agent_id) == (COST, 1)
