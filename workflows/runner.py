"""Runs built workflows on the one shared `AsyncLocalRuntime` and gives back plain results or our errors.

Kailash wraps a node's exception several times; the error a channel must map to a status code is the
project's own `ExternalAgentsError` somewhere on the cause chain, so it is found and raised as it is.
"""

from __future__ import annotations

from typing import Any

from kailash.runtime.async_local import AsyncLocalRuntime
from kailash.workflow import Workflow

from external_agents.errors import ExternalAgentsError


class WorkflowFailedError(Exception):
    """A workflow failed for a reason that is not one of the project's errors (a fault)."""


def _find_own_error(exc: BaseException) -> ExternalAgentsError | None:
    seen: set[int] = set()
    current: BaseException | None = exc
    while current is not None and id(current) not in seen:
        if isinstance(current, ExternalAgentsError):
            return current
        seen.add(id(current))
        current = current.__cause__ or current.__context__
    return None


class WorkflowRunner:
    def __init__(self, *, max_concurrent_nodes: int = 1000) -> None:
        # Monitoring off: it would write every run, node outputs included, to ~/.kailash/tracking.
        self.runtime = AsyncLocalRuntime(enable_monitoring=False, max_concurrent_nodes=max_concurrent_nodes)

    async def run(self, workflow: Workflow, inputs: dict[str, dict[str, Any]]) -> dict[str, dict[str, Any]]:
        """Execute and return each node's outputs by node id."""
        try:
            results, _run_id = await self.runtime.execute_workflow_async(workflow, inputs=inputs)
        except Exception as exc:
            own = _find_own_error(exc)
            if own is not None:
                raise own from None
            raise WorkflowFailedError(f"workflow {workflow.name} failed: {type(exc).__name__}") from exc
        for node_id, outputs in results.items():
            if isinstance(outputs, dict) and outputs.get("failed"):
                raise WorkflowFailedError(f"workflow {workflow.name}: node {node_id} failed")
        return results
