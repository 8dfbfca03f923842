"""`external_agents`: an agent on an external platform, registered by an organisation (the seed's schema)."""

from __future__ import annotations

from datetime import datetime
from typing import Annotated

from external_agents.models.column_types import BYTEA, DOUBLE, INTEGER, JSONB, TEXT, TIMESTAMPTZ, varchar
from external_agents.models.registry import PRIMARY_KEY, SERVER_NOW, Index, schema_db


@schema_db.model
class ExternalAgent:
    __tablename__ = "external_agents"
    __indexes__ = (
        Index("idx_external_agents_org_id", ("organization_id",)),
        # Names are unique per organisation; the database enforces it so two concurrent creates cannot both win.
        Index("uq_external_agents_org_name", ("organization_id", "name"), unique=True),
    )

    id: Annotated[str, varchar(), PRIMARY_KEY]
    name: Annotated[str, varchar()]
    description: Annotated[str | None, TEXT] = None
    platform: Annotated[str, varchar(50)]
    platform_config: Annotated[dict, JSONB]
    auth_config: Annotated[dict, JSONB]
    encrypted_credentials: Annotated[bytes | None, BYTEA] = None
    max_monthly_cost: Annotated[float | None, DOUBLE] = None
    max_daily_cost: Annotated[float | None, DOUBLE] = None
    cost_per_execution: Annotated[float | None, DOUBLE] = None
    requests_per_minute: Annotated[int | None, INTEGER] = None
    requests_per_hour: Annotated[int | None, INTEGER] = None
    requests_per_day: Annotated[int | None, INTEGER] = None
    organization_id: Annotated[str, varchar()]
    created_by: Annotated[str, varchar()]
    created_at: Annotated[datetime, TIMESTAMPTZ, SERVER_NOW]
    updated_at: Annotated[datetime | None, TIMESTAMPTZ] = None
