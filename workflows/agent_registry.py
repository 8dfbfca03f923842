"""Workflows of the agent registry, built once at start-up: each operation is its node plus the audit node."""

from __future__ import annotations

from dataclasses import dataclass

from kailash.workflow import Workflow
from kailash.workflow.builder import WorkflowBuilder
from sqlalchemy.ext.asyncio import AsyncEngine

# Importing a node module registers its nodes with Kailash, so the builder can name them.
import external_agents.nodes.agents
import external_agents.nodes.audit
import external_agents.nodes.governance.status  # noqa: F401
from external_agents.credential_cipher import CredentialCipher
from external_agents.nodes.agents import AgentDefaults
from external_agents.nodes.platforms.base import DeliveryOptions


@dataclass(frozen=True)
class RegistryWorkflows:
    create: Workflow
    get: Workflow
    list: Workflow
    update: Workflow
    delete: Workflow


def _with_audit(node_type: str, node_id: str, config: dict, engine: AsyncEngine, name: str) -> Workflow:
    builder = WorkflowBuilder()
    builder.add_node(node_type, node_id, config)
    builder.add_node("RecordAuditNode", "audit", {"engine": engine})
    builder.add_connection(node_id, "audit_events", "audit", "audit_events")
    return builder.build(name=name)


def _single(node_type: str, node_id: str, config: dict, name: str) -> Workflow:
    builder = WorkflowBuilder()
    builder.add_node(node_type, node_id, config)
    return builder.build(name=name)


def _get_with_governance(engine: AsyncEngine) -> Workflow:
    builder = WorkflowBuilder()
    builder.add_node("GetAgentNode", "get_agent", {"engine": engine})
    builder.add_node("AgentGovernanceNode", "governance", {"engine": engine})
    builder.add_connection("get_agent", "agent", "governance", "agent")
    return builder.build(name="get_external_agent")


def build_governance_status_workflow(
    *, engine: AsyncEngine, limiter: object, policy_cache: object, thresholds: object
) -> Workflow:
    builder = WorkflowBuilder()
    builder.add_node("GetAgentNode", "get_agent", {"engine": engine})
    builder.add_node(
        "GovernanceStatusNode",
        "status",
        {"engine": engine, "limiter": limiter, "policy_cache": policy_cache, "thresholds": thresholds},
    )
    builder.add_connection("get_agent", "agent", "status", "agent")
    return builder.build(name="external_agent_governance_status")


def build_registry_workflows(
    *, engine: AsyncEngine, cipher: CredentialCipher, defaults: AgentDefaults, options: DeliveryOptions
) -> RegistryWorkflows:
    return RegistryWorkflows(
        create=_with_audit(
            "CreateAgentNode",
            "create_agent",
            {"engine": engine, "cipher": cipher, "defaults": defaults, "options": options},
            engine,
            "create_external_agent",
        ),
        get=_get_with_governance(engine),
        list=_single("ListAgentsNode", "list_agents", {"engine": engine}, "list_external_agents"),
        update=_with_audit(
            "UpdateAgentNode",
            "update_agent",
            {"engine": engine, "cipher": cipher, "options": options},
            engine,
            "update_external_agent",
        ),
        delete=_with_audit("DeleteAgentNode", "delete_agent", {"engine": engine}, engine, "delete_external_agent"),
    )
