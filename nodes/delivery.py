"""The delivery step of an invocation: decrypt the agent's credentials and deliver through its platform adapter.

This is the only place credentials are decrypted; they live in this node's memory for the call and never
appear in its output, a log line or an error text.

Usage in a host workflow, after the governance steps::

    builder.add_node("DeliverInvocationNode", "deliver", {
        "cipher": cipher, "client": platform_client, "options": DeliveryOptions(...), "token_cache": OAuth2TokenCache(),
        "bulkhead": DeliveryBulkhead(per_agent=50, per_host=100)})
    builder.add_connection("budget", "invocation", "deliver", "invocation")

Input `invocation`; output `invocation` with `Delivered` or `DeliveryFailed` (a failure is a result, not an
exception), and a credentials-accessed audit event. A denied invocation passes through undelivered. The
`bulkhead` bounds deliveries in flight per agent and per host: when it is full the invocation is not delivered
(`DeliveryFailed` with `saturated`: nothing sent, so nothing billed).
"""

from __future__ import annotations

from decimal import Decimal
from typing import Any

import httpx
from kailash.nodes.base import NodeParameter, register_node

from external_agents.credential_cipher import CredentialCipher
from external_agents.errors import PlatformError, PlatformTimeoutError, ValidationError
from external_agents.identity import Identity
from external_agents.money import to_micros
from external_agents.nodes.base import DEPENDENCY, dependency
from external_agents.nodes.cost_overrun import overrun_event
from external_agents.nodes.invocation_state import (
    AgentSnapshot,
    AuditEvent,
    Delivered,
    Delivery,
    DeliveryFailed,
    Invocation,
)
from external_agents.nodes.invocation_step import InvocationStepNode
from external_agents.nodes.platforms import get_adapter
from external_agents.nodes.platforms.auth import OAuth2TokenCache
from external_agents.nodes.platforms.base import DeliveryOptions, DeliveryRequest, DeliveryResult, PlatformAdapter
from external_agents.nodes.platforms.bulkhead import DeliveryBulkhead
from external_agents.nodes.platforms.delivery import deliver
from external_agents.nodes.platforms.http_client import PlatformClient
from external_agents.nodes.platforms.reported_cost import parse_reported_cost
from external_agents.nodes.platforms.webhook_url import parse_url
from external_agents.storable_values import storable_output, storable_text


def delivery_request(
    *,
    agent: AgentSnapshot,
    sealed: dict[str, Any],
    invocation_id: str,
    trace_id: str,
    input: Any,
    context: dict[str, Any],
    identity: Identity,
) -> DeliveryRequest:
    """What an adapter needs to deliver `input` to `agent`, secrets unsealed."""
    return DeliveryRequest(
        invocation_id=invocation_id,
        trace_id=trace_id,
        agent_id=agent.id,
        agent_name=agent.name,
        # Secrets kept in the sealed envelope replace their "***" placeholders.
        platform_config={**agent.platform_config, **sealed.get("platform", {})},
        auth_type=agent.auth_config["auth_type"],
        auth_config={k: v for k, v in agent.auth_config.items() if k != "auth_type"},
        credentials=sealed.get("auth", {}),
        input=input,
        context=context,
        external_user_id=identity.external_user_id,
        external_user_email=identity.external_user_email,
        external_user_name=identity.external_user_name,
        external_system=identity.external_system,
        external_session_id=identity.external_session_id,
    )


def unseal(cipher: CredentialCipher, agent: AgentSnapshot) -> dict[str, Any]:
    return cipher.decrypt(agent.sealed_credentials) if agent.sealed_credentials else {}


def delivered(result: DeliveryResult, *, max_reported_cost_usd: Decimal) -> Delivered:
    """The delivery as the record needs it: the reported cost parsed strictly, the output storable, and a note
    saying what was ignored or changed (a cost not believed, an output kept as text)."""
    reported = parse_reported_cost(result.reported_cost, maximum=max_reported_cost_usd)
    # Adapters make their output storable; this is the guarantee for whatever one returns.
    output = storable_output(result.output)
    notes = [note for note in (result.note, output.note, reported.note) if note]
    return Delivered(
        status_code=result.status_code,
        output=output.value,
        reported_cost_micros=to_micros(reported.usd) if reported.usd is not None else None,
        attempts=result.attempts,
        record_note="; ".join(notes) or None,
    )


