"""The first nodes of an invocation: take the request, load the agent, and (after the policy) require it complete.

The policy is evaluated before a request is required to be complete, so that a policy denies a request that
lacks identity headers or a body (403, as the migration guide's ABAC check expects) instead of a 400; a request
the policy allows still gets the 400 naming what is missing, before any rate-limit hit or spend. Values that
are present are validated at once.

An invocation travels through the workflow as one JSON dict. Once a node records a `denial`, every later
node passes the dict on untouched, so nothing after a denial runs (no delivery, no spend, no rate-limit hit
for a request a policy already denied); the record node then writes the denial to lineage.
"""

from __future__ import annotations

import base64
import json
import time
import uuid
from datetime import UTC, datetime
from typing import Any

from kailash.nodes.base import register_node

from external_agents.errors import NotFoundError, ValidationError
from external_agents.nodes.base import ExternalAgentNode, dependency, value
from external_agents.request_models import InvocationBody, load_json, parse, reject_unstorable
from external_agents.stores import agents as agent_store

# (field, header): the external identity every invocation must carry.
REQUIRED_IDENTITY = (
    ("external_user_id", "X-External-User-ID"),
    ("external_user_email", "X-External-User-Email"),
    ("external_system", "X-External-System"),
    ("external_session_id", "X-External-Session-ID"),
)
OPTIONAL_IDENTITY = (
    ("external_user_name", "X-External-User-Name"),
    ("external_trace_id", "X-External-Trace-ID"),
)
CONTEXT_HEADER = "X-External-Context"
MAX_IDENTITY_LENGTH = 255


def denied(invocation: dict[str, Any]) -> bool:
    return invocation.get("denial") is not None


def _identity(raw: dict[str, Any]) -> dict[str, Any]:
    """The identity fields that were sent, validated; a missing one is None (required later, after the policy)."""
    identity: dict[str, Any] = {}
    for field, header in (*REQUIRED_IDENTITY, *OPTIONAL_IDENTITY):
        text = raw.get(field)
        if text is None or (isinstance(text, str) and not text.strip()):
            identity[field] = None
            continue
        if not isinstance(text, str) or len(text) > MAX_IDENTITY_LENGTH or "\x00" in text:
            raise ValidationError(f"{header} must be text of at most {MAX_IDENTITY_LENGTH} characters")
        identity[field] = text
    email = identity["external_user_email"]
    if email is not None and "@" not in email:
        raise ValidationError("X-External-User-Email must be an email address")
    context = raw.get("external_context")
    if context is None or context == "":
        identity["external_context"] = {}
    else:
        try:
            parsed = load_json(context) if isinstance(context, str) else context
        except json.JSONDecodeError:
            raise ValidationError(f"{CONTEXT_HEADER} must be a JSON object") from None
        except ValidationError as exc:
            raise ValidationError(f"{CONTEXT_HEADER}: {exc.detail}") from None
        if not isinstance(parsed, dict):
            raise ValidationError(f"{CONTEXT_HEADER} must be a JSON object")
        reject_unstorable(parsed, CONTEXT_HEADER)
        identity["external_context"] = parsed
    return identity


def prepare_invocation(
    *, caller: dict[str, Any], agent_id: str, identity: dict[str, Any], body: Any, workflow_id: str | None = None
) -> dict[str, Any]:
    # No body at all is required later, like a missing header; a body that is present must be well formed.
    request = parse(InvocationBody, body) if body is not None else InvocationBody(input=None)
    reject_unstorable(body)
    who = _identity(identity)
    return {
        "invocation_id": str(uuid.uuid4()),
        "trace_id": f"trc_{uuid.uuid4().hex}",
        "agent_id": agent_id,
        "caller": caller,
        "identity": who,
        "input": request.input,
        # The body's context wins over the header's, key by key.
        "context": {**who["external_context"], **(request.context or {})},
        "metadata": request.metadata or {},
        "workflow_id": workflow_id,
        "request_timestamp": datetime.now(UTC).isoformat(),
        "started": time.perf_counter(),
        "body_received": body is not None,
        "denial": None,
        "audit_events": [],
    }


def require_complete(invocation: dict[str, Any]) -> None:
    """400 naming the first required header (or the body) the request lacks."""
    for field, header in REQUIRED_IDENTITY:
        if invocation["identity"][field] is None:
            raise ValidationError(f"Missing required header {header}")
    if not invocation["body_received"]:
        raise ValidationError('Request body is required (JSON): {"input": ...}')


def agent_view(row: dict[str, Any]) -> dict[str, Any]:
    """What the later nodes need of the agent; the sealed credentials stay sealed (base64 of the token)."""
    token = row["encrypted_credentials"]
    return {
        "id": row["id"],
        "name": row["name"],
        "platform": row["platform"],
        "platform_config": row["platform_config"],
        "auth_config": row["auth_config"],
        "sealed_credentials": base64.b64encode(bytes(token)).decode() if token else None,
        "cost_per_execution": row["cost_per_execution"],
        "max_daily_cost": row["max_daily_cost"],
        "max_monthly_cost": row["max_monthly_cost"],
        "requests_per_minute": row["requests_per_minute"],
        "requests_per_hour": row["requests_per_hour"],
        "requests_per_day": row["requests_per_day"],
        "daily_execution_limit": row["daily_execution_limit"],
        "monthly_execution_limit": row["monthly_execution_limit"],
    }


@register_node()
class PrepareInvocationNode(ExternalAgentNode):
    """Validate the invocation request and give it its ids and timestamp."""

    def get_parameters(self) -> dict[str, Any]:
        return {
            "caller": value("caller", "{api_key_id, organization_id}"),
            "agent_id": value("agent_id", "the agent to invoke"),
            "identity": value("identity", "external identity, by field name (from the X-External-* headers)"),
            "body": value("body", "{input, context?, metadata?}"),
            "workflow_id": value("workflow_id", "the calling workflow, if any", required=False),
        }

    async def async_run(self, **kw: Any) -> dict[str, Any]:
        return {
            "invocation": prepare_invocation(
                caller=kw["caller"],
                agent_id=kw["agent_id"],
                identity=kw["identity"],
                body=kw["body"],
                workflow_id=kw.get("workflow_id"),
            )
        }


@register_node()
class ValidateInvocationNode(ExternalAgentNode):
    """After the policy: a request it did not deny must carry the required identity headers and a body."""

    def get_parameters(self) -> dict[str, Any]:
        return {"invocation": value("invocation", "the invocation so far")}

    async def async_run(self, **kw: Any) -> dict[str, Any]:
        invocation = kw["invocation"]
        if not denied(invocation):
            require_complete(invocation)
        return {"invocation": invocation}


@register_node()
class LoadInvocationAgentNode(ExternalAgentNode):
    """Load the agent from the caller's organisation (another organisation's agent is not found)."""

    def get_parameters(self) -> dict[str, Any]:
        return {
            "engine": dependency("engine", "SQLAlchemy AsyncEngine"),
            "invocation": value("invocation", "the invocation so far"),
        }

    async def async_run(self, **kw: Any) -> dict[str, Any]:
        invocation = kw["invocation"]
        row = await agent_store.get_agent(
            kw["engine"], organization_id=invocation["caller"]["organization_id"], agent_id=invocation["agent_id"]
        )
        if row is None:
            raise NotFoundError(f"External agent '{invocation['agent_id']}' not found")
        return {"invocation": {**invocation, "agent": agent_view(row)}}
