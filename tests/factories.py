"""What tests build: settings, databases, organisations with API keys, identity headers, agents, and typed
invocations for the pipeline's plain functions.

One home for the builders every suite shares, so a test module imports them from here rather than from
conftest.py (which holds only fixtures) or from another test module. TEST_POSTGRES_URL and TEST_REDIS_URL
override the default services (the local ones this project's CI starts); tests use their own PostgreSQL
database and Redis database number, never the service's.
"""

from __future__ import annotations

import os
import uuid
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager, contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import httpx
import psycopg2
import sqlalchemy as sa
from sqlalchemy.engine import make_url

from external_agents.nodes.governance.rate_limiter import RateLimitDecision
from external_agents.nodes.invocation import prepare_invocation
from external_agents.nodes.invocation_state import AgentSnapshot, Invocation
from external_agents.settings import Settings, load_settings
from external_agents.stores.api_keys import create_api_key
from external_agents.stores.budgets import BudgetRefusal, Reservation

TEST_POSTGRES_URL = os.environ.get("TEST_POSTGRES_URL", "postgresql://postgres@127.0.0.1:5432/external_agents_test")
TEST_REDIS_URL = os.environ.get("TEST_REDIS_URL", "redis://127.0.0.1:6379/15")

# A fixed key so tests can read what the app encrypted; never used outside tests.
TEST_FERNET_KEY = "kWbmmFq6ZcKXM0tM6aqNa2w-5BWAjZSZ8mHH1l3b-Vc="

# The caller's identity headers an invocation must carry.
IDENTITY = {
    "X-External-User-ID": "user-42",
    "X-External-User-Email": "test@example.com",
    "X-External-System": "test",
    "X-External-Session-ID": "test-session-123",
}


def make_settings(database_url: str, tmp_dir: str, **overrides: object) -> Settings:
    """Settings for a test app: the given database, a fixed key, webhooks to 127.0.0.1 allowed."""
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


def _admin_connection(url: str) -> psycopg2.extensions.connection:
    """An autocommit connection to the `postgres` database of the server at `url`."""
    parsed = make_url(url)
    admin = psycopg2.connect(
        host=parsed.host, port=parsed.port or 5432, user=parsed.username or "postgres", dbname="postgres"
    )
    admin.autocommit = True
    return admin


def drop_database(url: str) -> None:
    """Drop the PostgreSQL database at `url`, ending any connection still open to it."""
    name = make_url(url).database
    admin = _admin_connection(url)
    try:
        with admin.cursor() as cursor:
            cursor.execute(
                "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = %s AND pid <> pg_backend_pid()",
                (name,),
            )
            cursor.execute(f'DROP DATABASE IF EXISTS "{name}"')
    finally:
        admin.close()


def sql(url: str, statement: str, *params: Any) -> list[tuple[Any, ...]]:
    """Run one statement on the PostgreSQL database at `url` (a fresh connection) and return its rows."""
    connection = psycopg2.connect(url)
    try:
        with connection, connection.cursor() as cursor:
            cursor.execute(statement, params)
            return cursor.fetchall() if cursor.description else []
    finally:
        connection.close()


def reset_postgres_database(url: str) -> None:
    """Drop and recreate the test database so each session starts from nothing."""
    drop_database(url)
    admin = _admin_connection(url)
    try:
        with admin.cursor() as cursor:
            cursor.execute(f'CREATE DATABASE "{make_url(url).database}"')
    finally:
        admin.close()


UNLIMITED = {
    # Agent limits no benchmark or fault run reaches, so what they measure is never a refusal.
    **{"max_monthly_cost": 1_000_000.0, "max_daily_cost": 1_000_000.0, "cost_per_execution": 0.0001},
    **{"requests_per_minute": 10_000_000, "requests_per_hour": 10_000_000, "requests_per_day": 10_000_000},
}


@contextmanager
def throwaway_database(server_url: str, *, prefix: str) -> Iterator[str]:
    """A new, empty PostgreSQL database named `prefix` plus a random suffix, on the server of `server_url`.

    Yields its URL; the database is dropped afterwards.
    """
    url = make_url(server_url).set(database=f"{prefix}{uuid.uuid4().hex[:12]}").render_as_string(hide_password=False)
    reset_postgres_database(url)
    try:
        yield url
    finally:
        drop_database(url)


@dataclass(frozen=True)
class Org:
    """An organisation of its own for one test, with an admin key (tests do not see each other's data)."""

    organization_id: str
    api_key: str

    @property
    def headers(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.api_key}"}


async def new_org(gateway: Any, permissions: list[str] | None = None, organization_id: str | None = None) -> Org:
    """An organisation of its own with an API key (admin unless `permissions` says otherwise)."""
    organization_id = organization_id or f"org-{uuid.uuid4().hex[:10]}"
    _row, key = await create_api_key(
        gateway.external_agents.engine,
        organization_id=organization_id,
        name="test",
        permissions=permissions or ["admin"],
    )
    return Org(organization_id=organization_id, api_key=key)


@asynccontextmanager
async def running_app(settings: Settings) -> AsyncIterator[Any]:
    """The Nexus app on `settings`, migrated and started (its lifespan entered), as the server runs it."""
    # Imported here: Nexus loads some 1,600 modules, which unit tests never need.
    from external_agents.models.migrate import upgrade
    from external_agents.nexus_app import build_app

    upgrade(settings, report=lambda _line: None)
    app = build_app(settings)
    async with app.fastapi_app.router.lifespan_context(app.fastapi_app):
        yield app