def delivery_failed(exc: PlatformError) -> DeliveryFailed:
    return DeliveryFailed(
        timed_out=isinstance(exc, PlatformTimeoutError),
        status_code=exc.platform_status,
        attempts=exc.attempts,
        reached_platform=exc.reached_platform,
        # A platform's error text can hold NUL, which PostgreSQL's text refuses.
        error=storable_text(exc.detail),
    )


SATURATED = "Too many deliveries in flight for this agent or its platform host; retry shortly"


def saturated() -> DeliveryFailed:
    return DeliveryFailed(
        timed_out=False, status_code=None, attempts=0, reached_platform=False, error=SATURATED, saturated=True
    )


def destination_host(adapter: PlatformAdapter, platform_config: dict[str, Any]) -> str:
    """The host a delivery goes to, for its bulkhead; "" when the config names none (delivery then fails on its
    own, before sending)."""
    try:
        return parse_url(adapter.endpoint(platform_config)).host
    except (ValidationError, ValueError, httpx.InvalidURL):
        return ""


def credentials_event(invocation: Invocation) -> AuditEvent:
    return AuditEvent(
        event_type="external_agent.credentials_accessed",
        details={"purpose": "delivery", "invocation_id": invocation.invocation_id},
    )


@register_node()
class DeliverInvocationNode(InvocationStepNode):
    """Deliver to the platform with timeout and retries; the result (not an exception) says how it went."""

    def dependencies(self) -> dict[str, NodeParameter]:
        return {
            "cipher": dependency("cipher", "CredentialCipher: opens the agent's sealed credentials"),
            "client": dependency("client", "PlatformClient shared by all deliveries"),
            "options": dependency("options", "DeliveryOptions: timeout, retries, private webhooks"),
            "token_cache": dependency("token_cache", "OAuth2TokenCache"),
            # Optional, so a host composing this node keeps working without one (then nothing bounds deliveries).
            "bulkhead": NodeParameter(
                name="bulkhead",
                type=object,
                required=False,
                default=None,
                category=DEPENDENCY,
                description="DeliveryBulkhead: deliveries in flight per agent and per host (none: unbounded)",
            ),
        }

    async def step(self, invocation: Invocation, **kw: Any) -> Invocation:
        agent = invocation.loaded_agent
        request = delivery_request(
            agent=agent,
            sealed=unseal(kw["cipher"], agent),
            invocation_id=invocation.invocation_id,
            trace_id=invocation.trace_id,
            input=invocation.request.input,
            context=invocation.request.context,
            identity=invocation.identity,
        )
        adapter = get_adapter(agent.platform)
        bulkhead: DeliveryBulkhead | None = kw.get("bulkhead")
        slot = None
        if bulkhead is not None:
            # The host comes from the unsealed config: a webhook URL is itself a secret, stored masked.
            slot = bulkhead.try_acquire(agent_id=agent.id, host=destination_host(adapter, request.platform_config))
            if slot is None:
                return invocation.updated(credentials_event(invocation), delivery=saturated())
        client: PlatformClient = kw["client"]
        options: DeliveryOptions = kw["options"]
        token_cache: OAuth2TokenCache = kw["token_cache"]
        outcome: Delivery
        try:
            result = await deliver(request, adapter=adapter, client=client, options=options, token_cache=token_cache)
            outcome = delivered(result, max_reported_cost_usd=options.max_reported_cost_usd)
        except PlatformError as exc:
            outcome = delivery_failed(exc)
        finally:
            if bulkhead is not None and slot is not None:
                bulkhead.release(slot)
        delivered_invocation = invocation.updated(credentials_event(invocation), delivery=outcome)
        overrun = overrun_event(delivered_invocation)
        return delivered_invocation if overrun is None else delivered_invocation.updated(overrun)
