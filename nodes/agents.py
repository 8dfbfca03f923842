"""Nodes of the agent registry: create, get, list, update and delete an organisation's external agents.

Each node declares its inputs and delegates to a plain function that a unit test can call without a runtime.
Credentials arrive as a node input and leave only encrypted: no node output carries a secret.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from kailash.nodes.base import register_node

from external_agents.agent_fields import (
    CLEARABLE_FIELDS,
    AgentCreate,
    AgentUpdate,
    limit_values,
    present_limits,
)
from external_agents.credential_cipher import CredentialCipher
from external_agents.errors import NotFoundError, ValidationError
from external_agents.money import to_micros, to_usd
from external_agents.nodes.base import ExternalAgentNode, dependency, value
from external_agents.nodes.platforms import get_adapter, validate_platform_config
from external_agents.nodes.platforms.auth import validate_auth_config
from external_agents.nodes.platforms.base import DeliveryOptions
from external_agents.nodes.platforms.webhook_url import check_webhook_url
from external_agents.request_models import parse, reject_unstorable
from external_agents.stores import agents as agent_store

# Secrets that some platforms take in platform_config (an adapter's `secret_fields`, such as telegram's bot
# token) are moved into the encrypted envelope and shown as MASK; sending MASK back keeps the stored secret.
MASK = "***"


@dataclass(frozen=True)
class AgentDefaults:
    """Limits an agent gets when its registration leaves them out (the EXTERNAL_AGENT_DEFAULT_* settings)."""

    monthly_budget: float
    daily_budget: float
    cost_per_execution: float
    per_minute: int
    per_hour: int
    per_day: int

    def by_limit(self) -> dict[str, float | int]:
        """The defaults by the limit field they fill in; a limit not named here has no default (no limit)."""
        return {
            "max_monthly_cost": self.monthly_budget,
            "max_daily_cost": self.daily_budget,
            "cost_per_execution": self.cost_per_execution,
            "requests_per_minute": self.per_minute,
            "requests_per_hour": self.per_hour,
            "requests_per_day": self.per_day,
        }


def present_agent(row: dict[str, Any], *, month_spent_micros: int | None = None) -> dict[str, Any]:
    """The agent as every channel shows it: no credential, ever."""
    agent = {
        "id": row["id"],
        "name": row["name"],
        "description": row["description"],
        "platform": row["platform"],
        "platform_config": row["platform_config"],
        "auth_config": {**row["auth_config"], "credentials": MASK},
        **present_limits(row),
        "organization_id": row["organization_id"],
        "created_by": row["created_by"],
        "created_at": row["created_at"].isoformat(),
        "updated_at": row["updated_at"].isoformat() if row["updated_at"] else None,
    }
    if month_spent_micros is not None:
        limit = row["max_monthly_cost"]
        agent["current_monthly_cost"] = to_usd(month_spent_micros)
        agent["usage_percentage"] = round(month_spent_micros / to_micros(limit) * 100, 2) if limit else 0.0
    return agent


def _split_platform_config(
    platform: str,
    platform_config: dict[str, Any],
    options: DeliveryOptions,
    *,
    stored_secrets: dict[str, Any] | None = None,
) -> tuple[dict[str, Any], dict[str, Any]]:
    """Validate a platform config; return what is stored in clear and the secrets to encrypt."""
    reject_unstorable(platform_config, "platform_config")
    secret_fields = get_adapter(platform).secret_fields
    given = dict(platform_config)
    for field in secret_fields:
        if given.get(field) == MASK:
            if not stored_secrets or field not in stored_secrets:
                raise ValidationError(f"platform_config.{field}: '{MASK}' keeps a stored secret, and none is stored")
            given[field] = stored_secrets[field]
    config = validate_platform_config(platform, given, options=options)
    secrets = {field: config[field] for field in secret_fields if field in config}
    return {**config, **dict.fromkeys(secrets, MASK)}, secrets


def _auth_config(auth_config: dict[str, Any], options: DeliveryOptions) -> tuple[str, dict[str, Any], dict[str, Any]]:
    auth_type, settings, credentials = validate_auth_config(auth_config)
    token_url = settings.get("token_url") or credentials.get("token_url")
    if isinstance(token_url, str):
        check_webhook_url(
            token_url,
            allow_private=options.allow_private_webhooks,
            allowed_domains=options.allowed_webhook_domains,
            field="auth_config.credentials.token_url",
        )
    return auth_type, settings, credentials


def _seal(cipher: CredentialCipher, *, auth: dict[str, Any], platform: dict[str, Any]) -> bytes:
    return cipher.encrypt({"auth": auth, "platform": platform})


def build_agent_row(
    body: dict[str, Any],
    *,
    caller: dict[str, Any],
    cipher: CredentialCipher,
    defaults: AgentDefaults,
    options: DeliveryOptions,
) -> dict[str, Any]:
    spec = parse(AgentCreate, body)
    reject_unstorable(body)
    platform_config, platform_secrets = _split_platform_config(spec.platform, spec.platform_config, options)
    auth_type, auth_settings, credentials = _auth_config(spec.auth_config, options)
    return {
        "id": str(uuid.uuid4()),
        "name": spec.name,
        "description": spec.description,
        "platform": spec.platform,
        "platform_config": platform_config,
        "auth_config": {"auth_type": auth_type, **auth_settings},
        "encrypted_credentials": _seal(cipher, auth=credentials, platform=platform_secrets),
        **_with_defaults(limit_values(spec), defaults.by_limit()),
        "organization_id": caller["organization_id"],
        "created_by": caller["api_key_id"],
        "created_at": datetime.now(UTC),
    }


def _with_defaults(given: dict[str, Any], defaults: dict[str, Any]) -> dict[str, Any]:
    return {name: defaults.get(name) if value is None else value for name, value in given.items()}


def build_agent_changes(
    body: dict[str, Any], *, current: dict[str, Any], cipher: CredentialCipher, options: DeliveryOptions
) -> tuple[dict[str, Any], bool]:
    """The column values a PATCH changes, and whether it replaced the credentials."""
    update = parse(AgentUpdate, body)
    reject_unstorable(body)
    changes: dict[str, Any] = {
        field: getattr(update, field)
        for field in update.model_fields_set
        if field not in ("platform_config", "auth_config")
    }
    # null clears a description or an execution limit; no other field may be emptied.
    for field in (f for f in changes if f not in CLEARABLE_FIELDS):
        if changes[field] is None:
            raise ValidationError(f"{field}: must not be null")
    if update.platform_config is None and update.auth_config is None:
        return changes, False
    sealed = cipher.decrypt(current["encrypted_credentials"]) if current["encrypted_credentials"] else {}
    auth_secrets, platform_secrets = sealed.get("auth", {}), sealed.get("platform", {})
    if update.platform_config is not None:
        config, platform_secrets = _split_platform_config(
            current["platform"], update.platform_config, options, stored_secrets=platform_secrets
        )
        changes["platform_config"] = config
    if update.auth_config is not None:
        auth_type, auth_settings, auth_secrets = _auth_config(update.auth_config, options)
        changes["auth_config"] = {"auth_type": auth_type, **auth_settings}
    changes["encrypted_credentials"] = _seal(cipher, auth=auth_secrets, platform=platform_secrets)
    return changes, update.auth_config is not None


def audit_event(event_type: str, caller: dict[str, Any], agent_id: str, details: dict[str, Any]) -> dict[str, Any]:
    return {
        "event_type": event_type,
        "organization_id": caller["organization_id"],
        "actor_id": caller["api_key_id"],
        "resource_type": "external_agent",
        "resource_id": agent_id,
        "details": details,
    }


def _not_found(agent_id: str) -> NotFoundError:
    return NotFoundError(f"External agent '{agent_id}' not found")


@register_node()
class CreateAgentNode(ExternalAgentNode):
    """Validate a registration, encrypt its credentials and store the agent."""

    def get_parameters(self) -> dict[str, Any]:
        return {
            "engine": dependency("engine", "SQLAlchemy AsyncEngine"),
            "cipher": dependency("cipher", "CredentialCipher"),
            "defaults": dependency("defaults", "AgentDefaults"),
            "options": dependency("options", "DeliveryOptions: timeouts, retries, webhook URL rules"),
            "caller": value("caller", "{api_key_id, organization_id}"),
            "body": value("body", "the registration request"),
        }

    async def async_run(self, **kw: Any) -> dict[str, Any]:
        row = build_agent_row(
            kw["body"], caller=kw["caller"], cipher=kw["cipher"], defaults=kw["defaults"], options=kw["options"]
        )
        stored = await agent_store.insert_agent(kw["engine"], row)
        event = audit_event(
            "external_agent.created",
            kw["caller"],
            stored["id"],
            {"name": stored["name"], "platform": stored["platform"], "auth_type": stored["auth_config"]["auth_type"]},
        )
        return {"agent": present_agent(stored), "audit_events": [event]}


@register_node()
class GetAgentNode(ExternalAgentNode):
    """Load one agent of the caller's organisation (another organisation's agent is not found)."""

    def get_parameters(self) -> dict[str, Any]:
        return {
            "engine": dependency("engine", "SQLAlchemy AsyncEngine"),
            "caller": value("caller", "{api_key_id, organization_id}"),
            "agent_id": value("agent_id", "the agent's id"),
        }

    async def async_run(self, **kw: Any) -> dict[str, Any]:
        row = await agent_store.get_agent(
            kw["engine"], organization_id=kw["caller"]["organization_id"], agent_id=kw["agent_id"]
        )
        if row is None:
            raise _not_found(kw["agent_id"])
        return {"agent": present_agent(row)}


@register_node()
class ListAgentsNode(ExternalAgentNode):
    """One page of the organisation's agents with this month's spend."""

    def get_parameters(self) -> dict[str, Any]:
        return {
            "engine": dependency("engine", "SQLAlchemy AsyncEngine"),
            "caller": value("caller", "{api_key_id, organization_id}"),
            "page": value("page", "1-based page number", required=False, default=1),
            "limit": value("limit", "page size, at most 100", required=False, default=20),
            "platform": value("platform", "only this platform", required=False),
            "search": value("search", "text in name or description", required=False),
        }

    async def async_run(self, **kw: Any) -> dict[str, Any]:
        page, limit = kw["page"], kw["limit"]
        rows, total = await agent_store.list_agents(
            kw["engine"],
            organization_id=kw["caller"]["organization_id"],
            page=page,
            limit=limit,
            platform=kw.get("platform"),
            search=kw.get("search"),
        )
        items = [present_agent(r, month_spent_micros=r["month_spent_micros"]) for r in rows]
        return {
            "page_of_agents": {
                "items": items,
                "total": total,
                "page": page,
                "limit": limit,
                "has_more": page * limit < total,
            }
        }


@register_node()
class UpdateAgentNode(ExternalAgentNode):
    """Apply a partial update; new credentials are encrypted in place of the old ones."""

    def get_parameters(self) -> dict[str, Any]:
        return {
            "engine": dependency("engine", "SQLAlchemy AsyncEngine"),
            "cipher": dependency("cipher", "CredentialCipher"),
            "options": dependency("options", "DeliveryOptions: timeouts, retries, webhook URL rules"),
            "caller": value("caller", "{api_key_id, organization_id}"),
            "agent_id": value("agent_id", "the agent's id"),
            "body": value("body", "the fields to change"),
        }

    async def async_run(self, **kw: Any) -> dict[str, Any]:
        organization_id = kw["caller"]["organization_id"]
        current = await agent_store.get_agent(kw["engine"], organization_id=organization_id, agent_id=kw["agent_id"])
        if current is None:
            raise _not_found(kw["agent_id"])
        changes, rotated = build_agent_changes(kw["body"], current=current, cipher=kw["cipher"], options=kw["options"])
        row = await agent_store.update_agent(
            kw["engine"], organization_id=organization_id, agent_id=kw["agent_id"], values=changes
        )
        if row is None:
            raise _not_found(kw["agent_id"])
        details = {"fields": sorted(f for f in changes if f != "encrypted_credentials"), "credentials_rotated": rotated}
        return {
            "agent": present_agent(row),
            "audit_events": [audit_event("external_agent.updated", kw["caller"], row["id"], details)],
        }


@register_node()
class DeleteAgentNode(ExternalAgentNode):
    """Delete an agent; its lineage and billing rows stay."""

    def get_parameters(self) -> dict[str, Any]:
        return {
            "engine": dependency("engine", "SQLAlchemy AsyncEngine"),
            "caller": value("caller", "{api_key_id, organization_id}"),
            "agent_id": value("agent_id", "the agent's id"),
        }

    async def async_run(self, **kw: Any) -> dict[str, Any]:
        organization_id = kw["caller"]["organization_id"]
        current = await agent_store.get_agent(kw["engine"], organization_id=organization_id, agent_id=kw["agent_id"])
        if current is None or not await agent_store.delete_agent(
            kw["engine"], organization_id=organization_id, agent_id=kw["agent_id"]
        ):
            raise _not_found(kw["agent_id"])
        details = {"name": current["name"], "platform": current["platform"]}
        return {
            "deleted_agent_id": current["id"],
            "audit_events": [audit_event("external_agent.deleted", kw["caller"], current["id"], details)],
        }
