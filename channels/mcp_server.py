"""The MCP channel: typed tools for AI assistants, built with the official `mcp` SDK (v2, `MCPServer`).

Nexus's own MCP channel has no authentication and untyped tools, so this one replaces it. Each tool runs the
same workflow as its REST route through `LocalGateway`, with the same permission check and organisation
scoping, and returns the JSON the REST route answers. A refusal (missing permission, unknown agent, a
governance denial, a failed delivery) is a tool error whose text is REST's JSON error body, so an assistant
sees the same `detail`, `error_code` and denial fields (`policy_id`, `retry_after_seconds`, ...).

Two transports:
- streamable HTTP at `/mcp` on the API's own port (`mount_mcp`), behind the bearer API key: the auth
  middleware puts the `Caller` on the request scope and each tool call reads it from there;
- stdio (`serve_stdio`, `external-agents mcp --stdio`): one caller, whose `KAIZEN_API_KEY` is looked up again
  on every tool call as the middleware looks it up on every HTTP request, so `keys revoke` ends the session's
  access on its next call with REST's 401.
"""

from __future__ import annotations

import asyncio
import json
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from typing import TYPE_CHECKING, Annotated, Any

from mcp.server.mcpserver import Context, MCPServer
from mcp.server.mcpserver.exceptions import ToolError
from mcp.server.transport_security import TransportSecuritySettings
from mcp_types import ToolAnnotations
from pydantic import Field

from external_agents.agent_fields import AgentCreate
from external_agents.channels.auth import KeyRefusedError, caller_for_key
from external_agents.channels.error_responses import error_body, error_body_of
from external_agents.channels.invocation_responses import invocation_answer
from external_agents.errors import ExternalAgentsError
from external_agents.field_sets import tool_parameters, with_parameters
from external_agents.gateway.operations import LocalGateway
from external_agents.lineage_filters import GraphSelectors, LineageFilterParams
from external_agents.nodes.lineage import DEFAULT_DEPTH, MAX_DEPTH, MAX_PAGE, MAX_PAGE_SIZE
from external_agents.nodes.platforms import ADAPTERS
from external_agents.nodes.platforms.auth import AUTH_TYPES
from external_agents.stores.api_keys import Caller

if TYPE_CHECKING:
    from fastapi import FastAPI
    from mcp.server.streamable_http_manager import StreamableHTTPSessionManager

    from external_agents.app_state import AppState

MCP_PATH = "/mcp"

INSTRUCTIONS = (
    "External Agents is a governed gateway to agents on other platforms (Teams, Slack, Discord, Telegram, "
    "Notion, custom HTTP). Find an agent with list_agents, check governance_status before invoking, then "
    "invoke_agent with the end user's identity. Every invocation passes policy, rate-limit and budget checks "
    "and is recorded in lineage (list_lineage, get_invocation, lineage_graph). A refused call returns an error "
    "whose text is a JSON object with status_code, detail and error_code, plus policy_id (403), "
    "retry_after_seconds (429) or budget_remaining (402) for governance denials."
)

# Tool arguments; the bounds are the REST query parameters' bounds.
AgentId = Annotated[str, Field(min_length=1, max_length=255, description="The agent's id (from list_agents).")]
Page = Annotated[int, Field(ge=1, le=MAX_PAGE, description="Page number, from 1.")]
Limit = Annotated[int, Field(ge=1, le=MAX_PAGE_SIZE, description=f"Items per page, at most {MAX_PAGE_SIZE}.")]
Date = Annotated[str | None, Field(max_length=64, description="ISO 8601 with a time zone, e.g. 2025-01-31T00:00:00Z.")]
Status = Annotated[
    str | None, Field(max_length=50, description="Only invocations in this status: success, failure, timeout, denied.")
]
Email = Annotated[str, Field(min_length=3, max_length=255, description="The external user's email address.")]
JsonObject = dict[str, Any]

READ_ONLY = ToolAnnotations(read_only_hint=True, open_world_hint=False)

CallerOf = Callable[[Context], Awaitable[Caller]]


def _request_id(ctx: Context) -> str | None:
    """The HTTP request's id (set by the auth middleware), so a tool error can be matched with the logs."""
    scope = getattr(ctx.request_context.request, "scope", None) or {}
    return scope.get("state", {}).get("request_id")


