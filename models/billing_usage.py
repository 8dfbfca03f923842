"""`billing_usage`: the product's existing usage table, which this feature extends with `external_agent_id`.

Every billed invocation writes one row (its id is the invocation id); budget spend is computed from here.
An installation that already has the table keeps its rows; a fresh one gets it created.
"""

from __future__ import annotations

from datetime import datetime
from typing import Annotated

from external_agents.models.column_types import DOUBLE, TIMESTAMPTZ, varchar
from external_agents.models.registry import PRIMARY_KEY, SERVER_NOW, Index, schema_db

# The column this feature adds to an existing table; migrations and rollback name it.
ADDED_COLUMN = "external_agent_id"


@schema_db.model
class BillingUsage:
    __tablename__ = "billing_usage"
    __indexes__ = (Index("idx_billing_usage_agent_created", ("external_agent_id", "created_at")),)

    id: Annotated[str, varchar(), PRIMARY_KEY]
    organization_id: Annotated[str, varchar()]
    usage_type: Annotated[str, varchar(50)]
    quantity: Annotated[float, DOUBLE]
    cost_usd: Annotated[float, DOUBLE]
    created_at: Annotated[datetime, TIMESTAMPTZ, SERVER_NOW]
    external_agent_id: Annotated[str | None, varchar()] = None
