"""`audit_log`: append-only record of who did what to which resource; details never hold a secret."""

from __future__ import annotations

from datetime import datetime
from typing import Annotated

from external_agents.models.column_types import JSONB, TIMESTAMPTZ, varchar
from external_agents.models.registry import PRIMARY_KEY, SERVER_NOW, Index, schema_db


@schema_db.model
class AuditLog:
    __tablename__ = "audit_log"
    __indexes__ = (
        Index("idx_audit_log_org_created", ("organization_id", "created_at")),
        Index("idx_audit_log_event_type", ("event_type",)),
    )

    id: Annotated[str, varchar(), PRIMARY_KEY]
    event_type: Annotated[str, varchar(100)]
    actor_id: Annotated[str | None, varchar()] = None
    organization_id: Annotated[str, varchar()]
    resource_type: Annotated[str | None, varchar(50)] = None
    resource_id: Annotated[str | None, varchar()] = None
    details: Annotated[dict | None, JSONB] = None
    created_at: Annotated[datetime, TIMESTAMPTZ, SERVER_NOW]
