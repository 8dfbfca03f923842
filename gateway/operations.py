"""The gateway's operations, one method each, shared by every channel: REST routes, MCP tools and the command line.

`run_invocation` is the one path every invocation takes, whichever channel sent it (the REST route, an MCP tool,
the command line; an `InvokeExternalAgentNode` inside a host workflow goes through `gateway.metrics.MeteredRunner`):
it runs the invocation pipeline (workflows/invocation.py) and records the outcome's metrics. `LocalGateway` holds
every other operation for one authenticated caller: the permission check, the workflow and its inputs. An
operation returns its result
(the JSON-ready value REST answers with, or for an invocation its outcome, a denial included) or raises one of
`external_agents.errors`; each channel turns those into its own answer (status code, tool error, exit code).
"""

from __future__ import annotations

import logging
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from kailash.workflow import Workflow

from external_agents.errors import (
    ExternalAgentsError,
    ForbiddenError,
    NotFoundError,
    ServiceUnavailableError,
    ValidationError,
)
from external_agents.gateway.metrics import run_and_record
from external_agents.gateway.workflow_inputs import check_workflow_inputs
from external_agents.lineage_filters import FILTER_NAMES, GRAPH_SELECTORS
from external_agents.nodes.invocation_state import InvocationOutcome
from external_agents.nodes.lineage import export_chunks
from external_agents.stores.api_keys import Caller
from external_agents.stores.database import database_fault
from external_agents.workflows.lineage import (
    EXPORT_NODE,
    GET_NODE,
    GRAPH_NODE,
    LIST_NODE,
    USER_ACCESS_NODE,
    USER_ERASURE_NODE,
)
from external_agents.workflows.runner import WorkflowFailedError

if TYPE_CHECKING:
    from external_agents.app_state import AppState

logger = logging.getLogger(__name__)


async def run_invocation(
    state: AppState,
    *,
    caller: dict[str, Any],
    agent_id: str,
    identity: dict[str, Any],
    body: Any,
    workflow_id: str | None = None,
) -> InvocationOutcome:
    """Run the invocation pipeline and record its metrics; returns the outcome (a denial is an outcome too).

    `caller` is `{api_key_id, organization_id}`; `identity` the external identity by field name.
    """
    prepare: dict[str, Any] = {"caller": caller, "agent_id": agent_id, "identity": identity, "body": body}
    if workflow_id is not None:
        prepare["workflow_id"] = workflow_id
    return await run_and_record(state.pipeline, metrics=state.metrics, prepare=prepare)


# Recorded where a key's id would be (created_by, lineage, audit) for an operator acting without a key.
OPERATOR_ACTOR = "cli-operator"


def workflow_caller(caller: Caller) -> dict[str, Any]:
    """The caller as workflows take it."""
    return {"api_key_id": caller.api_key_id, "organization_id": caller.organization_id}


def operator_caller(organization_id: str) -> Caller:
    """An administrator of `organization_id` without an API key: the command line's operator with database access."""
    return Caller(api_key_id=OPERATOR_ACTOR, organization_id=organization_id, permissions=frozenset({"admin"}))


@dataclass(frozen=True)
class LineageExport:
    """A prepared lineage export: what it is and its text, read from the database batch by batch as it is sent."""

    media_type: str
    filename: str
    chunks: AsyncIterator[str]


