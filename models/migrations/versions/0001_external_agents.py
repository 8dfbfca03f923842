"""The External Agents feature: its tables and indexes, and `external_agent_id` on the product's billing_usage.

The objects are those whose model does not name a later revision (see models/migrations/objects.py);
steps.py creates only the missing ones and drops only the present ones.

Revision ID: 0001_external_agents
Revises:
Create Date: 2026-11-24
"""

from __future__ import annotations

from collections.abc import Sequence

from external_agents.models.migrations.steps import create_missing, drop_present

revision: str = "0001_external_agents"
down_revision: str | Sequence[str] | None = None
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    create_missing(revision)


def downgrade() -> None:
    drop_present(revision)
