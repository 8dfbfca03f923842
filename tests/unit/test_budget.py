"""The budget step's plain functions: limits from the agent, the reservation kept, a refusal a BudgetExceeded."""

from __future__ import annotations

from dataclasses import replace

from external_agents.nodes.governance.budget import (
    BudgetThresholds,
    apply_reservation,
    budget_limits,
    budget_status,
    crossed,
    delivery_lease_seconds,
    threshold_event,
)
from external_agents.nodes.invocation_state import BudgetExceeded, BudgetStatus
from external_agents.nodes.platforms.base import DeliveryOptions
from tests.factories import REFUSAL, RESERVATION, agent_snapshot, invocation

THRESHOLDS = BudgetThresholds(warning=0.8, degradation=0.9)
LIMITS = budget_limits(agent_snapshot(max_monthly_cost=10.0, max_daily_cost=1.0, monthly_execution_limit=100))


def test_limits_in_micro_dollars_and_executions():
    assert (LIMITS.daily_micros, LIMITS.monthly_micros) == (1_000_000, 10_000_000)
    assert (LIMITS.daily_executions, LIMITS.monthly_executions) == (None, 100)


def test_a_reservation_is_kept_as_it_is_with_the_months_standing():
    after = apply_reservation(invocation(), RESERVATION, limits=LIMITS, thresholds=THRESHOLDS)

    assert after.reservation is RESERVATION and after.denial is None
    assert after.budget == BudgetStatus(usage=0.9, warning=True, degraded=True)


def test_a_refusal_is_a_typed_denial_and_reserves_nothing():
    after = apply_reservation(invocation(), REFUSAL, limits=LIMITS, thresholds=THRESHOLDS)

    assert after.denial == BudgetExceeded(refusal=REFUSAL) and after.reservation is None and after.budget is None


def test_thresholds_crossed():
    low = budget_status(replace(RESERVATION, month_spent_micros=1_000_000), limits=LIMITS, thresholds=THRESHOLDS)
    warned = budget_status(replace(RESERVATION, month_spent_micros=8_500_000), limits=LIMITS, thresholds=THRESHOLDS)

    assert crossed(low) == () and crossed(warned) == ("warning",)
    assert crossed(budget_status(RESERVATION, limits=LIMITS, thresholds=THRESHOLDS)) == ("warning", "degraded")


def test_no_monthly_budget_counts_as_fully_used():
    unlimited = budget_limits(agent_snapshot(max_monthly_cost=0.0))

    assert budget_status(RESERVATION, limits=unlimited, thresholds=THRESHOLDS).usage == 1.0


def test_threshold_event_names_the_invocation():
    current = invocation()

    event = threshold_event("degraded", current, 0.91234)

    assert event.event_type == "external_agent.budget_degraded"
    assert event.details == {"usage_percentage": 91.23, "invocation_id": current.invocation_id}


def test_the_pending_lease_outlasts_every_attempt_timing_out_and_every_wait_between_them() -> None:
    options = DeliveryOptions(
        timeout_seconds=5, retry_attempts=2, allow_private_webhooks=False, allowed_webhook_domains=()
    )

    # 3 attempts x 5 s, 2 waits of at most 30 s (the longest Retry-After honoured) + 0.5 s jitter, the margin.
    assert delivery_lease_seconds(options, margin_seconds=10) == 3 * 5 + 2 * 30.5 + 10
    no_retries = DeliveryOptions(
        timeout_seconds=5, retry_attempts=0, allow_private_webhooks=False, allowed_webhook_domains=()
    )
    assert delivery_lease_seconds(no_retries, margin_seconds=0) == 5
