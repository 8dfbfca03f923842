"""`invocation_lineage`: one row per invocation, with the five identity layers, outcome, cost, timings and the
caller's metadata."""

from __future__ import annotations

from datetime import datetime
from typing import Annotated

from external_agents.models.column_types import DOUBLE, INTEGER, JSON_EXACT, TEXT, TIMESTAMPTZ, varchar
from external_agents.models.registry import PRIMARY_KEY, SERVER_NOW, Column, Index, schema_db

# Added after the first releases (models/migrations/versions/0003_invocation_metadata.py).
METADATA_REVISION = "0003_invocation_metadata"
# Added for crash consistency (models/migrations/versions/0004_crash_consistency.py).
CRASH_CONSISTENCY_REVISION = "0004_crash_consistency"
# The status of a row written with its budget reservation before delivery and completed after it.
PENDING = "pending"


@schema_db.model
class InvocationLineage:
    __tablename__ = "invocation_lineage"
    __indexes__ = (
        Index("idx_invocation_lineage_user_email", ("external_user_email",)),
        Index("idx_invocation_lineage_agent_id", ("external_agent_id",)),
        Index("idx_invocation_lineage_timestamp", ("request_timestamp",)),
        Index("idx_invocation_lineage_parent_id", ("parent_invocation_id",)),
        Index("idx_invocation_lineage_trace_id", ("trace_id",), unique=True),
        Index("idx_invocation_lineage_session_id", ("external_session_id",)),
        Index("idx_invocation_lineage_org_timestamp", ("organization_id", "request_timestamp")),
        # The sweeper's lookup: pending rows whose lease has passed.
        Index(
            "idx_invocation_lineage_status_lease",
            ("status", "lease_expires_at"),
            revision=CRASH_CONSISTENCY_REVISION,
        ),
    )

    id: Annotated[str, varchar(), PRIMARY_KEY]
    # The external user.
    external_user_id: Annotated[str | None, varchar()] = None
    external_user_email: Annotated[str | None, varchar()] = None
    external_user_name: Annotated[str | None, varchar()] = None
    # The external system the call came from.
    external_system: Annotated[str | None, varchar()] = None
    external_session_id: Annotated[str | None, varchar()] = None
    external_trace_id: Annotated[str | None, varchar()] = None
    external_context: Annotated[dict | None, JSON_EXACT] = None
    # Our caller.
    api_key_id: Annotated[str | None, varchar()] = None
    organization_id: Annotated[str, varchar()]
    # The agent invoked.
    external_agent_id: Annotated[str | None, varchar()] = None
    external_agent_name: Annotated[str | None, varchar()] = None
    platform: Annotated[str | None, varchar(50)] = None
    # Tracing.
    trace_id: Annotated[str, varchar()]
    parent_invocation_id: Annotated[str | None, varchar()] = None
    workflow_id: Annotated[str | None, varchar()] = None
    # What happened.
    input: Annotated[dict | None, JSON_EXACT] = None
    output: Annotated[dict | None, JSON_EXACT] = None
    status: Annotated[str, varchar(50)]
    denial_reason: Annotated[str | None, TEXT] = None
    cost_usd: Annotated[float | None, DOUBLE] = None
    duration_ms: Annotated[float | None, DOUBLE] = None
    webhook_delivery_status: Annotated[str | None, varchar(50)] = None
    webhook_delivery_error: Annotated[str | None, TEXT] = None
    webhook_attempts: Annotated[int | None, INTEGER] = None
    request_timestamp: Annotated[datetime, TIMESTAMPTZ, SERVER_NOW]
    response_timestamp: Annotated[datetime | None, TIMESTAMPTZ] = None
    # The invoke body's free-form `metadata`, kept exactly. Here and below, the later revisions' columns in the
    # order their revision adds them (by name), so a migrated table and a fresh one list columns alike.
    metadata: Annotated[dict | None, JSON_EXACT, Column(revision=METADATA_REVISION)] = None
    # A pending row's owner (the process that reserved and is delivering) and the time after which any
    # instance's sweeper may settle it as interrupted.
    instance_id: Annotated[str | None, varchar(), Column(revision=CRASH_CONSISTENCY_REVISION)] = None
    lease_expires_at: Annotated[datetime | None, TIMESTAMPTZ, Column(revision=CRASH_CONSISTENCY_REVISION)] = None
    # Why the record differs from the plain case, e.g. "reported cost refused: ...".
    record_note: Annotated[str | None, TEXT, Column(revision=CRASH_CONSISTENCY_REVISION)] = None
    # The platform's own reported cost when it differs from what was billed (SPEC §3).
    reported_cost_usd: Annotated[float | None, DOUBLE, Column(revision=CRASH_CONSISTENCY_REVISION)] = None
