"""Everything the channels share, created once at start-up from the settings: clients, cipher, workflows.

Clients are built here and handed to nodes through their config; no module creates its own.
"""

from __future__ import annotations

import asyncio
import uuid
from dataclasses import dataclass, field

from kailash.workflow import Workflow
from redis.asyncio import BlockingConnectionPool, Redis
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff
from sqlalchemy.ext.asyncio import AsyncEngine

from external_agents.credential_cipher import CredentialCipher
from external_agents.gateway.metrics import GatewayMetrics, MeteredRunner
from external_agents.nodes.agent_cache import AgentCache
from external_agents.nodes.agents import AgentDefaults
from external_agents.nodes.governance.budget import BudgetThresholds, PendingLease, delivery_lease_seconds
from external_agents.nodes.governance.policy_cache import PolicyCache
from external_agents.nodes.governance.rate_limiter import (
    FailoverRateLimiter,
    InProcessRateLimiter,
    RateLimiter,
    RedisRateLimiter,
)
from external_agents.nodes.platforms.auth import OAuth2TokenCache
from external_agents.nodes.platforms.base import DeliveryOptions
from external_agents.nodes.platforms.bulkhead import DeliveryBulkhead
from external_agents.nodes.platforms.http_client import PlatformClient
from external_agents.settings import Settings
from external_agents.stores.api_key_cache import ApiKeyCache
from external_agents.stores.database import create_engine
from external_agents.stores.invocations import keep_replaying
from external_agents.stores.pending import keep_sweeping
from external_agents.stores.unrecorded import UnrecordedJournal
from external_agents.workflows.agent_registry import (
    RegistryWorkflows,
    build_governance_status_workflow,
    build_registry_workflows,
)
from external_agents.workflows.examples import build_example_workflows
from external_agents.workflows.invocation import (
    InvocationDependencies,
    InvocationPipeline,
    build_invocation_workflow,
)
from external_agents.workflows.lineage import LineageWorkflows, build_lineage_workflows
from external_agents.workflows.policies import PolicyWorkflows, build_policy_workflows
from external_agents.workflows.runner import WorkflowRunner


@dataclass
class AppState:
    settings: Settings
    engine: AsyncEngine
    redis: Redis | None
    cipher: CredentialCipher
    runner: WorkflowRunner
    registry: RegistryWorkflows
    lineage: LineageWorkflows
    limiter: RateLimiter
    policy_cache: PolicyCache
    # The callers of recently used API keys, for the bearer-auth middleware and the MCP session.
    keys: ApiKeyCache
    # Recently invoked agents, for the invocation's first step.
    agent_cache: AgentCache
    http_client: PlatformClient
    invoke: Workflow
    pipeline: InvocationPipeline
    governance_status: Workflow
    policies: PolicyWorkflows
    host_workflows: dict[str, Workflow]
    metrics: GatewayMetrics
    journal: UnrecordedJournal
    # This process's id on the pending rows it owns, and their lease (stores/pending.py).
    lease: PendingLease
    background: list[asyncio.Task] = field(default_factory=list)

    async def start(self) -> None:
        self.background.append(asyncio.create_task(self.policy_cache.listen(), name="policy-cache-listener"))
        self.background.append(asyncio.create_task(self.keys.listen(), name="api-key-cache-listener"))
        self.background.append(asyncio.create_task(self.agent_cache.listen(), name="agent-cache-listener"))
        self.background.append(
            asyncio.create_task(keep_replaying(self.engine, self.journal), name="unrecorded-invocations-replay")
        )
        self.background.append(asyncio.create_task(keep_sweeping(self.engine), name="pending-invocations-sweeper"))

    async def aclose(self) -> None:
        for task in self.background:
            task.cancel()
        await asyncio.gather(*self.background, return_exceptions=True)
        await self.http_client.aclose()
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
        # On the pool's connections: Redis() ignores `retry=` when it is handed a pool.
        retry=Retry(NoBackoff(), 1),
    )
    return Redis(connection_pool=pool)


def limiter_from(settings: Settings, redis: Redis | None) -> RateLimiter:
    """Redis when configured (exact across instances), with the per-instance fallback; else in-process only."""
    if redis is None:
        return InProcessRateLimiter()
    return FailoverRateLimiter(
        RedisRateLimiter(redis), InProcessRateLimiter(), fail_open=settings.external_agent_rate_limit_fail_open
    )


def build_state(settings: Settings, *, host_workflows: dict[str, Workflow] | None = None) -> AppState:
    """Everything the channels share. `host_workflows`: the application's own workflows (default: examples)."""
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
        max_reported_cost_usd=settings.external_agent_max_reported_cost_usd,
    )
    redis = redis_from(settings)
    limiter = limiter_from(settings, redis)
    policy_cache = PolicyCache(engine, redis=redis)
    agent_cache = AgentCache(engine)
    per_host = settings.external_agent_max_concurrent_deliveries_per_host
    # The pool holds several hosts' worth of their bulkhead limit, so one host (its deliveries capped at
    # `per_host`) can never take the connections every other host needs.
    http_client = PlatformClient(max_connections=max(200, 4 * per_host))
    journal = UnrecordedJournal(settings.kaizen_data_dir / "unrecorded")
    # Made once per process: the owner of the pending rows this process writes.
    lease = PendingLease(instance_id=uuid.uuid4().hex, seconds=delivery_lease_seconds(options))
    thresholds = BudgetThresholds(
        warning=settings.external_agent_budget_warning_threshold,
        degradation=settings.external_agent_budget_degradation_threshold,
    )
    invocation_dependencies = InvocationDependencies(
        engine=engine,
        policy_cache=policy_cache,
        resolution=settings.external_agent_policy_conflict_resolution,
        fail_mode=settings.external_agent_policy_fail_mode,
        limiter=limiter,
        thresholds=thresholds,
        cipher=cipher,
        client=http_client,
        options=options,
        token_cache=OAuth2TokenCache(),
        bulkhead=DeliveryBulkhead(
            per_agent=settings.external_agent_max_concurrent_deliveries_per_agent, per_host=per_host
        ),
        alert_channel_name=settings.external_agent_alert_channel_name,
        journal=journal,
        lease=lease,
        agent_cache=agent_cache,
    )
    invoke = build_invocation_workflow(invocation_dependencies)
    pipeline = InvocationPipeline(invocation_dependencies)
    runner = WorkflowRunner()
    metrics = GatewayMetrics(redis_configured=redis is not None)
    if host_workflows is None:
        # Invocations started inside host workflows run and are counted like the channels' own.
        metered = MeteredRunner(runner, invoke_workflow=invoke, pipeline=pipeline, metrics=metrics)
        host_workflows = build_example_workflows(runner=metered, invoke_workflow=invoke)
    return AppState(
        settings=settings,
        engine=engine,
        redis=redis,
        cipher=cipher,
        runner=runner,
        registry=build_registry_workflows(engine=engine, cipher=cipher, defaults=defaults, options=options),
        lineage=build_lineage_workflows(engine=engine),
        limiter=limiter,
        policy_cache=policy_cache,
        keys=ApiKeyCache(engine),
        agent_cache=agent_cache,
        http_client=http_client,
        invoke=invoke,
        pipeline=pipeline,
        governance_status=build_governance_status_workflow(
            engine=engine, limiter=limiter, policy_cache=policy_cache, thresholds=thresholds
        ),
        policies=build_policy_workflows(engine=engine, policy_cache=policy_cache),
        host_workflows=host_workflows,
        metrics=metrics,
        journal=journal,
        lease=lease,
    )
