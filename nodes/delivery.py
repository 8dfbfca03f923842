"""The delivery step of an invocation: decrypt the agent's credentials and deliver through its platform adapter.

This is the only place credentials are decrypted; they live in this node's memory for the call and never
appear in its output, a log line or an error text.
"""

from __future__ import annotations

import base64
from typing import Any

import httpx
from kailash.nodes.base import register_node

from external_agents.credential_cipher import CredentialCipher
from external_agents.errors import PlatformError, PlatformTimeoutError
from external_agents.money import to_micros
from external_agents.nodes.base import ExternalAgentNode, dependency, value
from external_agents.nodes.invocation import denied
from external_agents.nodes.platforms import get_adapter
from external_agents.nodes.platforms.auth import OAuth2TokenCache
from external_agents.nodes.platforms.base import DeliveryOptions, DeliveryRequest
from external_agents.nodes.platforms.delivery import deliver


def delivery_request(
    *,
    agent: dict[str, Any],
    sealed: dict[str, Any],
    invocation_id: str,
    trace_id: str,
    input: Any,
    context: dict[str, Any],
    identity: dict[str, Any],
) -> DeliveryRequest:
    """What an adapter needs to deliver `input` to `agent` (as `agent_view` shows it), secrets unsealed."""
    return DeliveryRequest(
        invocation_id=invocation_id,
        trace_id=trace_id,
        agent_id=agent["id"],
        agent_name=agent["name"],
        # Secrets kept in the sealed envelope replace their "***" placeholders.
        platform_config={**agent["platform_config"], **sealed.get("platform", {})},
        auth_type=agent["auth_config"]["auth_type"],
        auth_config={k: v for k, v in agent["auth_config"].items() if k != "auth_type"},
        credentials=sealed.get("auth", {}),
        input=input,
        context=context,
        external_user_id=identity.get("external_user_id"),
        external_user_email=identity.get("external_user_email"),
        external_user_name=identity.get("external_user_name"),
        external_system=identity.get("external_system"),
        external_session_id=identity.get("external_session_id"),
    )


def unseal(cipher: CredentialCipher, agent: dict[str, Any]) -> dict[str, Any]:
    token = agent["sealed_credentials"]
    return cipher.decrypt(base64.b64decode(token)) if token else {}


def credentials_event(invocation: dict[str, Any]) -> dict[str, Any]:
    return {
        "event_type": "external_agent.credentials_accessed",
        "organization_id": invocation["caller"]["organization_id"],
        "actor_id": invocation["caller"]["api_key_id"],
        "resource_type": "external_agent",
        "resource_id": invocation["agent"]["id"],
        "details": {"purpose": "delivery", "invocation_id": invocation["invocation_id"]},
    }


@register_node()
class DeliverInvocationNode(ExternalAgentNode):
    """Deliver to the platform with timeout and retries; the outcome (not an exception) says how it went."""

    def get_parameters(self) -> dict[str, Any]:
        return {
            "cipher": dependency("cipher", "CredentialCipher"),
            "client": dependency("client", "httpx.AsyncClient shared by all deliveries"),
            "options": dependency("options", "DeliveryOptions"),
            "token_cache": dependency("token_cache", "OAuth2TokenCache"),
            "invocation": value("invocation", "the invocation so far"),
        }

    async def async_run(self, **kw: Any) -> dict[str, Any]:
        invocation = kw["invocation"]
        if denied(invocation):
            return {"invocation": invocation}
        agent = invocation["agent"]
        request = delivery_request(
            agent=agent,
            sealed=unseal(kw["cipher"], agent),
            invocation_id=invocation["invocation_id"],
            trace_id=invocation["trace_id"],
            input=invocation["input"],
            context=invocation["context"],
            identity=invocation["identity"],
        )
        client: httpx.AsyncClient = kw["client"]
        options: DeliveryOptions = kw["options"]
        token_cache: OAuth2TokenCache = kw["token_cache"]
        try:
            result = await deliver(
                request,
                adapter=get_adapter(agent["platform"]),
                client=client,
                options=options,
                token_cache=token_cache,
            )
            delivery = {
                "status": "success",
                "status_code": result.status_code,
                "output": result.output,
                "reported_cost_micros": (
                    to_micros(result.reported_cost_usd) if result.reported_cost_usd is not None else None
                ),
                "attempts": result.attempts,
                "reached_platform": True,
                "error": None,
            }
        except PlatformError as exc:
            delivery = {
                "status": "timeout" if isinstance(exc, PlatformTimeoutError) else "failure",
                "status_code": exc.platform_status,
                "output": None,
                "reported_cost_micros": None,
                "attempts": exc.attempts,
                "reached_platform": exc.reached_platform,
                "error": exc.detail,
            }
        events = [*invocation["audit_events"], credentials_event(invocation)]
        return {"invocation": {**invocation, "delivery": delivery, "audit_events": events}}
