"""Workflows the standalone server registers besides the feature's own, standing in for a host's existing ones.

`greeting` is a workflow without external agents (the migration guide's Test 5: it keeps working);
`notify_agent` shows an existing workflow that includes an external-agent invocation node. An application
embedding the gateway passes its own workflows to `nexus_app.build_app(settings, workflows=...)` instead.
"""

from __future__ import annotations

from typing import Any

from kailash.nodes.base import Node, NodeParameter, register_node
from kailash.workflow import Workflow
from kailash.workflow.builder import WorkflowBuilder

import external_agents.nodes.invoke_agent  # noqa: F401  (registers InvokeExternalAgentNode)


@register_node()
class GreetingNode(Node):
    """A plain synchronous node, as workflows written before this feature have."""

    def get_parameters(self) -> dict[str, NodeParameter]:
        return {"name": NodeParameter(name="name", type=str, required=False, default="world", description="who")}

    def run(self, **kwargs: Any) -> dict[str, Any]:
        return {"greeting": f"Hello, {kwargs.get('name') or 'world'}!"}


def build_example_workflows(*, runner: Any, invoke_workflow: Workflow) -> dict[str, Workflow]:
    greeting = WorkflowBuilder()
    greeting.add_node("GreetingNode", "greet", {})
    notify = WorkflowBuilder()
    notify.add_node("InvokeExternalAgentNode", "notify", {"runner": runner, "invoke_workflow": invoke_workflow})
    return {"greeting": greeting.build(name="greeting"), "notify_agent": notify.build(name="notify_agent")}