class LocalGateway:
    """Every operation of one authenticated caller (see the module docstring).

    `request_id` names the request in log lines; channels put it in their error bodies too.
    """

    def __init__(self, state: AppState, caller: Caller, *, request_id: str | None = None) -> None:
        self.state = state
        self.caller = caller
        self.request_id = request_id or uuid.uuid4().hex

    def _caller(self, permission: str) -> dict[str, Any]:
        if not self.caller.can(permission):
            raise ForbiddenError(f"This API key lacks the '{permission}' permission")
        return workflow_caller(self.caller)

    async def _run(self, workflow: Workflow, inputs: dict[str, dict[str, Any]]) -> dict[str, dict[str, Any]]:
        try:
            return await self.state.runner.run(workflow, inputs)
        except WorkflowFailedError as exc:
            # A database that is down or not migrated is a 503 the client may retry, as REST's handler answers
            # it, not a fault of this request.
            detail = database_fault(exc)
            if detail is not None:
                logger.warning(
                    "operation.database_unavailable request_id=%s workflow=%s", self.request_id, workflow.name
                )
                raise ServiceUnavailableError(detail) from exc
            # Its text may name user data: the log line and the answer say only which operation failed.
            logger.error("operation.failed request_id=%s workflow=%s", self.request_id, workflow.name)
            raise ExternalAgentsError("Internal server error") from exc

    # Agents (permissions as in channels/rest_api.py)

    async def list_agents(
        self, *, page: int = 1, limit: int = 20, platform: str | None = None, search: str | None = None
    ) -> dict[str, Any]:
        caller = self._caller("read:external_agent")
        inputs = {"caller": caller, "page": page, "limit": limit, "platform": platform, "search": search}
        results = await self._run(self.state.registry.list, {"list_agents": inputs})
        return results["list_agents"]["page_of_agents"]

    async def get_agent(self, agent_id: str) -> dict[str, Any]:
        caller = self._caller("read:external_agent")
        results = await self._run(self.state.registry.get, {"get_agent": {"caller": caller, "agent_id": agent_id}})
        return results["governance"]["agent"]

    async def create_agent(self, body: dict[str, Any]) -> dict[str, Any]:
        caller = self._caller("create:external_agent")
        results = await self._run(self.state.registry.create, {"create_agent": {"caller": caller, "body": body}})
        return results["create_agent"]["agent"]

    async def update_agent(self, agent_id: str, body: dict[str, Any]) -> dict[str, Any]:
        caller = self._caller("update:external_agent")
        inputs = {"caller": caller, "agent_id": agent_id, "body": body}
        results = await self._run(self.state.registry.update, {"update_agent": inputs})
        return results["update_agent"]["agent"]

    async def delete_agent(self, agent_id: str) -> None:
        caller = self._caller("delete:external_agent")
        await self._run(self.state.registry.delete, {"delete_agent": {"caller": caller, "agent_id": agent_id}})

    async def governance_status(self, agent_id: str) -> dict[str, Any]:
        caller = self._caller("read:external_agent")
        inputs = {"get_agent": {"caller": caller, "agent_id": agent_id}}
        results = await self._run(self.state.governance_status, inputs)
        return results["status"]["governance_status"]

    async def list_invocations(
        self,
        agent_id: str,
        *,
        page: int = 1,
        limit: int = 20,
        status: str | None = None,
        start_date: str | None = None,
        end_date: str | None = None,
    ) -> dict[str, Any]:
        caller = self._caller("read:external_agent")
        # Another organisation's agent is a 404, not an empty page.
        await self._run(self.state.registry.get, {"get_agent": {"caller": caller, "agent_id": agent_id}})
        filters = {"external_agent_id": agent_id, "status": status, "start_date": start_date, "end_date": end_date}
        inputs = {
            "caller": caller,
            "filters": {k: v for k, v in filters.items() if v is not None},
            "page": page,
            "limit": limit,
        }
        results = await self._run(self.state.lineage.list, {LIST_NODE: inputs})
        return results[LIST_NODE]["page_of_lineage"]

    async def invoke(self, agent_id: str, *, identity: dict[str, Any], body: Any) -> InvocationOutcome:
        """The invocation's outcome: delivered, failed, or denied by governance (a denial is not an error here)."""
        caller = self._caller("invoke:external_agent")
        return await run_invocation(self.state, caller=caller, agent_id=agent_id, identity=identity, body=body)

    # Policies (permission manage:policy, as in channels/policies_api.py)

    async def _policy(self, operation: str, node_inputs: dict[str, Any]) -> dict[str, Any]:
        caller = self._caller("manage:policy")
        workflow = getattr(self.state.policies, operation)
        results = await self._run(workflow, {"policy": {"caller": caller, **node_inputs}})
        return results["policy"]

    async def create_policy(self, body: dict[str, Any]) -> dict[str, Any]:
        return (await self._policy("create", {"body": body}))["policy"]

    async def list_policies(self, *, external_agent_id: str | None = None) -> Any:
        return (await self._policy("list", {"external_agent_id": external_agent_id}))["policies"]

    async def get_policy(self, policy_id: str) -> dict[str, Any]:
        return (await self._policy("get", {"policy_id": policy_id}))["policy"]

    async def update_policy(self, policy_id: str, body: dict[str, Any]) -> dict[str, Any]:
        return (await self._policy("update", {"policy_id": policy_id, "body": body}))["policy"]

    async def delete_policy(self, policy_id: str) -> None:
        await self._policy("delete", {"policy_id": policy_id})

    # Lineage (permissions as in channels/lineage_api.py)

    async def list_lineage(self, *, filters: dict[str, str | None], page: int = 1, limit: int = 20) -> dict[str, Any]:
        caller = self._caller("read:lineage")
        inputs = {
            "caller": caller,
            "filters": {k: filters.get(k) for k in FILTER_NAMES},
            "page": page,
            "limit": limit,
        }
        results = await self._run(self.state.lineage.list, {LIST_NODE: inputs})
        return results[LIST_NODE]["page_of_lineage"]

    async def get_invocation(self, invocation_id: str) -> dict[str, Any]:
        caller = self._caller("read:lineage")
        inputs = {"caller": caller, "invocation_id": invocation_id}
        results = await self._run(self.state.lineage.get, {GET_NODE: inputs})
        return results[GET_NODE]["invocation"]

    async def lineage_graph(self, *, selectors: dict[str, str | None], depth: int) -> dict[str, Any]:
        caller = self._caller("read:lineage")
        inputs = {"caller": caller, "selectors": {k: selectors.get(k) for k in GRAPH_SELECTORS}, "depth": depth}
        results = await self._run(self.state.lineage.graph, {GRAPH_NODE: inputs})
        return results[GRAPH_NODE]["graph"]

    async def export_lineage(self, *, filters: dict[str, str | None], export_format: str) -> LineageExport:
        """The caller's lineage matching `filters` as json, csv or openlineage; read while `chunks` is consumed."""
        caller = self._caller("read:lineage")
        inputs = {"caller": caller, "format": export_format, "filters": {k: filters.get(k) for k in FILTER_NAMES}}
        results = await self._run(self.state.lineage.export, {EXPORT_NODE: inputs})
        export = results[EXPORT_NODE]["export"]
        try:
            chunks = await export_chunks(self.state.engine, export=export)
        except Exception as exc:
            detail = database_fault(exc)
            if detail is None:
                raise
            raise ServiceUnavailableError(detail) from exc
        return LineageExport(media_type=export["media_type"], filename=export["filename"], chunks=chunks)

    async def user_lineage(self, email: str, *, page: int = 1, limit: int = 100) -> dict[str, Any]:
        caller = self._caller("read:lineage")
        inputs = {"caller": caller, "email": email, "page": page, "limit": limit}
        results = await self._run(self.state.lineage.user_access, {USER_ACCESS_NODE: inputs})
        return results[USER_ACCESS_NODE]["user_lineage"]

    async def erase_user_lineage(self, email: str) -> dict[str, Any]:
        caller = self._caller("erase:lineage")
        results = await self._run(
            self.state.lineage.user_erasure, {USER_ERASURE_NODE: {"caller": caller, "email": email}}
        )
        return results[USER_ERASURE_NODE]["erasure"]

    # The host application's workflows (as in channels/workflows_api.py)

    async def list_workflows(self) -> dict[str, Any]:
        self._caller("read:external_agent")
        workflows = self.state.host_workflows
        return {"items": [{"workflow_id": name, "nodes": list(wf.nodes)} for name, wf in workflows.items()]}

    async def execute_workflow(self, workflow_id: str, inputs: dict[str, Any] | None = None) -> dict[str, Any]:
        caller = self._caller("invoke:external_agent")
        workflow = self.state.host_workflows.get(workflow_id)
        if workflow is None:
            raise NotFoundError(f"Workflow '{workflow_id}' not found")
        node_inputs: dict[str, dict[str, Any]] = dict(inputs or {})
        if not all(isinstance(v, dict) for v in node_inputs.values()):
            raise ValidationError("inputs must be an object mapping node ids to objects of parameters")
        unknown = sorted(set(node_inputs) - set(workflow.nodes))
        if unknown:
            raise ValidationError(f"inputs.{unknown[0]}: no such node in workflow '{workflow_id}'")
        invoking = [node_id for node_id, node in workflow.nodes.items() if node.node_type == "InvokeExternalAgentNode"]
        check_workflow_inputs(
            workflow, node_inputs, set_by_gateway={node_id: {"caller", "workflow_id"} for node_id in invoking}
        )
        for node_id in invoking:
            node_inputs[node_id] = {**node_inputs.get(node_id, {}), "caller": caller, "workflow_id": workflow_id}
        results = await self._run(workflow, node_inputs)
        return {"workflow_id": workflow_id, "status": "completed", "outputs": results}
