"""Crash consistency: pending lineage rows with an owner and a lease, the platform's reported cost and a note
on the record, and a once-per-period claim for cost-overrun alerts.

An invocation's lineage row is now written `pending` with its budget reservation, before delivery, so a
process that dies mid-delivery leaves a row that any instance's sweeper settles once its lease has passed
(the status and lease index). Rows recorded before this revision keep NULL in the new lineage columns;
existing counters get `overrun_alert_sent` false.

Revision ID: 0004_crash_consistency
Revises: 0003_invocation_metadata
Create Date: 2026-12-06
"""

from __future__ import annotations

from collections.abc import Sequence

from external_agents.models.migrations.steps import create_missing, drop_present

revision: str = "0004_crash_consistency"
down_revision: str | Sequence[str] | None = "0003_invocation_metadata"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    create_missing(revision)


def downgrade() -> None:
    drop_present(revision)
