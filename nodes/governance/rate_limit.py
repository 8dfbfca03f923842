"""The rate-limit step of an invocation: one atomic check-and-record per agent."""

from __future__ import annotations

from typing import Any

from kailash.nodes.base import register_node

from external_agents.nodes.base import ExternalAgentNode, dependency, value
from external_agents.nodes.governance.rate_limiter import RateLimitDecision, RateLimits
from external_agents.nodes.invocation import denied


def limits_of(agent: dict[str, Any]) -> RateLimits:
    return RateLimits(
        per_minute=agent["requests_per_minute"], per_hour=agent["requests_per_hour"], per_day=agent["requests_per_day"]
    )


def rate_limit_denial(decision: RateLimitDecision) -> dict[str, Any]:
    return {
        "kind": "rate_limit",
        "status_code": 429,
        "detail": f"Rate limit exceeded for this agent ({decision.exceeded_window} window)",
        "retry_after_seconds": decision.retry_after_seconds,
        "limit": decision.limit,
        "remaining": decision.remaining,
        "reset_time": decision.reset_at,
    }


@register_node()
class RateLimitNode(ExternalAgentNode):
    """Count the invocation against the agent's windows, or refuse it; after a denial only peek for headers."""

    def get_parameters(self) -> dict[str, Any]:
        return {
            "limiter": dependency("limiter", "a RateLimiter"),
            "invocation": value("invocation", "the invocation so far"),
        }

    async def async_run(self, **kw: Any) -> dict[str, Any]:
        invocation, limiter = kw["invocation"], kw["limiter"]
        limits = limits_of(invocation["agent"])
        if denied(invocation):
            decision = await limiter.peek(invocation["agent"]["id"], limits)
            return {"invocation": {**invocation, "rate_limit": decision.to_dict()}}
        decision = await limiter.hit(invocation["agent"]["id"], limits)
        update: dict[str, Any] = {"rate_limit": decision.to_dict()}
        if not decision.allowed:
            update["denial"] = rate_limit_denial(decision)
        return {"invocation": {**invocation, **update}}
