"""The tables of the feature: DataFlow declarations, and the SQLAlchemy `METADATA` derived from them."""

from external_agents.models import (  # noqa: F401  (importing a model module registers it with schema_db)
    api_key,
    audit_log,
    billing_usage,
    budget_counter,
    external_agent,
    external_agent_limits,
    invocation_lineage,
    policy,
)
from external_agents.models.registry import build_metadata

METADATA = build_metadata()
TABLES = METADATA.tables
