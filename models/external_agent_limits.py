"""`external_agent_limits`: an agent's optional daily and monthly execution limits (None: no limit).

A table of its own because the seed's migration guide fixes the columns of `external_agents`; an agent
without a row here has no execution limit. Added by migration revision 0002, after the first release.
"""

from __future__ import annotations

from datetime import datetime
from typing import Annotated

from external_agents.models.column_types import INTEGER, TIMESTAMPTZ, varchar
from external_agents.models.registry import PRIMARY_KEY, SERVER_NOW, schema_db


@schema_db.model
class ExternalAgentLimits:
    __tablename__ = "external_agent_limits"
    __revision__ = "0002_execution_limits"

    # The agent's id: one row per agent, deleted with it.
    external_agent_id: Annotated[str, varchar(), PRIMARY_KEY]
    daily_execution_limit: Annotated[int | None, INTEGER] = None
    monthly_execution_limit: Annotated[int | None, INTEGER] = None
    updated_at: Annotated[datetime, TIMESTAMPTZ, SERVER_NOW]
