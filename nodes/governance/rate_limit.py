"""The rate-limit step of an invocation: one atomic check-and-record per agent.

Usage in a host workflow, after the agent is loaded::

    builder.add_node("RateLimitNode", "rate_limit", {"limiter": limiter})
    builder.add_connection("policy", "invocation", "rate_limit", "invocation")

Input `invocation`; output `invocation` with the limiter's `RateLimitDecision` (for the X-RateLimit-* headers),
and a `RateLimited` denial when a window is full. After an earlier denial it only peeks: the response still
reports the agent's standing, and the refused call is not counted.
"""

from __future__ import annotations

from typing import Any

from kailash.nodes.base import NodeParameter, register_node

from external_agents.nodes.base import dependency
from external_agents.nodes.governance.rate_limiter import RateLimitDecision, RateLimits
from external_agents.nodes.invocation_state import AgentSnapshot, Invocation, RateLimited
from external_agents.nodes.invocation_step import InvocationStepNode


def limits_of(agent: AgentSnapshot) -> RateLimits:
    return RateLimits(
        per_minute=agent.requests_per_minute, per_hour=agent.requests_per_hour, per_day=agent.requests_per_day
    )


def apply_rate_limit(invocation: Invocation, decision: RateLimitDecision) -> Invocation:
    """The invocation with the limiter's decision, denied if it was refused (and nothing denied it before)."""
    if decision.allowed or invocation.denied:
        return invocation.updated(rate_limit=decision)
    return invocation.updated(rate_limit=decision, denial=RateLimited(decision=decision))


@register_node()
class RateLimitNode(InvocationStepNode):
    """Count the invocation against the agent's windows, or refuse it; after a denial only peek for headers."""

    runs_after_denial = True

    def dependencies(self) -> dict[str, NodeParameter]:
        return {"limiter": dependency("limiter", "a RateLimiter (Redis, or in memory)")}

    async def step(self, invocation: Invocation, **kw: Any) -> Invocation:
        agent, limiter = invocation.loaded_agent, kw["limiter"]
        check = limiter.peek if invocation.denied else limiter.hit
        return apply_rate_limit(invocation, await check(agent.id, limits_of(agent)))
