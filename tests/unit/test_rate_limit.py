"""The rate-limit step's plain function: the limiter's decision is kept as it is; a refusal is RateLimited."""

from __future__ import annotations

from dataclasses import replace

from external_agents.nodes.governance.rate_limit import apply_rate_limit, limits_of
from external_agents.nodes.invocation_state import PolicyDenied, RateLimited
from tests.factories import DECISION, agent_snapshot, invocation

ALLOWED = replace(DECISION, allowed=True, remaining=4, retry_after_seconds=None, exceeded_window=None)


def test_an_allowed_call_keeps_the_decision_for_the_headers():
    after = apply_rate_limit(invocation(), ALLOWED)

    assert after.rate_limit is ALLOWED and after.denial is None


def test_a_refused_call_is_denied_with_the_decision():
    after = apply_rate_limit(invocation(), DECISION)

    assert after.denial == RateLimited(decision=DECISION)


def test_after_an_earlier_denial_the_decision_is_kept_but_the_denial_is_not_replaced():
    policy = PolicyDenied(reason="no", policy_id=None, matched_policies=())
    after = apply_rate_limit(invocation().updated(denial=policy), DECISION)

    assert after.denial is policy and after.rate_limit is DECISION


def test_limits_come_from_the_agent():
    limits = limits_of(agent_snapshot(requests_per_minute=1, requests_per_hour=2, requests_per_day=3))

    assert (limits.per_minute, limits.per_hour, limits.per_day) == (1, 2, 3)
