"""Claiming an agent's cost-overrun alert: at most one per agent and UTC day, across instances.

Every overrun is audited; the alert is the operator's nudge, so one a day is enough. The claim is a
conditional UPDATE of the day's budget counter row (`overrun_alert_sent`), like the budget alerts' claim on
the month row (stores/budgets.py claim_alert): whichever instance flips the flag sends the alert.
"""

from __future__ import annotations

import sqlalchemy as sa
from sqlalchemy.ext.asyncio import AsyncEngine

from external_agents.models import TABLES

counters = TABLES["budget_counters"]


async def claim_overrun_alert(engine: AsyncEngine, *, day_id: str) -> bool:
    """True for exactly one caller per day row (one agent, one UTC day: a reservation's `day_id`); False for all
    others, and when the row is gone."""
    async with engine.begin() as connection:
        result = await connection.execute(
            counters.update()
            .where(counters.c.id == day_id, counters.c.overrun_alert_sent == sa.false())
            .values(overrun_alert_sent=True)
            .returning(counters.c.id)
        )
        return result.first() is not None
