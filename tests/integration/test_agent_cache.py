"""The agent cache on a real PostgreSQL: what it serves from memory, what it never keeps, and that a change to an
agent committed by anyone drops it from every cache listening, or, when a cache cannot listen, bypasses it.

Each `AgentCache` here stands for one gateway instance (its own listening connection); changes come through the
store on a second engine, as from another instance or the CLI. Notices arrive asynchronously, so where one is
awaited the test polls with a deadline (`NOTICE_BOUND_SECONDS`). SQLite, which has no cache, is covered at the end.
"""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator
from contextlib import AbstractAsyncContextManager, AbstractContextManager
from typing import Any

import pytest
import sqlalchemy as sa
from cryptography.fernet import Fernet
from sqlalchemy.engine import make_url
from sqlalchemy.ext.asyncio import AsyncEngine

from external_agents.credential_cipher import CredentialCipher
from external_agents.gateway.administration import rotate_credentials
from external_agents.models.migrate import upgrade
from external_agents.nodes.agent_cache import LISTENER_APPLICATION_NAME, AgentCache
from external_agents.stores.agents import delete_agent, insert_agent, update_agent
from external_agents.stores.database import create_engine
from tests import notified_caches
from tests.clocks import FakeClock
from tests.factories import TEST_FERNET_KEY, TEST_POSTGRES_URL, make_settings
from tests.notified_caches import NOTICE_BOUND_SECONDS, reads_of, two_engines, until

DATABASE = make_url(TEST_POSTGRES_URL).set(database=f"{make_url(TEST_POSTGRES_URL).database}_agent_cache")


