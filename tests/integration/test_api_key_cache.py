"""The API-key cache on a real PostgreSQL: what it serves from memory, what it never keeps, and that a revocation
committed by anyone drops the key from every cache listening, or, when a cache cannot listen, bypasses it.

Each `ApiKeyCache` here stands for one gateway instance (its own listening connection). Revocations come from a
separate engine, as from the CLI, and, unless a test says otherwise, as if from another process: this process's
caches are not told directly (`from_elsewhere`), so only the NOTIFY can reach them. Notices arrive
asynchronously, so where one is awaited the test polls with a deadline and asserts the bound
(`NOTICE_BOUND_SECONDS`). SQLite, which has no cache, is covered at the end.
"""

from __future__ import annotations

import asyncio
import time
import uuid
import weakref
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import AbstractAsyncContextManager, AbstractContextManager
from typing import Any

import pytest
import sqlalchemy as sa
from sqlalchemy.engine import make_url
from sqlalchemy.ext.asyncio import AsyncEngine

from external_agents.models.migrate import upgrade
from external_agents.stores import api_key_cache, api_keys
from external_agents.stores.api_key_cache import LISTENER_APPLICATION_NAME, ApiKeyCache
from external_agents.stores.api_keys import caller_by_hash, create_api_key, hash_key, revoke_api_key
from external_agents.stores.database import create_engine
from tests import notified_caches
from tests.clocks import FakeClock
from tests.factories import TEST_POSTGRES_URL, make_settings
from tests.notified_caches import NOTICE_BOUND_SECONDS, reads_of, two_engines, until

DATABASE = make_url(TEST_POSTGRES_URL).set(database=f"{make_url(TEST_POSTGRES_URL).database}_keys")
# How long a cache may take to connect and listen, on a machine whose PostgreSQL other suites keep busy.
CONNECT_BOUND_SECONDS = 15.0


