"""`POST /api/workflows/{workflow_id}/execute`: run one of the host's registered workflows.

Workflows that existed before this feature run unchanged; any `InvokeExternalAgentNode` in them is given the
authenticated caller (and the workflow's id, for lineage), so its invocations are governed like REST ones
(see `LocalGateway.execute_workflow`, which MCP and the command line run too).
"""

from __future__ import annotations

from fastapi import APIRouter, Request
from starlette.responses import Response

from external_agents.channels.route_support import answer, gateway_for, read_json_body
from external_agents.errors import ValidationError

router = APIRouter(prefix="/api/workflows")


@router.get("")
async def list_workflows(request: Request) -> Response:
    return await answer(gateway_for(request).list_workflows())


@router.post("/{workflow_id}/execute")
async def execute_workflow(request: Request, workflow_id: str) -> Response:
    body = await read_json_body(request, required=False)
    inputs = body.get("inputs", {}) if isinstance(body, dict) else None if body is not None else {}
    if not isinstance(inputs, dict):
        raise ValidationError('Request body must be {"inputs": {node_id: {parameter: value}}}')
    return await answer(gateway_for(request).execute_workflow(workflow_id, inputs))
