"""Everything the channels share, created once at start-up from the settings: clients, cipher, workflows.

Clients are built here and handed to nodes through their config; no module creates its own.
"""

from __future__ import annotations

from dataclasses import dataclass

from redis.asyncio import BlockingConnectionPool, Redis
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff
from sqlalchemy.ext.asyncio import AsyncEngine

from credential_cipher import CredentialCipher
from nodes.agents import AgentDefaults
from nodes.platforms.base import DeliveryOptions
from settings import Settings
from stores.database import create_engine
from workflows.agent_registry import RegistryWorkflows, build_registry_workflows
from workflows.runner import WorkflowRunner


@dataclass
class AppState:
    settings: Settings
    engine: AsyncEngine
    redis: Redis | None
    cipher: CredentialCipher
    runner: WorkflowRunner
    registry: RegistryWorkflows

    async def aclose(self) -> None:
        if self.redis is not None:
            await self.redis.aclose()
        await self.engine.dispose()


def cipher_from(settings: Settings) -> CredentialCipher:
    """Encrypt with EXTERNAL_AGENT_ENCRYPTION_KEY; also read tokens already rotated to the _NEW key."""
    keys = [settings.external_agent_encryption_key]
    if settings.external_agent_encryption_key_new:
        keys.append(settings.external_agent_encryption_key_new)
    return CredentialCipher([k for k in keys if k])


def redis_from(settings: Settings) -> Redis | None:
    if not settings.redis_url:
        return None
    # A blocking pool waits for a free connection instead of raising ConnectionError under a burst, which the
    # rate limiter would take for "Redis unreachable"; one quick retry replaces a connection a restart closed,
    # where redis-py's default ten backed-off retries would stall every call while Redis is down.
    pool = BlockingConnectionPool.from_url(
        settings.redis_url,
        max_connections=settings.redis_max_connections,
        timeout=settings.redis_timeout_seconds,
        socket_timeout=settings.redis_timeout_seconds,
        socket_connect_timeout=settings.redis_timeout_seconds,
    )
    return Redis(connection_pool=pool, retry=Retry(NoBackoff(), 1))


def build_state(settings: Settings) -> AppState:
    engine = create_engine(settings)
    cipher = cipher_from(settings)
    defaults = AgentDefaults(
        monthly_budget=settings.external_agent_default_monthly_budget,
        daily_budget=settings.external_agent_default_daily_budget,
        cost_per_execution=settings.external_agent_default_cost_per_execution,
        per_minute=settings.external_agent_default_rate_limit_per_minute,
        per_hour=settings.external_agent_default_rate_limit_per_hour,
        per_day=settings.external_agent_default_rate_limit_per_day,
    )
    options = DeliveryOptions(
        timeout_seconds=settings.external_agent_webhook_timeout_seconds,
        retry_attempts=settings.external_agent_webhook_retry_attempts,
        allow_private_webhooks=settings.external_agent_allow_private_webhooks,
        allowed_webhook_domains=tuple(settings.external_agent_allowed_webhook_domains),
    )
    return AppState(
        settings=settings,
        engine=engine,
        redis=redis_from(settings),
        cipher=cipher,
        runner=WorkflowRunner(),
        registry=build_registry_workflows(engine=engine, cipher=cipher, defaults=defaults, options=options),
    )
