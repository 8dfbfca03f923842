"""`budget_counters`: spend and executions of one agent in one UTC day or month, in integer micro-dollars.

A reservation is one conditional UPDATE on this row (`spent + cost <= limit`), which is what makes budgets
exact under concurrency on any number of instances. A period's row is seeded from `billing_usage` when it is
first used, so the record of truth stays `billing_usage` and a lost counter is rebuilt from it.
"""

from __future__ import annotations

from datetime import datetime
from typing import Annotated

from external_agents.models.column_types import BIGINT, BOOLEAN, INTEGER, TIMESTAMPTZ, varchar
from external_agents.models.invocation_lineage import CRASH_CONSISTENCY_REVISION
from external_agents.models.registry import PRIMARY_KEY, SERVER_NOW, Column, schema_db


@schema_db.model
class BudgetCounter:
    __tablename__ = "budget_counters"

    # "<agent id>|day|2026-11-24" or "<agent id>|month|2026-11".
    id: Annotated[str, varchar(), PRIMARY_KEY]
    external_agent_id: Annotated[str, varchar()]
    spent_micros: Annotated[int, BIGINT]
    executions: Annotated[int, INTEGER]
    warning_sent: Annotated[bool, BOOLEAN]
    degraded_sent: Annotated[bool, BOOLEAN]
    created_at: Annotated[datetime, TIMESTAMPTZ, SERVER_NOW]
    # Claimed once per period by the instance that sends the cost-overrun alert.
    overrun_alert_sent: Annotated[bool, BOOLEAN, Column(revision=CRASH_CONSISTENCY_REVISION)] = False
