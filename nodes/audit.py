"""The node that appends audit events produced upstream to `audit_log`."""

from __future__ import annotations

from typing import Any

from kailash.nodes.base import register_node

from external_agents.nodes.base import ExternalAgentNode, dependency, value
from external_agents.stores.audit import audit_row, insert_audit_rows


@register_node()
class RecordAuditNode(ExternalAgentNode):
    """Write each event `{event_type, organization_id, actor_id, resource_type, resource_id, details}`."""

    def get_parameters(self) -> dict[str, Any]:
        return {
            "engine": dependency("engine", "SQLAlchemy AsyncEngine"),
            "audit_events": value("audit_events", "events to record", required=False, default=None),
        }

    async def async_run(self, **kw: Any) -> dict[str, Any]:
        events = kw.get("audit_events") or []
        await insert_audit_rows(kw["engine"], [audit_row(**event) for event in events])
        return {"recorded": len(events)}
