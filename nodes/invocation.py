"""The first nodes of an invocation: take the request, load the agent, and (after the policy) require it complete.

The policy is evaluated before a request is required to be complete, so that a policy denies a request that
lacks identity headers or a body (403, as the migration guide's ABAC check expects) instead of a 400; a request
the policy allows still gets the 400 naming what is missing, before any rate-limit hit or spend. Values that
are present are validated at once.

Usage in a host workflow (the prepared invocation then flows through the governance and delivery steps on
their `invocation` ports; see nodes/invocation_step.py)::

    builder.add_node("PrepareInvocationNode", "prepare", {})
    builder.add_node("LoadInvocationAgentNode", "load_agent", {"engine": engine})
    builder.add_connection("prepare", "invocation", "load_agent", "invocation")
    await runtime.execute_workflow_async(builder.build(), inputs={"prepare": {
        "caller": {"api_key_id": "key-1", "organization_id": "org-1"}, "agent_id": agent_id,
        "identity": {"external_user_id": "u1", ...}, "body": {"input": "hello", "metadata": {"ticket": 7}}}})
"""

from __future__ import annotations

import json
import time
import uuid
from datetime import UTC, datetime
from typing import Any

from kailash.nodes.base import NodeParameter, register_node

from external_agents.errors import NotFoundError, ValidationError
from external_agents.identity import CONTEXT_HEADER, IDENTITY_HEADERS, MAX_IDENTITY_LENGTH, Identity
from external_agents.nodes.base import ExternalAgentNode, dependency, value
from external_agents.nodes.invocation_state import AgentSnapshot, Invocation, InvocationCaller, InvocationRequest
from external_agents.nodes.invocation_step import InvocationStepNode, emit
from external_agents.request_models import InvocationBody, load_json, parse, reject_unstorable
from external_agents.stores import agents as agent_store


def _context(raw: Any) -> dict[str, Any]:
    if raw is None or raw == "":
        return {}
    try:
        parsed = load_json(raw) if isinstance(raw, str) else raw
    except json.JSONDecodeError:
        raise ValidationError(f"{CONTEXT_HEADER} must be a JSON object") from None
    except ValidationError as exc:
        raise ValidationError(f"{CONTEXT_HEADER}: {exc.detail}") from None
    if not isinstance(parsed, dict):
        raise ValidationError(f"{CONTEXT_HEADER} must be a JSON object")
    reject_unstorable(parsed, CONTEXT_HEADER)
    return parsed


def parse_identity(raw: dict[str, Any]) -> Identity:
    """The identity fields that were sent, validated; a missing one is None (required later, after the policy)."""
    fields: dict[str, str | None] = {}
    for header in IDENTITY_HEADERS:
        text = raw.get(header.field)
        if text is None or (isinstance(text, str) and not text.strip()):
            fields[header.field] = None
            continue
        if not isinstance(text, str) or len(text) > MAX_IDENTITY_LENGTH or "\x00" in text:
            raise ValidationError(f"{header.header} must be text of at most {MAX_IDENTITY_LENGTH} characters")
        fields[header.field] = text
    email = fields["external_user_email"]
    if email is not None and "@" not in email:
        raise ValidationError("X-External-User-Email must be an email address")
    return Identity(**fields, external_context=_context(raw.get("external_context")))


def prepare_invocation(
    *,
    caller: dict[str, Any],
    agent_id: str,
    identity: dict[str, Any],
    body: Any,
    workflow_id: str | None = None,
    now: datetime | None = None,
) -> Invocation:
    # No body at all is required later, like a missing header; a body that is present must be well formed.
    request = parse(InvocationBody, body) if body is not None else InvocationBody(input=None)
    reject_unstorable(body)
    who = parse_identity(identity)
    return Invocation(
        invocation_id=str(uuid.uuid4()),
        trace_id=f"trc_{uuid.uuid4().hex}",
        caller=InvocationCaller(api_key_id=caller["api_key_id"], organization_id=caller["organization_id"]),
        agent_id=agent_id,
        identity=who,
        request=InvocationRequest(
            input=request.input,
            # The body's context wins over the header's, key by key.
            context={**who.external_context, **(request.context or {})},
            metadata=request.metadata or {},
            body_received=body is not None,
            workflow_id=workflow_id,
        ),
        request_timestamp=now or datetime.now(UTC),
        started=time.perf_counter(),
    )


def require_complete(invocation: Invocation) -> None:
    """400 naming the first required header (or the body) the request lacks."""
    missing = invocation.identity.missing_header()
    if missing is not None:
        raise ValidationError(f"Missing required header {missing}")
    if not invocation.request.body_received:
        raise ValidationError('Request body is required (JSON): {"input": ...}')


@register_node()
class PrepareInvocationNode(ExternalAgentNode):
    """Validate the invocation request and give it its ids and timestamp.

    Inputs: `caller`, `agent_id`, `identity`, `body`, `workflow_id`. Output `invocation`: the new invocation.
    """

    def get_parameters(self) -> dict[str, NodeParameter]:
        return {
            "caller": value("caller", "{api_key_id, organization_id}: who asks"),
            "agent_id": value("agent_id", "the agent to invoke"),
            "identity": value("identity", "external identity by field name (external_user_id, ..., external_context)"),
            "body": value("body", "the invoke body {input, context?, metadata?}; None when none was sent"),
            "workflow_id": value("workflow_id", "the calling workflow, recorded in lineage", required=False),
        }

    async def async_run(self, **kw: Any) -> dict[str, Any]:
        return emit(
            prepare_invocation(
                caller=kw["caller"],
                agent_id=kw["agent_id"],
                identity=kw["identity"],
                body=kw["body"],
                workflow_id=kw.get("workflow_id"),
            )
        )


@register_node()
class ValidateInvocationNode(InvocationStepNode):
    """After the policy: a request it did not deny must carry the required identity headers and a body."""

    async def step(self, invocation: Invocation, **_: Any) -> Invocation:
        require_complete(invocation)
        return invocation


@register_node()
class LoadInvocationAgentNode(InvocationStepNode):
    """Load the agent from the caller's organisation (another organisation's agent is not found).

    With an `agent_cache` (the gateway's, see nodes/agent_cache.py) a recently loaded agent comes from memory.
    """

    def dependencies(self) -> dict[str, NodeParameter]:
        return {
            "engine": dependency("engine", "SQLAlchemy AsyncEngine"),
            "agent_cache": dependency("agent_cache", "AgentCache; without one, every load reads", required=False),
        }

    async def step(self, invocation: Invocation, **kw: Any) -> Invocation:
        organization_id, agent_id = invocation.caller.organization_id, invocation.agent_id
        cache = kw.get("agent_cache")
        if cache is not None:
            agent = await cache.snapshot(organization_id=organization_id, agent_id=agent_id)
        else:
            row = await agent_store.get_agent(kw["engine"], organization_id=organization_id, agent_id=agent_id)
            agent = AgentSnapshot.from_row(row) if row is not None else None
        if agent is None:
            raise NotFoundError(f"External agent '{agent_id}' not found")
        return invocation.updated(agent=agent)
