"""The policy step of an invocation: evaluate the organisation's cached policies in memory."""

from __future__ import annotations

from datetime import UTC, datetime
from decimal import Decimal
from typing import Any

from kailash.nodes.base import register_node

from external_agents.nodes.base import ExternalAgentNode, dependency, value
from external_agents.nodes.governance.policy_engine import PolicyDecision, PolicyRequest, evaluate
from external_agents.nodes.invocation import denied


def policy_request(invocation: dict[str, Any]) -> PolicyRequest:
    identity, agent = invocation["identity"], invocation["agent"]
    # A header the request lacks is an empty attribute here: no condition on it matches.
    return PolicyRequest(
        agent_id=agent["id"],
        platform=agent["platform"],
        external_user_id=identity["external_user_id"] or "",
        external_user_email=identity["external_user_email"] or "",
        external_system=identity["external_system"] or "",
        external_session_id=identity["external_session_id"] or "",
        context=invocation["context"],
        estimated_cost_usd=Decimal(str(agent["cost_per_execution"] or 0)),
        now=datetime.now(UTC),
    )


def policy_denial(decision: PolicyDecision) -> dict[str, Any]:
    return {
        "kind": "policy",
        "status_code": 403,
        "detail": f"Invocation denied by policy: {decision.reason}",
        "policy_id": decision.policy_id,
        "matched_policies": list(decision.matched_policies),
    }


@register_node()
class PolicyCheckNode(ExternalAgentNode):
    """Allow or deny by ABAC policy; a denial stops everything after it."""

    def get_parameters(self) -> dict[str, Any]:
        return {
            "policy_cache": dependency("policy_cache", "PolicyCache"),
            "resolution": dependency("resolution", "ConflictResolution"),
            "fail_mode": dependency("fail_mode", "PolicyFailMode"),
            "invocation": value("invocation", "the invocation so far"),
        }

    async def async_run(self, **kw: Any) -> dict[str, Any]:
        invocation = kw["invocation"]
        if denied(invocation):
            return {"invocation": invocation}
        policies = await kw["policy_cache"].policies_for(invocation["caller"]["organization_id"])
        decision = evaluate(
            policies, policy_request(invocation), resolution=kw["resolution"], fail_mode=kw["fail_mode"]
        )
        update: dict[str, Any] = {"policy": decision.to_dict()}
        if not decision.allowed:
            update["denial"] = policy_denial(decision)
        return {"invocation": {**invocation, **update}}
