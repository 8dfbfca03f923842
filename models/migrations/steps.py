"""What every revision does: create the objects it owns that the database lacks, or drop those it has.

A revision's objects come from `models.METADATA` (see objects.py), so no revision states a column itself.
Both directions are idempotent: upgrade finishes an earlier attempt that stopped half-way instead of failing
with "table already exists", and downgrade drops only what exists, never the billing_usage table or its rows.
Each step is reported through the `report` callback, or, in a dry run, written as an SQL comment above the
SQL it stands for.
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import context, op

from external_agents.models import METADATA
from external_agents.models.migrations.objects import Kind, existing, metadata_index, schema_objects, table_as_created


def _database() -> sa.Connection:
    # The real connection, also in a dry run, where `op.get_bind()` only records SQL.
    return context.config.attributes["connection"]


def _step(message: str) -> None:
    if context.is_offline_mode():
        op.get_context().impl.static_output(f"-- {message}")
    else:
        context.config.attributes["report"](f"✅ {message}")


def create_missing(revision: str) -> None:
    """Create the revision's tables, column and indexes that do not exist yet, in creation order."""
    present = existing(_database())
    created_tables: set[str] = set()
    for schema_object in schema_objects(revision):
        if schema_object in present or (schema_object.table in created_tables and schema_object.kind is Kind.COLUMN):
            continue
        table = METADATA.tables[schema_object.table]
        if schema_object.kind is Kind.TABLE:
            _step(f"Creating table: {table.name}")
            # The table's indexes are separate steps, so that each is reported and created only when missing.
            op.execute(sa.schema.CreateTable(table_as_created(table)))
            created_tables.add(table.name)
        elif schema_object.kind is Kind.COLUMN:
            _step(f"Extending table: {table.name} (adding {schema_object.name} column)")
            # A Column belongs to one Table; `_copy()` is how SQLAlchemy's own `Table.to_metadata()` detaches it.
            op.add_column(table.name, table.c[schema_object.name]._copy())
        else:
            _step(f"Creating index: {schema_object.name}")
            op.execute(sa.schema.CreateIndex(metadata_index(schema_object)))


def drop_present(revision: str) -> None:
    """Drop the revision's owned objects that exist, in reverse creation order."""
    found = existing(_database())
    present = [o for o in schema_objects(revision) if o.owned and o in found]
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
