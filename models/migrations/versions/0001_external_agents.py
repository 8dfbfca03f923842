"""The External Agents feature: its tables and indexes, and `external_agent_id` on the product's billing_usage.

Every table, column and index comes from `models.METADATA` (the model declarations), so this revision states
no column itself. It is idempotent in both directions: upgrade creates only the objects the database lacks,
so it finishes an earlier attempt that stopped half-way instead of failing with "table already exists", and
downgrade drops only the feature's objects that exist, keeping the billing_usage table and its rows.

Revision ID: 0001_external_agents
Revises:
Create Date: 2026-11-24
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import context, op

from models import METADATA
from models.migrations.objects import Kind, existing, metadata_index, schema_objects

revision: str = "0001_external_agents"
down_revision: str | Sequence[str] | None = None
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def _database() -> sa.Connection:
    # The real connection, also in a dry run, where `op.get_bind()` only records SQL.
    return context.config.attributes["connection"]


def _step(message: str) -> None:
    if context.is_offline_mode():
        # A dry run: the step becomes a comment just above the SQL it stands for.
        op.get_context().impl.static_output(f"-- {message}")
    else:
        context.config.attributes["report"](f"✅ {message}")


def upgrade() -> None:
    present = existing(_database())
    created_tables: set[str] = set()
    for schema_object in schema_objects():
        if schema_object in present or (schema_object.table in created_tables and schema_object.kind is Kind.COLUMN):
            continue
        table = METADATA.tables[schema_object.table]
        if schema_object.kind is Kind.TABLE:
            _step(f"Creating table: {table.name}")
            # The table's indexes are separate steps, so that each is reported and created only when missing.
            op.execute(sa.schema.CreateTable(table))
            created_tables.add(table.name)
        elif schema_object.kind is Kind.COLUMN:
            _step(f"Extending table: {table.name} (adding {schema_object.name} column)")
            # A Column belongs to one Table; `_copy()` is how SQLAlchemy's own `Table.to_metadata()` detaches it.
            op.add_column(table.name, table.c[schema_object.name]._copy())
        else:
            _step(f"Creating index: {schema_object.name}")
            op.execute(sa.schema.CreateIndex(metadata_index(schema_object)))


def downgrade() -> None:
    found = existing(_database())
    present = [o for o in schema_objects() if o.owned and o in found]
    dropped_tables = {o.table for o in present if o.kind is Kind.TABLE}
    for schema_object in reversed(present):
        if schema_object.kind is Kind.TABLE:
            _step(f"Dropping table: {schema_object.name}")
            op.drop_table(schema_object.name)
    # What remains is on the kept billing_usage table; SQLite refuses to drop a column that an index uses.
    for schema_object in reversed(present):
        if schema_object.kind is Kind.INDEX and schema_object.table not in dropped_tables:
            _step(f"Dropping index: {schema_object.name}")
            op.drop_index(schema_object.name, table_name=schema_object.table)
    for schema_object in present:
        if schema_object.kind is Kind.COLUMN:
            _step(f"Dropping column: {schema_object.table}.{schema_object.name}")
            op.drop_column(schema_object.table, schema_object.name)
