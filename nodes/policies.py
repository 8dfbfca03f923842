"""Nodes of the policy API: create, read, list, update and delete an organisation's ABAC policies.

Every change drops the organisation's compiled policies on every instance (PolicyCache.invalidate).
"""

from __future__ import annotations

import uuid
from datetime import UTC, datetime
from typing import Any

from kailash.nodes.base import register_node

from external_agents.errors import NotFoundError, ValidationError
from external_agents.nodes.base import ExternalAgentNode, dependency, value
from external_agents.nodes.governance.policy_engine import validate_policy_fields
from external_agents.request_models import reject_unstorable
from external_agents.stores import agents as agent_store
from external_agents.stores import policies as policy_store

WRITABLE = ("name", "description", "effect", "priority", "enabled", "external_agent_id", "conditions")


def present_policy(row: dict[str, Any]) -> dict[str, Any]:
    return {
        "policy_id": row["id"],
        "organization_id": row["organization_id"],
        "name": row["name"],
        "description": row["description"],
        "effect": row["effect"],
        "priority": row["priority"],
        "enabled": row["enabled"],
        "external_agent_id": row["external_agent_id"],
        "conditions": row["conditions"],
        "created_by": row["created_by"],
        "created_at": row["created_at"].isoformat(),
        "updated_at": row["updated_at"].isoformat() if row["updated_at"] else None,
    }


async def checked_fields(engine: Any, body: Any, *, organization_id: str, partial: bool) -> dict[str, Any]:
    if not isinstance(body, dict):
        raise ValidationError("Request body must be a JSON object")
    unknown = sorted(set(body) - set(WRITABLE))
    if unknown:
        raise ValidationError(f"{unknown[0]}: unknown field; expected any of: {', '.join(WRITABLE)}")
    reject_unstorable(body)
    fields = validate_policy_fields(body, partial=partial)
    agent_id = fields.get("external_agent_id")
    if agent_id is not None and (
        not isinstance(agent_id, str)
        or await agent_store.get_agent(engine, organization_id=organization_id, agent_id=agent_id) is None
    ):
        raise ValidationError(f"external_agent_id: no external agent {agent_id!r} in this organization")
    return fields


def policy_event(event_type: str, caller: dict[str, Any], policy: dict[str, Any]) -> dict[str, Any]:
    return {
        "event_type": event_type,
        "organization_id": caller["organization_id"],
        "actor_id": caller["api_key_id"],
        "resource_type": "policy",
        "resource_id": policy["id"],
        "details": {"name": policy["name"], "effect": policy["effect"]},
    }


def _not_found(policy_id: str) -> NotFoundError:
    return NotFoundError(f"Policy '{policy_id}' not found")


def _parameters(*extra: str) -> dict[str, Any]:
    parameters = {
        "engine": dependency("engine", "SQLAlchemy AsyncEngine"),
        "policy_cache": dependency("policy_cache", "PolicyCache, invalidated on change"),
        "caller": value("caller", "{api_key_id, organization_id}"),
    }
    descriptions = {"policy_id": "the policy's id", "body": "the policy fields"}
    for name in extra:
        parameters[name] = value(name, descriptions[name])
    return parameters


@register_node()
class CreatePolicyNode(ExternalAgentNode):
    def get_parameters(self) -> dict[str, Any]:
        return _parameters("body")

    async def async_run(self, **kw: Any) -> dict[str, Any]:
        caller, engine = kw["caller"], kw["engine"]
        organization_id = caller["organization_id"]
        fields = await checked_fields(engine, kw["body"], organization_id=organization_id, partial=False)
        row = await policy_store.insert_policy(
            engine,
            {
                "id": str(uuid.uuid4()),
                "organization_id": organization_id,
                "created_by": caller["api_key_id"],
                "created_at": datetime.now(UTC),
                **fields,
            },
        )
        await kw["policy_cache"].invalidate(organization_id)
        return {"policy": present_policy(row), "audit_events": [policy_event("policy.created", caller, row)]}


@register_node()
class GetPolicyNode(ExternalAgentNode):
    def get_parameters(self) -> dict[str, Any]:
        return _parameters("policy_id")

    async def async_run(self, **kw: Any) -> dict[str, Any]:
        row = await policy_store.get_policy(
            kw["engine"], organization_id=kw["caller"]["organization_id"], policy_id=kw["policy_id"]
        )
        if row is None:
            raise _not_found(kw["policy_id"])
        return {"policy": present_policy(row)}


@register_node()
class ListPoliciesNode(ExternalAgentNode):
    def get_parameters(self) -> dict[str, Any]:
        return {
            **_parameters(),
            "external_agent_id": value("external_agent_id", "only policies for this agent", required=False),
        }

    async def async_run(self, **kw: Any) -> dict[str, Any]:
        rows = await policy_store.list_policies(
            kw["engine"], organization_id=kw["caller"]["organization_id"], external_agent_id=kw.get("external_agent_id")
        )
        items = [present_policy(r) for r in rows]
        return {"policies": {"items": items, "total": len(items)}}


@register_node()
class UpdatePolicyNode(ExternalAgentNode):
    def get_parameters(self) -> dict[str, Any]:
        return _parameters("policy_id", "body")

    async def async_run(self, **kw: Any) -> dict[str, Any]:
        caller, engine = kw["caller"], kw["engine"]
        organization_id = caller["organization_id"]
        if await policy_store.get_policy(engine, organization_id=organization_id, policy_id=kw["policy_id"]) is None:
            raise _not_found(kw["policy_id"])
        fields = await checked_fields(engine, kw["body"], organization_id=organization_id, partial=True)
        row = await policy_store.update_policy(
            engine, organization_id=organization_id, policy_id=kw["policy_id"], values=fields
        )
        if row is None:
            raise _not_found(kw["policy_id"])
        await kw["policy_cache"].invalidate(organization_id)
        return {"policy": present_policy(row), "audit_events": [policy_event("policy.updated", caller, row)]}


@register_node()
class DeletePolicyNode(ExternalAgentNode):
    def get_parameters(self) -> dict[str, Any]:
        return _parameters("policy_id")

    async def async_run(self, **kw: Any) -> dict[str, Any]:
        caller, engine = kw["caller"], kw["engine"]
        organization_id = caller["organization_id"]
        row = await policy_store.get_policy(engine, organization_id=organization_id, policy_id=kw["policy_id"])
        if row is None or not await policy_store.delete_policy(
            engine, organization_id=organization_id, policy_id=kw["policy_id"]
        ):
            raise _not_found(kw["policy_id"])
        await kw["policy_cache"].invalidate(organization_id)
        return {"deleted_policy_id": row["id"], "audit_events": [policy_event("policy.deleted", caller, row)]}
