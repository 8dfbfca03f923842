"""The invoke body's `metadata`, kept with the invocation: the `invocation_lineage.metadata` column.

A separate revision so that a database migrated by an earlier release gains just this column; its rows keep
a NULL there (they were invoked before metadata was kept).

Revision ID: 0003_invocation_metadata
Revises: 0002_execution_limits
Create Date: 2026-12-06
"""

from __future__ import annotations

from collections.abc import Sequence

from external_agents.models.migrations.steps import create_missing, drop_present

revision: str = "0003_invocation_metadata"
down_revision: str | Sequence[str] | None = "0002_execution_limits"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    create_missing(revision)


def downgrade() -> None:
    drop_present(revision)
