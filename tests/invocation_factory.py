"""Typed invocations for unit tests of the pipeline's plain functions, built without a runtime or a database."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from external_agents.nodes.governance.rate_limiter import RateLimitDecision
from external_agents.nodes.invocation import prepare_invocation
from external_agents.nodes.invocation_state import AgentSnapshot, Invocation
from external_agents.stores.budgets import BudgetRefusal, Reservation

IDENTITY = {
    "external_user_id": "user-42",
    "external_user_email": "user@example.com",
    "external_system": "crm",
    "external_session_id": "session-1",
}
STARTED = datetime(2026, 12, 1, 9, 30, tzinfo=UTC)
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
        identity={**IDENTITY, **identity},
        body={"input": {"q": "hello"}, "metadata": {"ticket": 7}} if body is None else body,
        now=STARTED,
    )
    return prepared.updated(agent=agent or agent_snapshot())