@pytest.fixture(scope="module")
async def engines(tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[tuple[AsyncEngine, AsyncEngine]]:
    """The gateway's engine and a second one on the same database, the other instance's or the CLI's."""
    async with two_engines(DATABASE, str(tmp_path_factory.mktemp("agent-cache"))) as pair:
        yield pair


def listening(cache: AgentCache) -> AbstractAsyncContextManager[asyncio.Task[None]]:
    return notified_caches.listening(cache, bound=NOTICE_BOUND_SECONDS)


def agent_reads(engine: AsyncEngine) -> AbstractContextManager[list[str]]:
    """The statements `engine` sends that read external_agents, while the block runs."""
    return reads_of("external_agents", engine)


async def new_agent(engine: AsyncEngine, **values: Any) -> dict[str, Any]:
    row = {
        "id": str(uuid.uuid4()),
        "name": f"agent-{uuid.uuid4().hex[:8]}",
        "platform": "custom_http",
        "platform_config": {"url": "https://api.example.com/hook"},
        "auth_config": {"auth_type": "bearer_token"},
        "encrypted_credentials": CredentialCipher([TEST_FERNET_KEY]).encrypt({"auth": {"token": "t"}}),
        "requests_per_minute": 60,
        "organization_id": f"org-{uuid.uuid4().hex[:8]}",
        "created_by": "key-1",
        **values,
    }
    return await insert_agent(engine, row)


async def test_a_found_agent_is_served_from_memory_to_its_own_organisation_only(engines):
    gateway, writer = engines
    cache = AgentCache(gateway)
    agent = await new_agent(writer)
    org, agent_id = agent["organization_id"], agent["id"]
    async with listening(cache):
        with agent_reads(gateway) as reads:
            found = [await cache.snapshot(organization_id=org, agent_id=agent_id) for _ in range(3)]
            other = await cache.snapshot(organization_id="another-org", agent_id=agent_id)
        assert len(cache) == 1
    # Stopping listening empties it.
    assert len(cache) == 0
    assert [s.id if s else None for s in found] == [agent_id] * 3
    assert found[0] is found[1] is found[2]
    assert other is None
    # The first load and the other organisation's read the database; the second and third came from memory.
    assert len(reads) == 2


async def test_unknown_agents_are_never_kept(engines):
    gateway, _ = engines
    cache = AgentCache(gateway)
    async with listening(cache):
        with agent_reads(gateway) as reads:
            for _ in range(20):
                assert await cache.snapshot(organization_id="org", agent_id=str(uuid.uuid4())) is None
    assert len(reads) == 20
    assert len(cache) == 0


async def test_every_change_through_the_store_drops_the_agent_from_every_listening_cache(engines):
    gateway, writer = engines
    first, second = AgentCache(gateway), AgentCache(gateway)
    agent = await new_agent(writer)
    org, agent_id = agent["organization_id"], agent["id"]

    async def seen_by_both() -> list[Any]:
        return [await cache.snapshot(organization_id=org, agent_id=agent_id) for cache in (first, second)]

    changes = [
        ({"requests_per_minute": 7}, lambda s: s.requests_per_minute == 7),
        ({"platform_config": {"url": "https://api.example.com/moved"}}, lambda s: "moved" in s.platform_config["url"]),
        ({"daily_execution_limit": 3}, lambda s: s.daily_execution_limit == 3),
    ]
    async with listening(first), listening(second):
        for values, applied in changes:
            assert not any(applied(s) for s in await seen_by_both())
            await update_agent(writer, organization_id=org, agent_id=agent_id, values=values)
            await until(lambda: len(first) == len(second) == 0, f"the caches to drop the agent after {values}")
            assert all(applied(s) for s in await seen_by_both())

        # The CLI's key rotation replaces every token in its own transactions.
        before = (await seen_by_both())[0].sealed_credentials
        new_key = Fernet.generate_key().decode()
        assert (await rotate_credentials(writer, new_key=new_key, old_key=TEST_FERNET_KEY)).rotated >= 1
        await until(lambda: len(first) == len(second) == 0, "the caches to drop the agent after the rotation")
        rotated = await seen_by_both()
        assert all(s.sealed_credentials != before for s in rotated)
        assert CredentialCipher([new_key]).decrypt(rotated[0].sealed_credentials) == {"auth": {"token": "t"}}

        assert await delete_agent(writer, organization_id=org, agent_id=agent_id)
        await until(lambda: len(first) == len(second) == 0, "the caches to drop the deleted agent")
        assert await seen_by_both() == [None, None]


async def test_a_cache_that_is_not_listening_reads_every_time(engines):
    gateway, writer = engines
    cache = AgentCache(gateway)
    agent = await new_agent(writer)
    with agent_reads(gateway) as reads:
        for _ in range(3):
            assert await cache.snapshot(organization_id=agent["organization_id"], agent_id=agent["id"])
    assert len(reads) == 3
    assert len(cache) == 0 and not cache.listening


async def test_a_lost_listening_connection_empties_the_cache_until_it_listens_again(engines):
    gateway, writer = engines
    # Long enough to read the agent once while it reconnects.
    cache = AgentCache(gateway, reconnect_seconds=1.0)
    agent = await new_agent(writer)
    org, agent_id = agent["organization_id"], agent["id"]
    async with listening(cache):
        await cache.snapshot(organization_id=org, agent_id=agent_id)
        assert len(cache) == 1
        async with writer.connect() as connection:
            ended = await connection.scalar(
                sa.text(
                    "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity "
                    "WHERE application_name = :name AND datname = current_database()"
                ),
                {"name": LISTENER_APPLICATION_NAME},
            )
        assert ended == 1
        await until(lambda: not cache.listening, "the cache to notice its connection ended")
        assert len(cache) == 0
        # Changed while nothing listens: bypassed, the cache still answers with the agent as stored.
        await update_agent(writer, organization_id=org, agent_id=agent_id, values={"requests_per_minute": 11})
        with agent_reads(gateway) as reads:
            assert (await cache.snapshot(organization_id=org, agent_id=agent_id)).requests_per_minute == 11
        assert len(reads) == 1 and len(cache) == 0
        await until(lambda: cache.listening, "the cache to listen again")
        assert (await cache.snapshot(organization_id=org, agent_id=agent_id)).requests_per_minute == 11
        assert len(cache) == 1


async def test_a_change_that_sent_no_notice_is_seen_once_the_entry_expires(engines):
    gateway, writer = engines
    clock = FakeClock()
    cache = AgentCache(gateway, max_age_seconds=10.0, clock=clock)
    agent = await new_agent(writer)
    org, agent_id = agent["organization_id"], agent["id"]
    async with listening(cache):
        await cache.snapshot(organization_id=org, agent_id=agent_id)
        async with writer.begin() as connection:
            await connection.execute(
                sa.text("UPDATE external_agents SET requests_per_minute = 99 WHERE id = :id"), {"id": agent_id}
            )
        clock.advance(9.9)
        assert (await cache.snapshot(organization_id=org, agent_id=agent_id)).requests_per_minute == 60
        clock.advance(0.1)
        assert (await cache.snapshot(organization_id=org, agent_id=agent_id)).requests_per_minute == 99


async def test_the_least_recently_used_agent_leaves_a_full_cache(engines):
    gateway, writer = engines
    cache = AgentCache(gateway, max_entries=2)
    first, second, third = [await new_agent(writer) for _ in range(3)]
    async with listening(cache):
        for agent in (first, second, first, third):
            await cache.snapshot(organization_id=agent["organization_id"], agent_id=agent["id"])
        assert len(cache) == 2
        with agent_reads(gateway) as reads:
            for agent in (first, third):
                await cache.snapshot(organization_id=agent["organization_id"], agent_id=agent["id"])
            assert reads == []
            await cache.snapshot(organization_id=second["organization_id"], agent_id=second["id"])
            assert len(reads) == 1


async def test_nothing_is_cached_on_sqlite(tmp_path):
    settings = make_settings(f"sqlite:///{tmp_path}/agents.db", str(tmp_path))
    upgrade(settings, report=lambda _line: None)
    engine = create_engine(settings)
    try:
        cache = AgentCache(engine)
        await asyncio.wait_for(cache.listen(), 1.0)
        agent = await new_agent(engine)
        for _ in range(2):
            assert await cache.snapshot(organization_id=agent["organization_id"], agent_id=agent["id"])
        assert len(cache) == 0 and not cache.listening
    finally:
        await engine.dispose()
