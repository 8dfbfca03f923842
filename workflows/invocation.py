"""The invocation workflow: load agent -> policy -> validate -> rate limit -> budget -> deliver -> alerts -> record.

Built once at start-up; every channel (REST, MCP, CLI, a workflow node) runs this same graph.
"""

from __future__ import annotations

from dataclasses import dataclass
from itertools import pairwise
from typing import Any

from kailash.workflow import Workflow
from kailash.workflow.builder import WorkflowBuilder

# Importing a node module registers its nodes with Kailash, so the builder can name them.
import external_agents.nodes.alerts
import external_agents.nodes.delivery
import external_agents.nodes.governance.budget
import external_agents.nodes.governance.policy_check
import external_agents.nodes.governance.rate_limit
import external_agents.nodes.invocation
import external_agents.nodes.record_invocation  # noqa: F401

STEPS = (
    ("PrepareInvocationNode", "prepare"),
    ("LoadInvocationAgentNode", "load_agent"),
    ("PolicyCheckNode", "policy"),
    ("ValidateInvocationNode", "validate"),
    ("RateLimitNode", "rate_limit"),
    ("BudgetReserveNode", "budget"),
    ("DeliverInvocationNode", "deliver"),
    ("SendBudgetAlertsNode", "alerts"),
    ("RecordInvocationNode", "record"),
)


@dataclass(frozen=True)
class InvocationDependencies:
    engine: Any
    policy_cache: Any
    resolution: Any
    fail_mode: Any
    limiter: Any
    thresholds: Any
    cipher: Any
    client: Any
    options: Any
    token_cache: Any
    bulkhead: Any
    alert_channel_name: str
    journal: Any
    lease: Any


def build_invocation_workflow(deps: InvocationDependencies) -> Workflow:
    configs: dict[str, dict[str, Any]] = {
        "prepare": {},
        "load_agent": {"engine": deps.engine},
        "policy": {"policy_cache": deps.policy_cache, "resolution": deps.resolution, "fail_mode": deps.fail_mode},
        "validate": {},
        "rate_limit": {"limiter": deps.limiter},
        "budget": {"engine": deps.engine, "thresholds": deps.thresholds, "lease": deps.lease},
        "deliver": {
            "cipher": deps.cipher,
            "client": deps.client,
            "options": deps.options,
            "token_cache": deps.token_cache,
            "bulkhead": deps.bulkhead,
        },
        "alerts": {
            "engine": deps.engine,
            "cipher": deps.cipher,
            "client": deps.client,
            "options": deps.options,
            "token_cache": deps.token_cache,
            "channel_name": deps.alert_channel_name,
        },
        "record": {"engine": deps.engine, "journal": deps.journal},
    }
    builder = WorkflowBuilder()
    for node_type, node_id in STEPS:
        builder.add_node(node_type, node_id, configs[node_id])
    for (_, upstream), (_, downstream) in pairwise(STEPS):
        builder.add_connection(upstream, "invocation", downstream, "invocation")
    return builder.build(name="invoke_external_agent")