async def caller_from_http_request(ctx: Context) -> Caller:
    """The Caller the bearer-auth middleware authenticated for the HTTP request carrying this tool call."""
    scope = getattr(ctx.request_context.request, "scope", None) or {}
    caller = scope.get("state", {}).get("caller")
    if not isinstance(caller, Caller):
        raise ToolError(json.dumps({"status_code": 401, "detail": "Not authenticated", "error_code": "UNAUTHORIZED"}))
    return caller


class GatewayTools:
    """The tools, as bound methods: their signatures are the input schemas and their docstrings the descriptions."""

    def __init__(self, state: AppState, caller_of: CallerOf) -> None:
        self.state = state
        self.caller_of = caller_of

    async def _call(self, ctx: Context, operation: Callable[[LocalGateway], Awaitable[Any]]) -> Any:
        gateway = LocalGateway(self.state, await self.caller_of(ctx), request_id=_request_id(ctx))
        try:
            return await operation(gateway)
        except ExternalAgentsError as exc:
            raise ToolError(json.dumps(error_body_of(exc, request_id=gateway.request_id), ensure_ascii=False)) from None

    async def list_agents(
        self,
        ctx: Context,
        page: Page = 1,
        limit: Limit = 20,
        platform: Annotated[str | None, Field(max_length=50, description="Only agents on this platform.")] = None,
        search: Annotated[str | None, Field(max_length=255, description="Text to look for in names.")] = None,
    ) -> JsonObject:
        """List the organisation's external agents, newest first.

        Returns {items, total, page, limit, has_more}; each item has id, name, platform, budgets, rate limits,
        current_monthly_cost and usage_percentage. Credentials are never returned. Needs read:external_agent.
        """
        return await self._call(
            ctx, lambda gw: gw.list_agents(page=page, limit=limit, platform=platform, search=search)
        )

    async def get_agent(self, ctx: Context, agent_id: AgentId) -> JsonObject:
        """Get one external agent with its governance block (monthly/daily spend, usage, invocations today and this
        month). An unknown id, or another organisation's agent, is a 404 error. Needs read:external_agent."""
        return await self._call(ctx, lambda gw: gw.get_agent(agent_id))

    @with_parameters(
        tool_parameters(
            AgentCreate,
            descriptions={
                "auth_config": f"{{auth_type, credentials}}; auth_type one of {', '.join(AUTH_TYPES)}, "
                "e.g. {'auth_type': 'bearer_token', 'credentials': {'token': '...'}}. Default: none."
            },
            schema_extra={"platform": {"enum": list(ADAPTERS)}},
        )
    )
    async def register_agent(self, ctx: Context, **given: Any) -> JsonObject:
        """Register an external agent for the organisation; returns it with "credentials": "***".

        A duplicate name is a 409 error; an unknown platform or an invalid platform_config/auth_config a 400
        naming the problem. Needs create:external_agent.
        """
        body = {key: value for key, value in given.items() if value is not None}
        return await self._call(ctx, lambda gw: gw.create_agent(body))

    async def invoke_agent(
        self,
        ctx: Context,
        agent_id: AgentId,
        input: Annotated[Any, Field(description="What to send to the agent: any JSON value.")],
        external_user_id: Annotated[str, Field(description="The end user's id in the calling system.")],
        external_user_email: Annotated[str, Field(description="The end user's email address.")],
        external_system: Annotated[str, Field(description="The calling system, e.g. 'claude-desktop'.")],
        external_session_id: Annotated[str, Field(description="The conversation or session id.")],
        external_user_name: Annotated[str | None, Field(description="The end user's display name.")] = None,
        external_trace_id: Annotated[
            str | None, Field(description="trace_id of the invocation that led to this one (links the lineage).")
        ] = None,
        context: Annotated[
            JsonObject | None, Field(description="Attributes for policies, e.g. {'environment': 'prod'}.")
        ] = None,
        metadata: Annotated[JsonObject | None, Field(description="Free-form metadata kept with the call.")] = None,
    ) -> JsonObject:
        """Invoke an external agent on behalf of an end user, under governance (policy, rate limit, budget).

        Returns {invocation_id, trace_id, status, output, metadata: {duration_ms, cost_usd, webhook_delivered}}.
        A denial is an error: 403 with policy_id and matched_policies, 429 with retry_after_seconds (wait that
        long), 402 with budget_remaining and budget_limit; a failed delivery is a 502/504 error. Denied and
        failed calls are recorded in lineage too. Needs invoke:external_agent.
        """
        identity = {
            "external_user_id": external_user_id,
            "external_user_email": external_user_email,
            "external_system": external_system,
            "external_session_id": external_session_id,
            "external_user_name": external_user_name,
            "external_trace_id": external_trace_id,
            "external_context": None,
        }
        body: dict[str, Any] = {"input": input}
        if context is not None:
            body["context"] = context
        if metadata is not None:
            body["metadata"] = metadata

        async def invoke(gateway: LocalGateway) -> JsonObject:
            outcome = await gateway.invoke(agent_id, identity=identity, body=body)
            status_code, answer = invocation_answer(outcome, request_id=gateway.request_id)
            if status_code != 200:
                raise ToolError(json.dumps(answer, ensure_ascii=False))
            return answer

        return await self._call(ctx, invoke)

    async def governance_status(self, ctx: Context, agent_id: AgentId) -> JsonObject:
        """Budget (spent, remaining, usage_percentage, warning/degraded flags), rate limit (remaining, current
        usage per minute/hour/day, retry_after_seconds) and active policies of an agent: check before invoking.
        Needs read:external_agent."""
        return await self._call(ctx, lambda gw: gw.governance_status(agent_id))

    async def list_invocations(
        self,
        ctx: Context,
        agent_id: AgentId,
        page: Page = 1,
        limit: Limit = 20,
        status: Status = None,
        start_date: Date = None,
        end_date: Date = None,
    ) -> JsonObject:
        """List an agent's invocations, newest first, optionally by status and time range (start inclusive, end
        exclusive). Returns {items, total, page, limit, has_more}. Needs read:external_agent."""
        return await self._call(
            ctx,
            lambda gw: gw.list_invocations(
                agent_id, page=page, limit=limit, status=status, start_date=start_date, end_date=end_date
            ),
        )

    @with_parameters(tool_parameters(LineageFilterParams))
    async def list_lineage(self, ctx: Context, page: Page = 1, limit: Limit = 20, **filters: str | None) -> JsonObject:
        """Search the organisation's invocation lineage (who invoked which agent, from which system and session,
        with what outcome and cost), newest first. Returns {items, total, page, limit, has_more}.
        Needs read:lineage."""
        return await self._call(ctx, lambda gw: gw.list_lineage(filters=filters, page=page, limit=limit))

    async def get_invocation(
        self, ctx: Context, invocation_id: Annotated[str, Field(min_length=1, description="The invocation's id.")]
    ) -> JsonObject:
        """One invocation's full lineage record: the five identity layers, input, output, status, denial reason,
        cost, duration and delivery. Needs read:lineage."""
        return await self._call(ctx, lambda gw: gw.get_invocation(invocation_id))

    @with_parameters(tool_parameters(GraphSelectors))
    async def lineage_graph(
        self,
        ctx: Context,
        depth: Annotated[int, Field(ge=0, le=MAX_DEPTH, description="Hops to follow from the selection.")] = (
            DEFAULT_DEPTH
        ),
        **selectors: str | None,
    ) -> JsonObject:
        """The graph of invocations around a session, trace, invocation or workflow (give one): nodes, edges from
        parent to child invocation, and metadata {total_nodes, external_nodes, total_cost_usd}.
        Needs read:lineage."""
        return await self._call(ctx, lambda gw: gw.lineage_graph(selectors=selectors, depth=depth))

    async def user_lineage(
        self, ctx: Context, email: Email, page: Page = 1, limit: Limit = MAX_PAGE_SIZE
    ) -> JsonObject:
        """Everything recorded about one end user (GDPR access request): their invocations with identity, input
        and output. Needs read:lineage."""
        return await self._call(ctx, lambda gw: gw.user_lineage(email, page=page, limit=limit))

    async def erase_user_lineage(self, ctx: Context, email: Email) -> JsonObject:
        """GDPR erasure: replace one end user's personal fields in lineage with [REDACTED]. Rows and costs stay;
        an audit event records the erasure. Irreversible. Needs erase:lineage."""
        return await self._call(ctx, lambda gw: gw.erase_user_lineage(email))

    async def list_workflows(self, ctx: Context) -> JsonObject:
        """The host application's workflows that execute_workflow can run, with their node ids.
        Needs read:external_agent."""
        return await self._call(ctx, lambda gw: gw.list_workflows())

    async def execute_workflow(
        self,
        ctx: Context,
        workflow_id: Annotated[str, Field(min_length=1, description="The workflow's id (from list_workflows).")],
        inputs: Annotated[
            dict[str, JsonObject] | None,
            Field(description="Parameters by node id, e.g. {'greet': {'name': 'Ada'}}."),
        ] = None,
    ) -> JsonObject:
        """Run one of the host application's workflows; returns {workflow_id, status, outputs by node id}.
        Agent invocations inside it are governed and recorded like invoke_agent. Needs invoke:external_agent."""
        return await self._call(ctx, lambda gw: gw.execute_workflow(workflow_id, inputs))


