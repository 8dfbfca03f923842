"""Shared fixtures: the real PostgreSQL and Redis the tests use, and the gateway app every suite talks to.

Only fixtures live here; what tests build (settings, organisations, agents, identity headers) is in
tests/factories.py, which test modules import directly.
"""

from __future__ import annotations

from collections.abc import AsyncIterator

import httpx
import pytest

from tests.factories import (
    TEST_POSTGRES_URL,
    TEST_REDIS_URL,
    Org,
    app_client,
    make_settings,
    new_org,
    reset_postgres_database,
    running_app,
)

pytest_plugins = ["tests.platform_server"]


@pytest.fixture(scope="session")
def redis_url() -> str:
    return TEST_REDIS_URL


@pytest.fixture(scope="session")
def postgres_url() -> str:
    return TEST_POSTGRES_URL


@pytest.fixture(scope="session", params=["sqlite", "postgres"])
async def gateway(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory, postgres_url: str):
    """The Nexus app, migrated and started, shared by the tests of a session: embedded (SQLite, in-process
    rate limiter) and production-like (PostgreSQL and Redis)."""
    data_dir = tmp_path_factory.mktemp(f"gateway-{request.param}")
    if request.param == "postgres":
        reset_postgres_database(postgres_url)
        settings = make_settings(postgres_url, str(data_dir), redis_url=TEST_REDIS_URL)
    else:
        settings = make_settings(f"sqlite:///{data_dir}/gateway.db", str(data_dir))
    async with running_app(settings) as app:
        yield app


@pytest.fixture
async def client(gateway) -> AsyncIterator[httpx.AsyncClient]:
    async with app_client(gateway) as http:
        yield http


@pytest.fixture
async def org(gateway) -> Org:
    return await new_org(gateway)
