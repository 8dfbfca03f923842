"""Prometheus metrics of the gateway: the registry every invocation is counted in, and the runner that counts.

Each app owns its own `CollectorRegistry` (never the process-global one), so several apps can live in one
process, as they do in the tests. Invocation series are recorded from an invocation's outcome by
`run_and_record`, the one path every invocation takes (a channel's through `gateway.operations.run_invocation`,
a host workflow's through `MeteredRunner`); `redis_up` is refreshed by a ping on each scrape by the route in
`channels.metrics`.
"""

from __future__ import annotations

from typing import Any

from kailash.workflow import Workflow
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest

from external_agents.nodes.invocation_state import DeliveryFailed, InvocationOutcome, PolicyDenied
from external_agents.nodes.invocation_step import OUTCOME_OUTPUT
from external_agents.workflows.invocation import InvocationPipeline
from external_agents.workflows.runner import WorkflowRunner

# Webhook deliveries may take up to the configured timeout (30 s by default) per attempt, with retries.
DURATION_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0)


class OrganizationSeries:
    """One organisation's invocation series, in a registry of their own: a scrape shows the caller's organisation
    only, so one organisation never learns another's agent ids or traffic."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        self.budget_usage = Gauge(
            "external_agent_budget_usage_percentage",
            "Share of the agent's monthly budget spent, in percent, as of its latest invocation.",
            ["agent_id"],
            registry=self.registry,
        )
        self.rate_limit_remaining = Gauge(
            "external_agent_rate_limit_remaining",
            "Invocations left in the agent's tightest rate-limit window, as of its latest invocation.",
            ["agent_id"],
            registry=self.registry,
        )
        self.policy_denials = Counter(
            "external_agent_policy_denials",
            "Invocations denied by an ABAC policy.",
            registry=self.registry,
        )
        self.webhook_failures = Counter(
            "external_agent_webhook_failures",
            "Invocations whose delivery to the platform failed or timed out.",
            registry=self.registry,
        )
        self.invocations = Counter(
            "external_agent_invocations",
            "Invocations by outcome status (success, failure, timeout, denied).",
            ["status"],
            registry=self.registry,
        )
        self.duration = Histogram(
            "external_agent_invocation_duration_seconds",
            "Time from accepting an invocation to recording it, governance and delivery included.",
            buckets=DURATION_BUCKETS,
            registry=self.registry,
        )


class GatewayMetrics:
    """The gateway's series: per organisation (OrganizationSeries) and the process's own `redis_up`.

    `redis_configured`: without Redis there is no `redis_up` series at all, rather than a permanent 0 that
    would read as an outage.
    """

    def __init__(self, *, redis_configured: bool) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        self.redis_up = (
            Gauge("redis_up", "1 when Redis answered a ping at the last scrape, else 0.", registry=self.registry)
            if redis_configured
            else None
        )
        self.organizations: dict[str, OrganizationSeries] = {}

    def record_invocation(self, outcome: InvocationOutcome, *, agent_id: str, organization_id: str) -> None:
        """Count one invocation from its outcome."""
        series = self._series(organization_id)
        series.invocations.labels(status=outcome.status).inc()
        series.duration.observe(outcome.duration_ms / 1000)
        if isinstance(outcome.result, PolicyDenied):
            series.policy_denials.inc()
        if isinstance(outcome.result, DeliveryFailed):
            series.webhook_failures.inc()
        if outcome.rate_limit is not None:
            series.rate_limit_remaining.labels(agent_id=agent_id).set(outcome.rate_limit.remaining)
        # Present only when the budget step reserved: a denial before it (or by it) says nothing of spend.
        if outcome.budget is not None:
            series.budget_usage.labels(agent_id=agent_id).set(round(outcome.budget.usage * 100, 2))

    def _series(self, organization_id: str) -> OrganizationSeries:
        series = self.organizations.get(organization_id)
        if series is None:
            series = self.organizations[organization_id] = OrganizationSeries()
        return series

    def exposition(self, organization_id: str) -> bytes:
        """`redis_up` and the organisation's own series (zero until its first invocation)."""
        return generate_latest(self.registry) + generate_latest(self._series(organization_id).registry)


async def run_and_record(
    pipeline: InvocationPipeline, *, metrics: GatewayMetrics, prepare: dict[str, Any]
) -> InvocationOutcome:
    """Run one invocation with `prepare`'s inputs and count its outcome."""
    outcome = await pipeline.run(prepare)
    metrics.record_invocation(
        outcome, agent_id=prepare["agent_id"], organization_id=prepare["caller"]["organization_id"]
    )
    return outcome


class MeteredRunner:
    """The runner handed to `InvokeExternalAgentNode`s of host workflows: the invocation workflow they name runs
    as the channels' invocations do (the pipeline, counted in the metrics); every other workflow runs unchanged."""

    def __init__(
        self,
        runner: WorkflowRunner,
        *,
        invoke_workflow: Workflow,
        pipeline: InvocationPipeline,
        metrics: GatewayMetrics,
    ) -> None:
        self.runner = runner
        self.invoke_workflow = invoke_workflow
        self.pipeline = pipeline
        self.metrics = metrics

    async def run(self, workflow: Workflow, inputs: dict[str, dict[str, Any]]) -> dict[str, dict[str, Any]]:
        if workflow is not self.invoke_workflow:
            return await self.runner.run(workflow, inputs)
        outcome = await run_and_record(self.pipeline, metrics=self.metrics, prepare=inputs["prepare"])
        # The outputs the graph's recording node would have given.
        return {"record": {OUTCOME_OUTPUT: outcome.to_json()}}