def build_mcp_server(state: AppState, *, caller_of: CallerOf) -> MCPServer:
    """The MCP server with every tool; `caller_of` says who is calling (from the HTTP request, or fixed)."""
    server = MCPServer("external-agents", instructions=INSTRUCTIONS, log_level="WARNING")
    tools = GatewayTools(state, caller_of)
    read_only = (
        tools.list_agents,
        tools.get_agent,
        tools.governance_status,
        tools.list_invocations,
        tools.list_lineage,
        tools.get_invocation,
        tools.lineage_graph,
        tools.user_lineage,
        tools.list_workflows,
    )
    for tool in read_only:
        server.add_tool(tool, annotations=READ_ONLY)
    server.add_tool(tools.register_agent, annotations=ToolAnnotations(read_only_hint=False, destructive_hint=False))
    server.add_tool(tools.invoke_agent, annotations=ToolAnnotations(read_only_hint=False, open_world_hint=True))
    server.add_tool(tools.erase_user_lineage, annotations=ToolAnnotations(read_only_hint=False, destructive_hint=True))
    server.add_tool(tools.execute_workflow, annotations=ToolAnnotations(read_only_hint=False, open_world_hint=True))
    return server


def mount_mcp(app: FastAPI, state: AppState) -> StreamableHTTPSessionManager:
    """Serve the tools over streamable HTTP at /mcp on `app`; run the returned manager with `running(...)` in the
    app's lifespan.

    Stateless JSON mode: every POST stands alone, so any instance behind a load balancer can answer it and no
    session outlives the request that authenticated it. DNS-rebinding protection is off: it guards servers that
    trust any local caller, while every request here must carry a bearer API key.
    """
    server = build_mcp_server(state, caller_of=caller_from_http_request)
    starlette_app = server.streamable_http_app(
        streamable_http_path=MCP_PATH,
        stateless_http=True,
        json_response=True,
        max_request_body_size=state.settings.kaizen_max_body_bytes,
        transport_security=TransportSecuritySettings(enable_dns_rebinding_protection=False),
    )
    app.router.routes.extend(starlette_app.routes)
    return server.session_manager


