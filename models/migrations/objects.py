"""The schema objects the feature installs, in the order they are created, and which of them exist.

Derived from `METADATA` when called, so nothing here restates a column: every table and index of the models,
plus the one column the feature adds to the product's existing `billing_usage` table. Revision 0001 walks
this list to create (or drop) only what is missing (or present), and `models.migrate` uses it to report a
half-applied installation.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from enum import StrEnum

import sqlalchemy as sa

from models import METADATA
from models.billing_usage import ADDED_COLUMN, BillingUsage

# The product's table that the feature extends; it is never the feature's to drop.
EXTENDED_TABLE: str = BillingUsage.__tablename__

# The seed's migration guide lists these first, in this order; every other table and index follows.
_SEED_TABLES = ("external_agents", "invocation_lineage", EXTENDED_TABLE)
_SEED_INDEXES = (
    "idx_external_agents_org_id",
    "idx_invocation_lineage_user_email",
    "idx_invocation_lineage_agent_id",
    "idx_invocation_lineage_timestamp",
)


class Kind(StrEnum):
    TABLE = "table"
    COLUMN = "column"
    INDEX = "index"


@dataclass(frozen=True)
class SchemaObject:
    kind: Kind
    table: str
    # The table's, the column's or the index's own name.
    name: str
    # Whether rollback removes it: everything but the extended table itself and its indexes that do not
    # involve the added column.
    owned: bool

    @property
    def label(self) -> str:
        """`table external_agents`, `column billing_usage.external_agent_id`, `index idx_...`."""
        qualified = f"{self.table}.{self.name}" if self.kind is Kind.COLUMN else self.name
        return f"{self.kind} {qualified}"


def _ordered(names: Iterable[str], first: tuple[str, ...]) -> list[str]:
    ordered = list(names)
    return sorted(ordered, key=lambda name: (first.index(name) if name in first else len(first), ordered.index(name)))


def schema_objects() -> tuple[SchemaObject, ...]:
    """Tables (the added column right after its table), then indexes: the seed's first, then by table and name."""
    tables = _ordered((table.name for table in METADATA.sorted_tables), _SEED_TABLES)
    objects: list[SchemaObject] = []
    for name in tables:
        objects.append(SchemaObject(Kind.TABLE, name, name, owned=name != EXTENDED_TABLE))
        if name == EXTENDED_TABLE:
            objects.append(SchemaObject(Kind.COLUMN, name, ADDED_COLUMN, owned=True))
    indexes = [
        (index.name, table_name, index)
        for table_name in tables
        for index in sorted(METADATA.tables[table_name].indexes, key=lambda index: str(index.name))
    ]
    by_name = {name: (table_name, index) for name, table_name, index in indexes}
    for name in _ordered((name for name, _, _ in indexes), _SEED_INDEXES):
        table_name, index = by_name[name]
        owned = table_name != EXTENDED_TABLE or ADDED_COLUMN in index.columns
        objects.append(SchemaObject(Kind.INDEX, table_name, name, owned=owned))
    return tuple(objects)


def metadata_index(schema_object: SchemaObject) -> sa.Index:
    """The METADATA index an INDEX object stands for."""
    return next(i for i in METADATA.tables[schema_object.table].indexes if i.name == schema_object.name)


def existing(connection: sa.Connection) -> frozenset[SchemaObject]:
    """The objects of `schema_objects()` that the connected database has."""
    inspector = sa.inspect(connection)
    tables = set(inspector.get_table_names())
    return frozenset(
        schema_object
        for schema_object in schema_objects()
        if schema_object.table in tables and schema_object.name in _names(inspector, schema_object)
    )


def _names(inspector: sa.Inspector, schema_object: SchemaObject) -> set[str]:
    # The inspector caches what it reflects, so asking once per object costs one query per table and kind.
    if schema_object.kind is Kind.TABLE:
        return {schema_object.table}
    if schema_object.kind is Kind.COLUMN:
        return {column["name"] for column in inspector.get_columns(schema_object.table)}
    return {str(index["name"]) for index in inspector.get_indexes(schema_object.table)}
