"""`api_keys`: callers' keys, stored as SHA-256 hashes, each belonging to one organisation with permissions."""

from __future__ import annotations

from datetime import datetime
from typing import Annotated

from external_agents.models.column_types import JSONB, TIMESTAMPTZ, varchar
from external_agents.models.registry import PRIMARY_KEY, SERVER_NOW, Column, Index, schema_db


@schema_db.model
class ApiKey:
    __tablename__ = "api_keys"
    __indexes__ = (Index("idx_api_keys_org_id", ("organization_id",)),)

    id: Annotated[str, varchar(), PRIMARY_KEY]
    organization_id: Annotated[str, varchar()]
    name: Annotated[str, varchar()]
    key_hash: Annotated[str, varchar(64), Column(unique=True)]
    key_prefix: Annotated[str, varchar(32)]
    permissions: Annotated[list, JSONB]
    created_by: Annotated[str | None, varchar()] = None
    created_at: Annotated[datetime, TIMESTAMPTZ, SERVER_NOW]
    revoked_at: Annotated[datetime | None, TIMESTAMPTZ] = None
