"""A node that invokes an external agent from inside any workflow, under the same governance as REST.

It runs the invocation workflow for its inputs and outputs the outcome; a governance denial is an outcome
(`status: denied`), not an exception, so the host workflow decides what to do with it.
"""

from __future__ import annotations

from typing import Any

from kailash.nodes.base import NodeParameter, register_node

from external_agents.nodes.base import ExternalAgentNode, dependency, value


@register_node()
class InvokeExternalAgentNode(ExternalAgentNode):
    """Invoke `agent_id` with `input` on behalf of the workflow's caller and external identity."""

    def get_parameters(self) -> dict[str, Any]:
        return {
            "runner": dependency("runner", "WorkflowRunner"),
            "invoke_workflow": dependency("invoke_workflow", "the invocation workflow"),
            "caller": value("caller", "{api_key_id, organization_id}: set by the channel that runs the workflow"),
            "agent_id": NodeParameter(name="agent_id", type=str, required=True, description="the agent to invoke"),
            "input": value("input", "what to send to the agent"),
            "identity": NodeParameter(
                name="identity",
                type=dict,
                required=True,
                description="external identity fields (external_user_id, external_user_email, ...)",
            ),
            "context": NodeParameter(
                name="context", type=dict, required=False, default=None, description="attributes for policies"
            ),
            "workflow_id": value("workflow_id", "the calling workflow, recorded in lineage", required=False),
        }

    async def async_run(self, **kw: Any) -> dict[str, Any]:
        body: dict[str, Any] = {"input": kw["input"]}
        if kw.get("context") is not None:
            body["context"] = kw["context"]
        inputs = {
            "caller": kw["caller"],
            "agent_id": kw["agent_id"],
            "identity": kw["identity"],
            "body": body,
            "workflow_id": kw.get("workflow_id"),
        }
        results = await kw["runner"].run(kw["invoke_workflow"], {"prepare": inputs})
        return {"invocation": results["record"]["outcome"]}
