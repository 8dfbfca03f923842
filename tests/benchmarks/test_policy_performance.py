"""Policy evaluation latency for one request against 50 policies, next to the same request against one policy.

Evaluation is plain CPU, so its baseline is the same evaluation over a single policy, measured in the same run and
interleaved: the assertion is that 50 policies cost at most 50 times one (no work that grows faster than the
policies do), whatever the machine's speed or load. The product's figure, p95 < 5 ms (SPEC section 8), is printed
next to it, not asserted.

Run with `pytest tests/benchmarks/test_policy_performance.py -v`; the figures print even under capture.
"""

from __future__ import annotations

import statistics
import time
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from typing import Any

import pytest

from external_agents.nodes.governance.policy_engine import Policy, PolicyRequest, evaluate
from external_agents.settings import ConflictResolution, PolicyFailMode

POLICIES = 50
ITERATIONS = 5_000
WARMUP = 500
P95_PRODUCT_TARGET_MS = 5.0

# Third conditions that do not match the request, so a policy's first two conditions always run too.
_THIRD: list[dict[str, Any]] = [
    {"type": "user", "user_ids": ["u-9"], "emails": ["bob@corp.example"], "domains": ["other.org"]},
    {"type": "location", "countries": ["DE", "FR", "NL"]},
    {"type": "cost", "above_usd": 1},
    {"type": "platform", "platforms": ["teams", "discord"]},
    {"type": "external_system", "systems": ["erp", "hr"]},
]


def _policies() -> list[Policy]:
    created = datetime(2025, 1, 1, tzinfo=UTC)
    return [
        Policy(
            id=f"p{i}",
            name=f"Policy {i}",
            effect="deny" if i % 2 else "allow",
            priority=i % 7,
            enabled=True,
            external_agent_id=None if i % 3 else "agent-a",
            conditions=(
                {
                    "type": "time_window",
                    "business_hours": {
                        "days": ["monday", "tuesday", "wednesday", "thursday", "friday"],
                        "start_time": "09:00",
                        "end_time": "17:00",
                        "timezone": "America/New_York",
                    },
                },
                {"type": "environment", "environments": ["production", "staging"]},
                _THIRD[i % len(_THIRD)],
            ),
            created_at=created + timedelta(seconds=i),
        )
        for i in range(POLICIES)
    ]


@pytest.mark.parametrize("resolution", list(ConflictResolution))
def test_policy_evaluation_p95(resolution: ConflictResolution, capsys: pytest.CaptureFixture[str]) -> None:
    policies = _policies()
    request = PolicyRequest(
        agent_id="agent-a",
        platform="slack",
        external_user_id="u-1",
        external_user_email="ann@example.com",
        external_system="crm",
        external_session_id="s-1",
        context={"environment": "production", "country": "US"},
        estimated_cost_usd=Decimal("0.05"),
        now=datetime(2025, 1, 15, 15, 0, tzinfo=UTC),
    )

    one_policy = policies[:1]

    def run() -> None:
        evaluate(policies, request, resolution=resolution, fail_mode=PolicyFailMode.CLOSED)

    def baseline() -> None:
        evaluate(one_policy, request, resolution=resolution, fail_mode=PolicyFailMode.CLOSED)

    for _ in range(WARMUP):
        run()
        baseline()
    samples_ms: list[float] = []
    baseline_ms: list[float] = []
    for _ in range(ITERATIONS):  # interleaved, so machine noise hits both alike
        for call, samples in ((run, samples_ms), (baseline, baseline_ms)):
            start = time.perf_counter_ns()
            call()
            samples.append((time.perf_counter_ns() - start) / 1e6)

    median = statistics.median(samples_ms)
    p95 = statistics.quantiles(samples_ms, n=100)[94]
    base_p95 = statistics.quantiles(baseline_ms, n=100)[94]
    with capsys.disabled():
        print(
            f"\npolicy evaluation {resolution.value}, {POLICIES} policies x 3 conditions, {ITERATIONS} runs: "
            f"median {median:.4f} ms, p95 {p95:.4f} ms, max {max(samples_ms):.4f} ms "
            f"(product target p95 < {P95_PRODUCT_TARGET_MS} ms, reported)"
            f"\none policy (baseline): median {statistics.median(baseline_ms):.4f} ms, p95 {base_p95:.4f} ms; "
            f"{POLICIES} policies / one: p95 {p95 / base_p95:.1f}x (target <= {POLICIES}x)"
        )
    assert p95 <= POLICIES * base_p95
