"""Workflows of the policy API, built once: each operation is its node, plus the audit node for changes."""

from __future__ import annotations

from dataclasses import dataclass

from kailash.workflow import Workflow
from kailash.workflow.builder import WorkflowBuilder
from sqlalchemy.ext.asyncio import AsyncEngine

# Importing a node module registers its nodes with Kailash, so the builder can name them.
import external_agents.nodes.audit
import external_agents.nodes.policies  # noqa: F401
from external_agents.nodes.governance.policy_cache import PolicyCache


@dataclass(frozen=True)
class PolicyWorkflows:
    create: Workflow
    get: Workflow
    list: Workflow
    update: Workflow
    delete: Workflow


def _workflow(node_type: str, *, engine: AsyncEngine, policy_cache: PolicyCache, audited: bool) -> Workflow:
    builder = WorkflowBuilder()
    builder.add_node(node_type, "policy", {"engine": engine, "policy_cache": policy_cache})
    if audited:
        builder.add_node("RecordAuditNode", "audit", {"engine": engine})
        builder.add_connection("policy", "audit_events", "audit", "audit_events")
    return builder.build(name=node_type.removesuffix("Node"))


def build_policy_workflows(*, engine: AsyncEngine, policy_cache: PolicyCache) -> PolicyWorkflows:
    def make(node_type: str, audited: bool) -> Workflow:
        return _workflow(node_type, engine=engine, policy_cache=policy_cache, audited=audited)

    return PolicyWorkflows(
        create=make("CreatePolicyNode", True),
        get=make("GetPolicyNode", False),
        list=make("ListPoliciesNode", False),
        update=make("UpdatePolicyNode", True),
        delete=make("DeletePolicyNode", True),
    )
