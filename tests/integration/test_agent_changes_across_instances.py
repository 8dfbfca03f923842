"""A change to an agent made on one gateway instance is what the other invokes next, although each instance keeps
recently invoked agents in memory (nodes/agent_cache.py).

Two `external-agents serve` processes on one PostgreSQL and Redis, delivering to the tests' platform server. The
agent is invoked on both (so both hold it), then each field an invocation depends on is changed through the API
on instance A, and instance B must behave by the new value. PostgreSQL sends the write's notice when it commits,
before A answers, but it reaches B's listening connection asynchronously (a process wake-up away), so B is
invoked until it does, within `BOUND_SECONDS`: a write path that changed an agent without announcing it would
be served from B's memory for the entry's 10 s lifetime and fail here.

The last test ends both listening connections first (a network fault or a PostgreSQL restart): a change B cannot
hear of is honoured all the same, because an instance that is not listening serves nothing from memory.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import ExitStack
from typing import Any

import httpx
import pytest
from sqlalchemy.engine import make_url

from external_agents.nodes.agent_cache import LISTENER_APPLICATION_NAME
from tests.factories import TEST_POSTGRES_URL, TEST_REDIS_URL, UNLIMITED, drop_database, sql
from tests.process_servers import HEADERS, app_env, app_server, fresh_database

DATABASE = (
    make_url(TEST_POSTGRES_URL)
    .set(database=f"{make_url(TEST_POSTGRES_URL).database}_agent_instances")
    .render_as_string(hide_password=False)
)
BOUND_SECONDS = 2.0


@pytest.fixture(scope="module")
def instances(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[str, str]]:
    data_dir = tmp_path_factory.mktemp("agent-instances")
    fresh_database(DATABASE, str(data_dir))
    env = app_env(database_url=DATABASE, redis_url=TEST_REDIS_URL, data_dir=str(data_dir), DATABASE_POOL_SIZE="4")
    with ExitStack() as stack:
        first, second = (stack.enter_context(app_server(env, log_dir=data_dir)) for _ in range(2))
        yield first, second
    drop_database(DATABASE)


class Instances:
    def __init__(self, client: httpx.Client, a: str, b: str) -> None:
        self.client, self.a, self.b = client, a, b

    def register(self, platform_server: Any, path: str) -> str:
        body = {
            "name": f"cached-{uuid.uuid4().hex[:8]}",
            "platform": "custom_http",
            "platform_config": {"url": platform_server.url(path)},
            "auth_config": {"auth_type": "bearer_token", "credentials": {"token": "token-1"}},
            **UNLIMITED,
        }
        created = self.client.post(f"{self.a}/api/external-agents", json=body, headers=HEADERS)
        assert created.status_code == 201, created.text
        return created.json()["id"]

    def patch_on_a(self, agent_id: str, body: dict[str, Any]) -> None:
        changed = self.client.patch(f"{self.a}/api/external-agents/{agent_id}", json=body, headers=HEADERS)
        assert changed.status_code == 200, changed.text

    def invoke(self, base: str, agent_id: str) -> int:
        url = f"{base}/api/external-agents/{agent_id}/invoke"
        return self.client.post(url, json={"input": "hello"}, headers=HEADERS).status_code

    def b_answers(self, agent_id: str, status: int, applied: Callable[[], bool] = lambda: True) -> None:
        """Invoke on B until it answers `status` and `applied()` holds; fails past BOUND_SECONDS."""
        started = time.monotonic()
        while (answer := self.invoke(self.b, agent_id)) != status or not applied():
            assert answer in (200, status), answer
            assert time.monotonic() - started < BOUND_SECONDS, f"B still invokes the agent as it was: {answer}"


@pytest.fixture
def both(instances: tuple[str, str]) -> Iterator[Instances]:
    with httpx.Client(timeout=10) as client:
        yield Instances(client, *instances)


def test_every_change_made_on_one_instance_is_invoked_on_the_other_at_once(both, platform_server):
    agent_id = both.register(platform_server, "/first")
    # Both instances now hold the agent in memory.
    assert [both.invoke(base, agent_id) for base in (both.a, both.b, both.a, both.b)] == [200] * 4

    both.patch_on_a(agent_id, {"platform_config": {"url": platform_server.url("/moved")}})
    both.b_answers(agent_id, 200, lambda: len(platform_server.requests("/moved")) > 0)

    both.patch_on_a(agent_id, {"auth_config": {"auth_type": "bearer_token", "credentials": {"token": "token-2"}}})
    both.b_answers(
        agent_id, 200, lambda: platform_server.requests("/moved")[-1].headers["Authorization"] == "Bearer token-2"
    )

    for limit, refusal, back in (
        ("requests_per_minute", 429, UNLIMITED["requests_per_minute"]),
        ("max_daily_cost", 402, UNLIMITED["max_daily_cost"]),
        ("daily_execution_limit", 402, None),
    ):
        # Far below what the agent has already used today.
        both.patch_on_a(agent_id, {limit: 0.00001 if limit == "max_daily_cost" else 1})
        both.b_answers(agent_id, refusal)
        both.patch_on_a(agent_id, {limit: back})
        both.b_answers(agent_id, 200)

    deleted = both.client.delete(f"{both.a}/api/external-agents/{agent_id}", headers=HEADERS)
    assert deleted.status_code == 204
    both.b_answers(agent_id, 404)


def test_an_instance_that_lost_its_listening_connection_invokes_the_agent_as_stored(both, platform_server):
    agent_id = both.register(platform_server, "/before")
    assert [both.invoke(base, agent_id) for base in (both.a, both.b)] == [200, 200]
    # Both instances' listening connections end, waiting (up to 5 s) until each backend has exited.
    [(ended,)] = sql(
        DATABASE,
        "SELECT count(pg_terminate_backend(pid, 5000)) FROM pg_stat_activity "
        "WHERE datname = current_database() AND application_name = %s",
        LISTENER_APPLICATION_NAME,
    )
    assert ended == 2
    # A change no notice announces: B can only deliver to the new URL because it no longer trusts its memory.
    moved = f'{{"url": "{platform_server.url("/after")}"}}'
    sql(DATABASE, "UPDATE external_agents SET platform_config = %s::jsonb WHERE id = %s", moved, agent_id)
    assert both.invoke(both.b, agent_id) == 200
    assert [len(platform_server.requests(path)) for path in ("/before", "/after")] == [2, 1]
    # Each listens again after half a second, from an empty cache.
    started = time.monotonic()
    while sql(
        DATABASE,
        "SELECT count(*) FROM pg_stat_activity WHERE datname = current_database() AND application_name = %s",
        LISTENER_APPLICATION_NAME,
    ) != [(2,)]:
        assert time.monotonic() - started < 10, "the instances did not listen again"
        time.sleep(0.05)
    assert both.invoke(both.b, agent_id) == 200
    assert len(platform_server.requests("/after")) == 2
