"""The base of every node in this project.

Kailash's `AsyncNode.execute_async` resolves `${name}` templates inside every input string against the
node's other inputs, so a caller's text such as "charge ${agent_id}" would be rewritten before the node saw
it. Our workflows use no templates, and user text must round-trip exactly, so this base merges config and
inputs without template resolution and otherwise keeps Kailash's contract: declared inputs are validated,
outputs checked, and a fault is raised as `NodeExecutionError` with the original exception as its cause.
"""

from __future__ import annotations

from typing import Any

from kailash.nodes.base import NodeParameter
from kailash.nodes.base_async import AsyncNode
from kailash.sdk_exceptions import NodeExecutionError, NodeValidationError


class ExternalAgentNode(AsyncNode):
    async def execute_async(self, **runtime_inputs: Any) -> dict[str, Any]:
        inputs = self.validate_inputs(**{**self.config, **runtime_inputs})
        try:
            outputs = await self.async_run(**inputs)
        except (NodeExecutionError, NodeValidationError):
            raise
        except Exception as exc:
            # The message names only the node and the error type: an exception's text may carry user input.
            raise NodeExecutionError(f"Node '{self.id}' failed: {type(exc).__name__}") from exc
        return self.validate_outputs(outputs)


# The category of parameters declared with `dependency`: gateway/workflow_inputs.py refuses them from a request.
DEPENDENCY = "dependency"


def dependency(name: str, description: str, *, required: bool = True) -> NodeParameter:
    """A live object (engine, client, cipher) handed to a node through its config, never between nodes."""
    return NodeParameter(name=name, type=object, required=required, description=description, category=DEPENDENCY)


def value(name: str, description: str, *, required: bool = True, default: Any = None) -> NodeParameter:
    """A JSON value flowing into the node from the workflow's inputs or an upstream node."""
    return NodeParameter(name=name, type=object, required=required, default=default, description=description)