@asynccontextmanager
async def app_client(app: Any, **options: Any) -> AsyncIterator[httpx.AsyncClient]:
    """An HTTP client calling `app` in-process (no port); `options` go to httpx.AsyncClient."""
    transport = httpx.ASGITransport(app=app.fastapi_app)
    async with httpx.AsyncClient(transport=transport, base_url="http://gateway.test", **options) as http:
        yield http


async def register(
    client: httpx.AsyncClient,
    org: Org,
    platform_server: Any,
    *,
    path: str = "/hook",
    url: str | None = None,
    **overrides: Any,
) -> dict[str, Any]:
    """A custom_http agent of `org` delivering to `path` on the local platform server (or to `url`)."""
    body = {
        "name": overrides.pop("name", f"agent-{path.strip('/')}"),
        "platform": "custom_http",
        "platform_config": {"url": url or platform_server.url(path)},
        "auth_config": {"auth_type": "bearer_token", "credentials": {"token": "platform-secret-token"}},
        **overrides,
    }
    response = await client.post("/api/external-agents", json=body, headers=org.headers)
    assert response.status_code == 201, response.text
    return response.json()


async def invoke(
    client: httpx.AsyncClient,
    org: Org,
    agent_id: str,
    body: Any = None,
    headers: dict[str, str] | None = None,
) -> httpx.Response:
    """Invoke `agent_id` as `org` with the IDENTITY headers (and any extra `headers`)."""
    return await client.post(
        f"/api/external-agents/{agent_id}/invoke",
        json={"input": "test"} if body is None else body,
        headers={**org.headers, **IDENTITY, **(headers or {})},
    )


async def rows(gateway: Any, sql: str, **params: Any) -> list[dict[str, Any]]:
    """The rows a SQL query returns from the gateway's database."""
    async with gateway.external_agents.engine.connect() as connection:
        return [dict(r._mapping) for r in (await connection.execute(sa.text(sql), params)).all()]


# Invoke metadata that must come back exactly: SQL-looking text, a template, nulls, 1.0, 1e308, an empty object.
INVOKE_METADATA: dict[str, Any] = {
    "ticket": "please delete from my calendar -- ${agent_id} 😀",
    "nested": {"list": [1, 2.5, None, True], "one": 1.0, "big": 1e308, "empty": {}},
}


def assert_exact_metadata(found: Any) -> None:
    assert found == INVOKE_METADATA
    # 1.0 stays a float: == alone would accept the integer 1.
    assert isinstance(found["nested"]["one"], float)


# Typed invocations, built without a runtime or a database.
INVOCATION_IDENTITY = {
    "external_user_id": "user-42",
    "external_user_email": "user@example.com",
    "external_system": "crm",
    "external_session_id": "session-1",
}
INVOCATION_STARTED = datetime(2026, 12, 1, 9, 30, tzinfo=UTC)
# A refusal of the per-minute window, a reservation at 90% of the month, a refusal of the daily budget.
DECISION = RateLimitDecision(
    allowed=False,
    limit=10,
    remaining=0,
    reset_at=1_765_000_000.25,
    retry_after_seconds=12,
    current_usage={"minute": 10, "hour": 10, "day": 10},
    exceeded_window="minute",
    backend="redis",
)
RESERVATION = Reservation(
    agent_id="agent-1",
    amount_micros=50_000,
    day_id="agent-1|day|2026-12-01",
    month_id="agent-1|month|2026-12",
    day_spent_micros=50_000,
    month_spent_micros=9_000_000,
    day_executions=1,
    month_executions=90,
)
REFUSAL = BudgetRefusal(
    period="daily", limit_micros=1_000_000, spent_micros=990_000, remaining_micros=10_000, reason="cost"
)


def agent_snapshot(**overrides: Any) -> AgentSnapshot:
    fields: dict[str, Any] = {
        "id": "agent-1",
        "name": "Support Bot",
        "platform": "custom_http",
        "platform_config": {"url": "https://platform.example/hook"},
        "auth_config": {"auth_type": "bearer_token"},
        "sealed_credentials": None,
        "cost_per_execution": 0.05,
        "max_daily_cost": 1.0,
        "max_monthly_cost": 10.0,
        "requests_per_minute": 10,
        "requests_per_hour": 100,
        "requests_per_day": 1000,
        "daily_execution_limit": None,
        "monthly_execution_limit": None,
    }
    return AgentSnapshot(**{**fields, **overrides})


def invocation(*, body: Any = None, agent: AgentSnapshot | None = None, **identity: Any) -> Invocation:
    """An invocation as LoadInvocationAgentNode leaves it: prepared, agent loaded, no step run yet."""
    prepared = prepare_invocation(
        caller={"api_key_id": "key-1", "organization_id": "org-1"},
        agent_id="agent-1",
        identity={**INVOCATION_IDENTITY, **identity},
        body={"input": {"q": "hello"}, "metadata": {"ticket": 7}} if body is None else body,
        now=INVOCATION_STARTED,
    )
    return prepared.updated(agent=agent or agent_snapshot())
