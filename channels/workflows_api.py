"""`POST /api/workflows/{workflow_id}/execute`: run one of the host's registered workflows.

Workflows that existed before this feature run unchanged; any `InvokeExternalAgentNode` in them is given the
authenticated caller (and the workflow's id, for lineage), so its invocations are governed like REST ones.
"""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Request
from starlette.responses import JSONResponse

from channels.route_support import caller_input, read_json_body, state_of
from errors import NotFoundError, ValidationError

router = APIRouter(prefix="/api/workflows")


async def _inputs(request: Request) -> dict[str, dict[str, Any]]:
    body = await read_json_body(request, required=False)
    if body is None:
        return {}
    inputs = body.get("inputs", {}) if isinstance(body, dict) else None
    if not isinstance(inputs, dict) or not all(isinstance(v, dict) for v in inputs.values()):
        raise ValidationError("inputs must be an object mapping node ids to objects of parameters")
    return inputs


@router.get("")
async def list_workflows(request: Request) -> JSONResponse:
    caller_input(request, "read:external_agent")
    workflows = state_of(request).host_workflows
    return JSONResponse({"items": [{"workflow_id": name, "nodes": list(wf.nodes)} for name, wf in workflows.items()]})


@router.post("/{workflow_id}/execute")
async def execute_workflow(request: Request, workflow_id: str) -> JSONResponse:
    caller = caller_input(request, "invoke:external_agent")
    state = state_of(request)
    workflow = state.host_workflows.get(workflow_id)
    if workflow is None:
        raise NotFoundError(f"Workflow '{workflow_id}' not found")
    inputs = await _inputs(request)
    unknown = sorted(set(inputs) - set(workflow.nodes))
    if unknown:
        raise ValidationError(f"inputs.{unknown[0]}: no such node in workflow '{workflow_id}'")
    for node_id, node in workflow.nodes.items():
        if node.node_type == "InvokeExternalAgentNode":
            inputs[node_id] = {**inputs.get(node_id, {}), "caller": caller, "workflow_id": workflow_id}
    results = await state.runner.run(workflow, inputs)
    return JSONResponse({"workflow_id": workflow_id, "status": "completed", "outputs": results})