@pytest.fixture(scope="module")
async def engines(tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[tuple[AsyncEngine, AsyncEngine]]:
    """The gateway's engine and a second one on the same database, the CLI's."""
    async with two_engines(DATABASE, str(tmp_path_factory.mktemp("key-cache"))) as pair:
        yield pair


def listening(cache: ApiKeyCache) -> AbstractAsyncContextManager[asyncio.Task[None]]:
    return notified_caches.listening(cache, bound=CONNECT_BOUND_SECONDS)


def key_lookups(engine: AsyncEngine) -> AbstractContextManager[list[str]]:
    """The statements `engine` sends that read api_keys, while the block runs."""
    return reads_of("api_keys", engine)


@pytest.fixture
def from_elsewhere(monkeypatch: pytest.MonkeyPatch) -> None:
    """Revocations in this test reach this process's caches only as another process's would: by their notice."""
    monkeypatch.setattr(api_keys, "_local_listeners", weakref.WeakSet())


async def new_key(engine: AsyncEngine, permissions: list[str] | None = None) -> tuple[str, str]:
    row, key = await create_api_key(
        engine, organization_id=f"org-{uuid.uuid4().hex[:8]}", name="cached", permissions=permissions or ["admin"]
    )
    return row["id"], key


async def revoke_by_hand(engine: AsyncEngine, key_id: str) -> None:
    """A change made outside the store, which sends no notice (what a missed notice looks like to a cache)."""
    async with engine.begin() as connection:
        await connection.execute(sa.text("UPDATE api_keys SET revoked_at = now() WHERE id = :id"), {"id": key_id})


async def eventually_refused(cache: ApiKeyCache, key: str) -> float:
    async def refused() -> bool:
        return await cache.caller(key) is None

    return await until_async(refused, "the key to be refused")


async def until_async(condition: Callable[[], Awaitable[bool]], what: str) -> float:
    started = time.monotonic()
    while not await condition():
        assert time.monotonic() - started < NOTICE_BOUND_SECONDS, f"waited {NOTICE_BOUND_SECONDS} s for {what}"
        await asyncio.sleep(0.005)
    return time.monotonic() - started


async def test_a_known_key_is_served_from_memory_and_revocation_drops_it_from_every_cache(engines, from_elsewhere):
    gateway, cli = engines
    first, second = ApiKeyCache(gateway), ApiKeyCache(gateway)
    key_id, key = await new_key(cli, ["read:external_agent"])
    async with listening(first), listening(second):
        with key_lookups(gateway) as lookups:
            callers = [await cache.caller(key) for cache in (first, second, first, second, first)]
        assert len(lookups) == 2, "one lookup per instance, then from memory"
        assert {c.permissions for c in callers if c is not None} == {frozenset({"read:external_agent"})}
        assert len({c.api_key_id for c in callers if c is not None}) == 1

        assert await revoke_api_key(cli, key_id=key_id)
        waited = [await until(lambda cache=cache: len(cache) == 0, "the notice") for cache in (first, second)]
        assert await first.caller(key) is None and await second.caller(key) is None
    print(f"revocation reached both caches in {max(waited) * 1000:.1f} ms")


async def test_a_lookup_that_began_before_a_revocation_does_not_store_its_answer(engines, monkeypatch, from_elsewhere):
    gateway, cli = engines
    cache = ApiKeyCache(gateway)
    key_id, key = await new_key(cli)
    read, answer = asyncio.Event(), asyncio.Event()

    async def slow_lookup(engine: AsyncEngine, key_hash: str) -> Any:
        # The real lookup, whose answer reaches the cache only after the test lets it.
        found = await caller_by_hash(engine, key_hash)
        read.set()
        await answer.wait()
        return found

    monkeypatch.setattr(api_key_cache, "caller_by_hash", slow_lookup)
    async with listening(cache):
        lookup = asyncio.create_task(cache.caller(key))
        await read.wait()
        generation = cache._generation
        assert await revoke_api_key(cli, key_id=key_id)
        await until(lambda: cache._generation != generation, "the notice")
        answer.set()
        assert await lookup is not None, "read before the revocation committed"
        assert len(cache) == 0, "but not kept"
        monkeypatch.undo()
        assert await cache.caller(key) is None


async def test_a_revocation_committed_by_this_process_is_dropped_before_the_next_lookup(engines):
    gateway, cli = engines
    cache = ApiKeyCache(gateway)
    key_id, key = await new_key(cli)
    async with listening(cache):
        assert await cache.caller(key) is not None
        assert await revoke_api_key(cli, key_id=key_id)
        # Nothing awaited in between: its notice may still be on its way.
        assert len(cache) == 0
        assert await cache.caller(key) is None


async def test_unknown_and_revoked_keys_are_never_kept_and_cannot_evict_a_good_one(engines):
    gateway, cli = engines
    cache = ApiKeyCache(gateway, max_entries=2)
    key_id, revoked = await new_key(cli)
    assert await revoke_api_key(cli, key_id=key_id)
    _id, good = await new_key(cli)
    async with listening(cache):
        assert await cache.caller(good) is not None
        for guess in [f"eak_{uuid.uuid4().hex}" for _ in range(200)] + [revoked] * 3:
            assert await cache.caller(guess) is None
        assert len(cache) == 1
        with key_lookups(gateway) as lookups:
            assert await cache.caller(good) is not None
            assert await cache.caller(revoked) is None
        assert len(lookups) == 1, "the good key from memory, the revoked one looked up again"


async def test_the_least_recently_used_key_leaves_a_full_cache(engines):
    gateway, cli = engines
    cache = ApiKeyCache(gateway, max_entries=2)
    keys = [(await new_key(cli))[1] for _ in range(3)]
    async with listening(cache):
        await cache.caller(keys[0])
        await cache.caller(keys[1])
        await cache.caller(keys[0])  # keys[1] is now the least recently used
        await cache.caller(keys[2])
        assert len(cache) == 2
        with key_lookups(gateway) as lookups:
            await cache.caller(keys[0])
            await cache.caller(keys[2])
        assert lookups == []
        with key_lookups(gateway) as lookups:
            await cache.caller(keys[1])
        assert len(lookups) == 1


async def test_the_cache_holds_the_keys_hash_never_the_key(engines):
    gateway, cli = engines
    cache = ApiKeyCache(gateway)
    _id, key = await new_key(cli)
    async with listening(cache):
        await cache.caller(key)
        assert list(cache._entries) == [hash_key(key)]
        assert key not in repr(cache._entries)


async def test_a_change_made_by_hand_is_seen_once_the_entry_is_older_than_its_bound(engines):
    gateway, cli = engines
    clock = FakeClock()
    cache = ApiKeyCache(gateway, max_age_seconds=10.0, clock=clock)
    key_id, key = await new_key(cli)
    async with listening(cache):
        assert await cache.caller(key) is not None
        await revoke_by_hand(cli, key_id)
        clock.advance(9.9)
        assert await cache.caller(key) is not None, "served from memory: SQL by hand sends no notice"
        clock.advance(0.2)
        assert await cache.caller(key) is None


async def test_a_cache_that_is_not_listening_is_bypassed_and_emptied(engines):
    gateway, cli = engines
    # Reconnecting only after a minute keeps this cache from listening again for the rest of the test.
    cache = ApiKeyCache(gateway, reconnect_seconds=60.0)
    assert not cache.listening
    _before_id, before = await new_key(cli)
    assert await cache.caller(before) is not None and len(cache) == 0, "nothing is kept before it listens"

    key_id, key = await new_key(cli)
    _id, other = await new_key(cli)
    async with listening(cache):
        assert await cache.caller(key) is not None and await cache.caller(other) is not None
        assert len(cache) == 2
        async with cli.connect() as connection:
            terminated = (
                await connection.execute(
                    sa.text(
                        "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity "
                        "WHERE datname = current_database() AND application_name = :name"
                    ),
                    {"name": LISTENER_APPLICATION_NAME},
                )
            ).scalar_one()
        assert terminated == 1
        await until(lambda: not cache.listening, "the cache to see its connection end")
        assert len(cache) == 0
        # A revocation while nobody listens for it (as one would be missed) is seen at once: nothing is served
        # from memory; a good key is still accepted, looked up each time.
        await revoke_by_hand(cli, key_id)
        assert await cache.caller(key) is None
        with key_lookups(gateway) as lookups:
            assert await cache.caller(other) is not None
            assert await cache.caller(other) is not None
        assert len(lookups) == 2 and len(cache) == 0


async def test_a_cache_listens_again_after_its_connection_ends(engines, from_elsewhere):
    gateway, cli = engines
    cache = ApiKeyCache(gateway, reconnect_seconds=0.05)
    key_id, key = await new_key(cli)
    async with listening(cache):
        await cache.caller(key)
        async with cli.connect() as connection:
            await connection.execute(
                sa.text(
                    "SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
                    "WHERE datname = current_database() AND application_name = :name"
                ),
                {"name": LISTENER_APPLICATION_NAME},
            )
        await until(lambda: not cache.listening, "the connection to end")
        await until(lambda: cache.listening, "the cache to listen again", CONNECT_BOUND_SECONDS)
        assert await cache.caller(key) is not None and len(cache) == 1
        assert await revoke_api_key(cli, key_id=key_id)
        await eventually_refused(cache, key)


async def test_sqlite_keeps_nothing_so_a_revocation_by_another_process_applies_to_the_next_lookup(tmp_path):
    settings = make_settings(f"sqlite:///{tmp_path}/keys.db", str(tmp_path))
    upgrade(settings, report=lambda _line: None)
    engine, other_process = create_engine(settings), create_engine(settings)
    try:
        cache = ApiKeyCache(engine)
        await asyncio.wait_for(cache.listen(), 1.0)  # nothing to listen to: returns at once
        key_id, key = await new_key(other_process)
        assert await cache.caller(key) is not None and await cache.caller(key) is not None
        assert len(cache) == 0
        assert await revoke_api_key(other_process, key_id=key_id)
        assert await cache.caller(key) is None
    finally:
        await engine.dispose()
        await other_process.dispose()
