"""Where an agent stands: spend against its budgets, its rate-limit windows, and the policies that apply.

Read-only: the rate-limit windows are peeked, never counted, and no budget row is created.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from kailash.nodes.base import register_node

from external_agents.money import to_micros, to_usd
from external_agents.nodes.base import ExternalAgentNode, dependency, value
from external_agents.nodes.governance.budget import BudgetThresholds
from external_agents.nodes.governance.rate_limiter import RateLimits
from external_agents.stores.budgets import Spend, current_spend


def usage_fraction(spent_micros: int, budget_usd: float | None) -> float:
    limit = to_micros(budget_usd or 0)
    return spent_micros / limit if limit else 0.0


def governance_summary(agent: dict[str, Any], spend: Spend) -> dict[str, Any]:
    """The `governance` block of an agent's detail."""
    return {
        "monthly_budget_usd": agent["max_monthly_cost"],
        "monthly_spent_usd": to_usd(spend.month_spent_micros),
        "daily_budget_usd": agent["max_daily_cost"],
        "daily_spent_usd": to_usd(spend.day_spent_micros),
        "usage_percentage": round(usage_fraction(spend.month_spent_micros, agent["max_monthly_cost"]) * 100, 2),
        "invocations_today": spend.day_executions,
        "invocations_this_month": spend.month_executions,
    }


def budget_status(agent: dict[str, Any], spend: Spend, thresholds: BudgetThresholds) -> dict[str, Any]:
    usage = usage_fraction(spend.month_spent_micros, agent["max_monthly_cost"])
    monthly, daily = to_micros(agent["max_monthly_cost"] or 0), to_micros(agent["max_daily_cost"] or 0)
    execution_limit = agent["monthly_execution_limit"]
    return {
        "monthly_budget_usd": agent["max_monthly_cost"],
        "monthly_spent_usd": to_usd(spend.month_spent_micros),
        "remaining_monthly_usd": to_usd(max(monthly - spend.month_spent_micros, 0)),
        "daily_budget_usd": agent["max_daily_cost"],
        "daily_spent_usd": to_usd(spend.day_spent_micros),
        "remaining_daily_usd": to_usd(max(daily - spend.day_spent_micros, 0)),
        "monthly_execution_limit": execution_limit,
        "monthly_execution_count": spend.month_executions,
        "remaining_executions": None if execution_limit is None else max(execution_limit - spend.month_executions, 0),
        "usage_percentage": round(usage * 100, 2),
        "warning_triggered": usage >= thresholds.warning,
        "degraded_mode": usage >= thresholds.degradation,
        # cost_per_execution is the maximum billed per call: admission reserves it, and a platform reporting
        # more is billed this much (the overrun is audited and alerted; nodes/cost_overrun.py).
        "max_billed_per_call_usd": agent["cost_per_execution"],
    }


def rate_limit_status(decision: dict[str, Any]) -> dict[str, Any]:
    return {
        "allowed": decision["allowed"],
        "limit_exceeded": not decision["allowed"],
        "remaining": decision["remaining"],
        "current_usage": decision["current_usage"],
        "retry_after_seconds": decision["retry_after_seconds"],
        "reset_time": datetime.fromtimestamp(decision["reset_at"], UTC).isoformat(),
    }


def policy_status(policies: tuple[Any, ...], agent_id: str) -> dict[str, Any]:
    applicable = [p for p in policies if p.external_agent_id in (None, agent_id)]
    return {
        "total_policies": len(applicable),
        "enabled_policies": sum(1 for p in applicable if p.enabled),
        "active_policies": [
            {
                "policy_id": p.id,
                "name": p.name,
                "effect": p.effect,
                "priority": p.priority,
                "scope": "organization" if p.external_agent_id is None else "agent",
            }
            for p in applicable
            if p.enabled
        ],
    }


@register_node()
class AgentGovernanceNode(ExternalAgentNode):
    """Add the `governance` block (spend and invocation counts) to an agent's detail."""

    def get_parameters(self) -> dict[str, Any]:
        return {
            "engine": dependency("engine", "SQLAlchemy AsyncEngine"),
            "agent": value("agent", "the agent as presented"),
        }

    async def async_run(self, **kw: Any) -> dict[str, Any]:
        agent = kw["agent"]
        spend = await current_spend(kw["engine"], agent_id=agent["id"], now=datetime.now(UTC))
        return {"agent": {**agent, "governance": governance_summary(agent, spend)}}


@register_node()
class GovernanceStatusNode(ExternalAgentNode):
    """Budget, rate-limit and policy status of one agent."""

    def get_parameters(self) -> dict[str, Any]:
        return {
            "engine": dependency("engine", "SQLAlchemy AsyncEngine"),
            "limiter": dependency("limiter", "a RateLimiter"),
            "policy_cache": dependency("policy_cache", "PolicyCache"),
            "thresholds": dependency("thresholds", "BudgetThresholds"),
            "agent": value("agent", "the agent as presented"),
        }

    async def async_run(self, **kw: Any) -> dict[str, Any]:
        agent = kw["agent"]
        now = datetime.now(UTC)
        spend = await current_spend(kw["engine"], agent_id=agent["id"], now=now)
        limits = RateLimits(
            per_minute=agent["requests_per_minute"],
            per_hour=agent["requests_per_hour"],
            per_day=agent["requests_per_day"],
        )
        decision = await kw["limiter"].peek(agent["id"], limits)
        policies = await kw["policy_cache"].policies_for(agent["organization_id"])
        return {
            "governance_status": {
                "external_agent_id": agent["id"],
                "organization_id": agent["organization_id"],
                "budget": budget_status(agent, spend, kw["thresholds"]),
                "rate_limit": rate_limit_status(decision.to_dict()),
                "policy": policy_status(policies, agent["id"]),
                "timestamp": now.isoformat(),
            }
        }
