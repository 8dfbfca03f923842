"""The policy step's plain function: the organisation's policies decide, a denial is a typed PolicyDenied."""

from __future__ import annotations

from datetime import UTC, datetime

from external_agents.nodes.governance.policy_check import check_policy, policy_request
from external_agents.nodes.governance.policy_engine import Policy
from external_agents.nodes.invocation_state import PolicyDenied
from external_agents.settings import ConflictResolution, PolicyFailMode
from tests.factories import invocation

NOW = datetime(2026, 12, 1, 10, 0, tzinfo=UTC)


def policy(effect: str, systems: list[str], policy_id: str = "p-1") -> Policy:
    return Policy(
        id=policy_id,
        name=policy_id,
        effect=effect,
        priority=0,
        enabled=True,
        external_agent_id=None,
        conditions=({"type": "external_system", "systems": systems},),
        created_at=NOW,
    )


def check(policies: list[Policy], **identity: str):
    return check_policy(
        invocation(**identity),
        policies,
        resolution=ConflictResolution.DENY_OVERRIDES,
        fail_mode=PolicyFailMode.CLOSED,
        now=NOW,
    )


def test_an_allowed_invocation_is_returned_unchanged():
    before = invocation()

    after = check_policy(
        before,
        [policy("allow", ["crm"])],
        resolution=ConflictResolution.DENY_OVERRIDES,
        fail_mode=PolicyFailMode.CLOSED,
        now=NOW,
    )

    assert after == before


def test_a_deny_policy_makes_a_typed_denial_naming_it():
    denied = check([policy("allow", ["crm"], "p-allow"), policy("deny", ["crm"], "p-deny")])

    assert isinstance(denied.denial, PolicyDenied)
    assert denied.denial.policy_id == "p-deny"
    assert set(denied.denial.matched_policies) == {"p-allow", "p-deny"}
    assert denied.denial.detail.startswith("Invocation denied by policy: ")


def test_the_request_carries_identity_agent_and_merged_context():
    request = policy_request(invocation(body={"input": 1, "context": {"env": "prod"}}, external_system=None), now=NOW)

    assert (request.agent_id, request.platform, request.external_system) == ("agent-1", "custom_http", "")
    assert request.context == {"env": "prod"} and str(request.estimated_cost_usd) == "0.05"
