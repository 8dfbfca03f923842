"""`policies`: ABAC policies of an organisation, for one agent or (external_agent_id null) all of them."""

from __future__ import annotations

from datetime import datetime
from typing import Annotated

from external_agents.models.column_types import BOOLEAN, INTEGER, JSONB, TEXT, TIMESTAMPTZ, varchar
from external_agents.models.registry import PRIMARY_KEY, SERVER_NOW, Index, schema_db


@schema_db.model
class Policy:
    __tablename__ = "policies"
    __indexes__ = (Index("idx_policies_org_id", ("organization_id",)),)

    id: Annotated[str, varchar(), PRIMARY_KEY]
    organization_id: Annotated[str, varchar()]
    name: Annotated[str, varchar()]
    description: Annotated[str | None, TEXT] = None
    effect: Annotated[str, varchar(10)]
    priority: Annotated[int, INTEGER]
    enabled: Annotated[bool, BOOLEAN]
    external_agent_id: Annotated[str | None, varchar()] = None
    conditions: Annotated[list, JSONB]
    created_by: Annotated[str, varchar()]
    created_at: Annotated[datetime, TIMESTAMPTZ, SERVER_NOW]
    updated_at: Annotated[datetime | None, TIMESTAMPTZ] = None
