"""The policy step of an invocation: evaluate the organisation's cached policies in memory.

Usage in a host workflow, after `LoadInvocationAgentNode` (see nodes/invocation.py)::

    builder.add_node("PolicyCheckNode", "policy", {"policy_cache": policy_cache,
        "resolution": ConflictResolution.DENY_OVERRIDES, "fail_mode": PolicyFailMode.CLOSED})
    builder.add_connection("load_agent", "invocation", "policy", "invocation")

Input `invocation`; output `invocation`, carrying a `PolicyDenied` when a policy denies it.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import UTC, datetime
from decimal import Decimal
from typing import Any

from kailash.nodes.base import NodeParameter, register_node

from external_agents.nodes.base import dependency
from external_agents.nodes.governance.policy_engine import Policy, PolicyRequest, evaluate
from external_agents.nodes.invocation_state import Invocation, PolicyDenied
from external_agents.nodes.invocation_step import InvocationStepNode
from external_agents.settings import ConflictResolution, PolicyFailMode


def policy_request(invocation: Invocation, *, now: datetime) -> PolicyRequest:
    identity, agent = invocation.identity, invocation.loaded_agent
    # A header the request lacks is an empty attribute here: no condition on it matches.
    return PolicyRequest(
        agent_id=agent.id,
        platform=agent.platform,
        external_user_id=identity.external_user_id or "",
        external_user_email=identity.external_user_email or "",
        external_system=identity.external_system or "",
        external_session_id=identity.external_session_id or "",
        context=invocation.request.context,
        estimated_cost_usd=Decimal(str(agent.cost_per_execution or 0)),
        now=now,
    )


def check_policy(
    invocation: Invocation,
    policies: Sequence[Policy],
    *,
    resolution: ConflictResolution,
    fail_mode: PolicyFailMode,
    now: datetime,
) -> Invocation:
    """The invocation, denied if the policies deny it."""
    decision = evaluate(policies, policy_request(invocation, now=now), resolution=resolution, fail_mode=fail_mode)
    if decision.allowed:
        return invocation
    denial = PolicyDenied(
        reason=decision.reason, policy_id=decision.policy_id, matched_policies=tuple(decision.matched_policies)
    )
    return invocation.updated(denial=denial)


@register_node()
class PolicyCheckNode(InvocationStepNode):
    """Allow or deny by ABAC policy; a denial stops everything after it."""

    def dependencies(self) -> dict[str, NodeParameter]:
        return {
            "policy_cache": dependency("policy_cache", "PolicyCache: the organisation's compiled policies"),
            "resolution": dependency("resolution", "ConflictResolution when policies disagree"),
            "fail_mode": dependency("fail_mode", "PolicyFailMode when a policy cannot be evaluated"),
        }

    async def step(self, invocation: Invocation, **kw: Any) -> Invocation:
        policies = await kw["policy_cache"].policies_for(invocation.caller.organization_id)
        return check_policy(
            invocation, policies, resolution=kw["resolution"], fail_mode=kw["fail_mode"], now=datetime.now(UTC)
        )