@asynccontextmanager
async def running(manager: StreamableHTTPSessionManager) -> AsyncIterator[None]:
    """Keep `manager` running while the context is open.

    The manager's task group must be left by the task that entered it, and a lifespan may be closed by another
    task than the one that opened it (pytest-asyncio's fixtures do that), so the manager lives in a task of its own.
    """
    started = asyncio.Event()
    stop = asyncio.Event()

    async def hold() -> None:
        async with manager.run():
            started.set()
            await stop.wait()

    task = asyncio.create_task(hold(), name="mcp-session-manager")
    waiter = asyncio.create_task(started.wait())
    await asyncio.wait({task, waiter}, return_when=asyncio.FIRST_COMPLETED)
    if task.done():
        waiter.cancel()
        task.result()  # raises what stopped the manager from starting
    try:
        yield
    finally:
        stop.set()
        await task


def caller_by_key(state: AppState, api_key: str) -> CallerOf:
    """The caller of `api_key`, looked up afresh for each tool call (a revoked key is refused on its next call)."""

    async def caller_of(_ctx: Context) -> Caller:
        request_id = uuid.uuid4().hex
        try:
            return await caller_for_key(state.keys, api_key, request_id=request_id)
        except KeyRefusedError as refused:
            body = error_body(refused.status_code, refused.detail, request_id=request_id)
            raise ToolError(json.dumps(body)) from None

    return caller_of


async def serve_stdio(state: AppState, api_key: str) -> None:
    """Serve the tools on stdin/stdout for the caller of `api_key` until the client closes the stream."""
    server = build_mcp_server(state, caller_of=caller_by_key(state, api_key))
    await server.run_stdio_async()
