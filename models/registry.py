"""The DataFlow instance that holds the model declarations, and the SQLAlchemy schema derived from them.

Each table is declared once, as a DataFlow `@db.model` class whose fields are `Annotated[T, <SQLAlchemy
type>, <marker>...]`. DataFlow cannot emit varchar(n), double precision, bytea or timestamptz itself, and
its generated nodes rewrite SQL-looking text, so the project reads and writes through SQLAlchemy Core over
`METADATA`, which is derived here from DataFlow's registry: the declaration stays the single source of
truth for fields, and Alembic migrates from the same `METADATA`.
"""

from __future__ import annotations

import types
import typing
from dataclasses import dataclass
from typing import Annotated, Any, get_args, get_origin

import sqlalchemy as sa
from dataflow import DataFlow

# A registry only: no connection is made through this instance (auto-migration, caching and persistence
# are off), it just records the model classes and their fields.
schema_db = DataFlow(
    "sqlite:///:memory:",
    cache_enabled=False,
    enable_model_persistence=False,
    auto_migrate=False,
    migration_enabled=False,
)


@dataclass(frozen=True)
class Column:
    """Column options that a Python type cannot express: key, uniqueness, server default, and the migration
    revision that adds the column to a table an earlier revision created (None: the table's own)."""

    primary_key: bool = False
    unique: bool = False
    server_now: bool = False
    revision: str | None = None


@dataclass(frozen=True)
class Index:
    """A named index; `revision` is the migration revision that adds it to a table an earlier revision created
    (None: the table's own)."""

    name: str
    columns: tuple[str, ...]
    unique: bool = False
    revision: str | None = None


PRIMARY_KEY = Column(primary_key=True)
# The migration revision that creates a model's table, unless the model names a later one in `__revision__`.
FIRST_REVISION = "0001_external_agents"
SERVER_NOW = Column(server_now=True)


def _is_optional(python_type: Any) -> bool:
    return get_origin(python_type) in (typing.Union, types.UnionType) and type(None) in get_args(python_type)


def _column(name: str, hint: Any, fields: dict[str, Any]) -> sa.Column:
    if get_origin(hint) is not Annotated:
        raise TypeError(f"field {name} must be Annotated[T, <SQLAlchemy type>]")
    python_type, *extras = get_args(hint)
    sql_type = next(e for e in extras if isinstance(e, sa.types.TypeEngine))
    options = next((e for e in extras if isinstance(e, Column)), Column())
    field = fields[name]
    # DataFlow's rule, kept: a field is nullable only when it is Optional; a non-Optional field with a
    # default is NOT NULL and filled by the database.
    nullable = _is_optional(python_type) and not options.primary_key
    server_default = sa.func.now() if options.server_now else None
    if server_default is None and field.get("default") is not None and not isinstance(field["default"], dict):
        server_default = sa.literal(field["default"])
    return sa.Column(
        name,
        sql_type,
        primary_key=options.primary_key,
        nullable=nullable,
        unique=options.unique or None,
        server_default=server_default,
        info={"revision": options.revision} if options.revision else {},
    )


def build_metadata() -> sa.MetaData:
    """One `Table` per registered model, columns in declaration order, plus the model's `__indexes__`.

    Each table's `info["revision"]` names the migration revision that creates it (see models/migrations).
    """
    metadata = sa.MetaData()
    for model in schema_db.get_models().values():
        hints = typing.get_type_hints(model, include_extras=True)
        fields = schema_db.get_model_fields(model.__name__)
        table = sa.Table(
            model.__tablename__,
            metadata,
            *(_column(name, hints[name], fields) for name in model.__annotations__),
            info={"revision": getattr(model, "__revision__", FIRST_REVISION)},
        )
        for index in getattr(model, "__indexes__", ()):
            info = {"revision": index.revision} if index.revision else {}
            sa.Index(index.name, *(table.c[c] for c in index.columns), unique=index.unique, info=info)
    return metadata
