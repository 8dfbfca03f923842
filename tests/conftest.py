"""Shared fixtures: where the real PostgreSQL and Redis used by the tests live.

TEST_POSTGRES_URL and TEST_REDIS_URL override the defaults (the local services this project's CI starts).
Tests use their own PostgreSQL database and Redis database number, never the service's.
"""

from __future__ import annotations

import os
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass

import httpx
import pytest

pytest_plugins = ["tests.platform_server"]

TEST_POSTGRES_URL = os.environ.get("TEST_POSTGRES_URL", "postgresql://postgres@127.0.0.1:5432/external_agents_test")
TEST_REDIS_URL = os.environ.get("TEST_REDIS_URL", "redis://127.0.0.1:6379/15")


@pytest.fixture(scope="session")
def redis_url() -> str:
    return TEST_REDIS_URL


@pytest.fixture(scope="session")
def postgres_url() -> str:
    return TEST_POSTGRES_URL


# A fixed key so tests can read what the app encrypted; never used outside tests.
TEST_FERNET_KEY = "kWbmmFq6ZcKXM0tM6aqNa2w-5BWAjZSZ8mHH1l3b-Vc="


def make_settings(database_url: str, tmp_dir: str, **overrides: object):
    """Settings for a test app: the given database, a fixed key, webhooks to 127.0.0.1 allowed."""
    from external_agents.settings import load_settings

    values: dict[str, object] = {
        "database_url": database_url,
        "kaizen_data_dir": tmp_dir,
        "external_agent_encryption_key": TEST_FERNET_KEY,
        "external_agent_allow_private_webhooks": True,
        "external_agent_webhook_timeout_seconds": 2.0,
        "external_agent_webhook_retry_attempts": 1,
        "redis_url": None,
    }
    values.update(overrides)
    return load_settings(**values)


def reset_postgres_database(url: str) -> None:
    """Drop and recreate the test database so each session starts from nothing."""
    import psycopg2
    from sqlalchemy.engine import make_url

    parsed = make_url(url)
    admin = psycopg2.connect(
        host=parsed.host, port=parsed.port or 5432, user=parsed.username or "postgres", dbname="postgres"
    )
    admin.autocommit = True
    with admin.cursor() as cursor:
        cursor.execute(
            "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = %s AND pid <> pg_backend_pid()",
            (parsed.database,),
        )
        cursor.execute(f'DROP DATABASE IF EXISTS "{parsed.database}"')
        cursor.execute(f'CREATE DATABASE "{parsed.database}"')
    admin.close()


@dataclass(frozen=True)
class Org:
    """An organisation of its own for one test, with an admin key (tests do not see each other's data)."""

    organization_id: str
    api_key: str

    @property
    def headers(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.api_key}"}


@pytest.fixture(scope="session", params=["sqlite", "postgres"])
async def gateway(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory, postgres_url: str):
    """The Nexus app, migrated and started, shared by the tests of a session: embedded (SQLite, in-process
    rate limiter) and production-like (PostgreSQL and Redis)."""
    from external_agents.models.migrate import upgrade
    from external_agents.nexus_app import build_app

    data_dir = tmp_path_factory.mktemp(f"gateway-{request.param}")
    if request.param == "postgres":
        reset_postgres_database(postgres_url)
        settings = make_settings(postgres_url, str(data_dir), redis_url=TEST_REDIS_URL)
    else:
        settings = make_settings(f"sqlite:///{data_dir}/gateway.db", str(data_dir))
    upgrade(settings, report=lambda _line: None)
    app = build_app(settings)
    async with app.fastapi_app.router.lifespan_context(app.fastapi_app):
        yield app


@pytest.fixture
async def client(gateway) -> AsyncIterator[httpx.AsyncClient]:
    transport = httpx.ASGITransport(app=gateway.fastapi_app)
    async with httpx.AsyncClient(transport=transport, base_url="http://gateway.test") as http:
        yield http


async def new_org(gateway, permissions: list[str] | None = None, organization_id: str | None = None) -> Org:
    from external_agents.stores.api_keys import create_api_key

    organization_id = organization_id or f"org-{uuid.uuid4().hex[:10]}"
    _row, key = await create_api_key(
        gateway.external_agents.engine,
        organization_id=organization_id,
        name="test",
        permissions=permissions or ["admin"],
    )
    return Org(organization_id=organization_id, api_key=key)


@pytest.fixture
async def org(gateway) -> Org:
    return await new_org(gateway)
