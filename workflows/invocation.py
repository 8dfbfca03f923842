"""The invocation: load agent -> policy -> validate -> rate limit -> budget -> deliver -> alerts -> record.

Built once at start-up, in two forms from the same steps and configs. `build_invocation_workflow` is the Kailash
graph a host composes or runs on its own runtime. `InvocationPipeline` is what the gateway runs for every
channel (REST, MCP, CLI, `InvokeExternalAgentNode`): the same node objects, each step's typed `step` awaited in
order, without the runtime around them. The runtime's share of an invocation was measured at about 2.8 ms of
CPU for these nine nodes (scheduling, input validation, the JSON round trip of the invocation at every port,
execution tracking), more than the policy, rate limit and budget steps together (issue 12).
"""

from __future__ import annotations

from dataclasses import dataclass
from itertools import pairwise
from typing import Any

from kailash.nodes.base import NodeRegistry
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
from external_agents.errors import ExternalAgentsError
from external_agents.nodes.invocation import prepare_invocation
from external_agents.nodes.invocation_state import InvocationOutcome
from external_agents.nodes.invocation_step import InvocationStepNode
from external_agents.workflows.runner import WorkflowFailedError

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
    agent_cache: Any = None


def step_configs(deps: InvocationDependencies) -> dict[str, dict[str, Any]]:
    """Each step's node config by node id."""
    return {
        "prepare": {},
        "load_agent": {"engine": deps.engine, "agent_cache": deps.agent_cache},
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


def build_invocation_workflow(deps: InvocationDependencies) -> Workflow:
    configs = step_configs(deps)
    builder = WorkflowBuilder()
    for node_type, node_id in STEPS:
        builder.add_node(node_type, node_id, configs[node_id])
    for (_, upstream), (_, downstream) in pairwise(STEPS):
        builder.add_connection(upstream, "invocation", downstream, "invocation")
    return builder.build(name="invoke_external_agent")


class InvocationPipeline:
    """The invocation's steps, run in order on the typed `Invocation` (see the module docstring).

    A step that has nothing to do after a denial is passed over, as `InvocationStepNode.async_run` does in the
    graph. Errors surface as they do from `WorkflowRunner.run`: the project's own as they are, anything else as
    `WorkflowFailedError` with the original on its cause chain.
    """

    def __init__(self, deps: InvocationDependencies) -> None:
        configs = step_configs(deps)
        steps: list[tuple[InvocationStepNode, dict[str, Any]]] = []
        for node_type, node_id in STEPS[1:]:
            node = NodeRegistry.get(node_type)(id=node_id, **configs[node_id])
            steps.append((node, configs[node_id]))
        self.steps = tuple(steps)

    async def run(self, prepare: dict[str, Any]) -> InvocationOutcome:
        """Run one invocation; `prepare` holds `PrepareInvocationNode`'s inputs."""
        try:
            invocation = prepare_invocation(
                caller=prepare["caller"],
                agent_id=prepare["agent_id"],
                identity=prepare["identity"],
                body=prepare["body"],
                workflow_id=prepare.get("workflow_id"),
            )
            for node, config in self.steps:
                if invocation.denial is not None and not node.runs_after_denial:
                    continue
                state = await node.step(invocation, **config)
                if isinstance(state, InvocationOutcome):
                    return state
                invocation = state
        except ExternalAgentsError:
            raise
        except Exception as exc:
            raise WorkflowFailedError(f"invocation failed: {type(exc).__name__}") from exc
        raise RuntimeError("the invocation's last step (RecordInvocationNode) returns its outcome")
