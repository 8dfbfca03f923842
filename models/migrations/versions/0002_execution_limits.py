"""Per-agent daily and monthly execution limits: the `external_agent_limits` table.

A separate revision so that a database migrated by the first release gains just this table.

Revision ID: 0002_execution_limits
Revises: 0001_external_agents
Create Date: 2026-11-24
"""

from __future__ import annotations

from collections.abc import Sequence

from external_agents.models.migrations.steps import create_missing, drop_present

revision: str = "0002_execution_limits"
down_revision: str | Sequence[str] | None = "0001_external_agents"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    create_missing(revision)


def downgrade() -> None:
    drop_present(revision)
