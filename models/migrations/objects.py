"""The schema objects the feature installs, in the order they are created, and which of them exist.

Derived from `METADATA` when called, so nothing here restates a column: every table and index of the models,
the one column the feature adds to the product's existing `billing_usage` table, and each column or index a
later revision adds to one of the feature's tables (`column_revision`, an index's `info["revision"]`). Each
object belongs to the revision that creates its table (the table's `info["revision"]`), or, for such a column
or index, to the revision that adds it; a revision walks its own objects to create (or drop) only what is
missing (or present), and `models.migrate` uses the whole list to report a half-applied installation.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum

import sqlalchemy as sa

from external_agents.models import METADATA
from external_agents.models.billing_usage import ADDED_COLUMN, BillingUsage

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


@dataclass(frozen=True, kw_only=True)
class SchemaObject:
    kind: Kind
    table: str
    # The table's, the column's or the index's own name.
    name: str
    # Whether rollback removes it: everything but the extended table itself and its indexes that do not
    # involve the added column.
    owned: bool
    # The migration revision that creates it.
    revision: str

    @property
    def label(self) -> str:
        """`table external_agents`, `column billing_usage.external_agent_id`, `index idx_...`."""
        qualified = f"{self.table}.{self.name}" if self.kind is Kind.COLUMN else self.name
        return f"{self.kind} {qualified}"


def schema_objects(revision: str | None = None) -> tuple[SchemaObject, ...]:
    """In creation order, revision by revision: the seed's tables, then the seed's indexes, then the other tables,
    then the others' indexes.

    The added column comes right after its table; the rest follow METADATA's table order, indexes by name.
    With a `revision`, only the objects that revision creates.
    """
    ranked: list[tuple[tuple[int, int, str], SchemaObject]] = []
    for position, table in enumerate(METADATA.sorted_tables):
        name, made_by = table.name, table.info["revision"]
        key = (0, _SEED_TABLES.index(name), "") if name in _SEED_TABLES else (2, position, "")
        owned = name != EXTENDED_TABLE
        ranked.append((key, SchemaObject(kind=Kind.TABLE, table=name, name=name, owned=owned, revision=made_by)))
        if name == EXTENDED_TABLE:
            column = SchemaObject(kind=Kind.COLUMN, table=name, name=ADDED_COLUMN, owned=True, revision=made_by)
            ranked.append(((key[0], key[1], ADDED_COLUMN), column))
        for later in (c for c in table.c if column_revision(c, made_by) != made_by):
            column = SchemaObject(
                kind=Kind.COLUMN, table=name, name=later.name, owned=True, revision=column_revision(later, made_by)
            )
            ranked.append(((key[0], key[1], later.name), column))
        for index in table.indexes:
            index_name = str(index.name)
            key = (1, _SEED_INDEXES.index(index_name), "") if index_name in _SEED_INDEXES else (3, position, index_name)
            owned = name != EXTENDED_TABLE or ADDED_COLUMN in index.columns
            index_revision = str(index.info.get("revision", made_by))
            ranked.append(
                (key, SchemaObject(kind=Kind.INDEX, table=name, name=index_name, owned=owned, revision=index_revision))
            )
    # A revision's objects come after its predecessors'; revision ids begin with their sequence number.
    ranked.sort(key=lambda pair: (pair[1].revision, pair[0]))
    ordered = (schema_object for _, schema_object in ranked)
    return tuple(o for o in ordered if revision is None or o.revision == revision)


def column_revision(column: sa.Column[object], table_revision: str) -> str:
    """The revision that adds `column`: its own (models.registry.Column.revision), else its table's."""
    return str(column.info.get("revision", table_revision))


def table_as_created(table: sa.Table) -> sa.Table:
    """`table` as the revision that creates it creates it: without the columns later revisions add."""
    made_by = table.info["revision"]
    if all(column_revision(c, made_by) == made_by for c in table.c):
        return table
    # A Column belongs to one Table; `_copy()` is how SQLAlchemy's own `Table.to_metadata()` detaches it.
    kept = (c._copy() for c in table.c if column_revision(c, made_by) == made_by)
    return sa.Table(table.name, sa.MetaData(), *kept)


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
