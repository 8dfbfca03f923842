"""Versioned, reversible migrations of the feature's schema: the API behind the CLI's `migrate` command.

The seed's `python -m dataflow migrate` does not exist, and DataFlow's auto-migration neither records what it
did nor undoes it, so the schema is migrated with Alembic from `models.METADATA`, the SQLAlchemy schema
derived from the model declarations (one source of truth, no hand-kept DDL). This module runs Alembic's own
commands over one connection and transaction: `upgrade` (apply or finish a half-applied attempt), `status`
(revision and which objects exist) and `rollback` (remove exactly what the feature added), with a dry run
that prints the SQL instead. Progress goes through a `report` callback so the CLI decides how to show it.
"""

from __future__ import annotations

import io
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import sqlalchemy as sa
from alembic import command
from alembic.config import Config
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from sqlalchemy.pool import NullPool

from external_agents.models.migrations.objects import SchemaObject, existing, schema_objects
from external_agents.settings import Settings

Report = Callable[[str], None]
State = Literal["not_applied", "partial", "outdated", "applied"]

_SCRIPT_LOCATION = Path(__file__).with_name("migrations")
# Any fixed number; PostgreSQL advisory locks are keyed by a bigint shared by the whole server.
_POSTGRES_LOCK_KEY = 0x45A_0001


def print_line(line: str) -> None:
    """The default `report`: one line to standard output, at once, so long steps show progress."""
    print(line, flush=True)


@dataclass(frozen=True)
class ObjectStatus:
    schema_object: SchemaObject
    present: bool


@dataclass(frozen=True, kw_only=True)
class MigrationStatus:
    current_revision: str | None
    head_revision: str
    objects: tuple[ObjectStatus, ...]
    # "partial": some of the feature's objects exist but no revision is recorded (an attempt that stopped
    # half-way, tables made by hand), or one is recorded but objects it created have since gone missing.
    # "outdated": an earlier revision is recorded and everything it created is there; later ones are pending.
    state: State

    @property
    def present(self) -> tuple[SchemaObject, ...]:
        return tuple(o.schema_object for o in self.objects if o.present)

    @property
    def missing(self) -> tuple[SchemaObject, ...]:
        return tuple(o.schema_object for o in self.objects if not o.present)


@dataclass(frozen=True, kw_only=True)
class MigrationResult:
    from_revision: str | None
    to_revision: str | None
    # Every line passed to `report`, in order.
    lines: tuple[str, ...]
    changed: bool
    # The script a dry run printed; None when the database was changed or nothing was to be done.
    sql: str | None = None


def upgrade(settings: Settings, *, dry_run: bool = False, report: Report = print_line) -> MigrationResult:
    """Bring the database to the head revision, creating only the objects it lacks."""
    lines = _Lines(report)
    with _transaction(settings, changes=not dry_run) as connection:
        before = _status(connection)
        if before.state == "applied":
            lines(f"✅ Database is up to date (revision {before.head_revision})")
            return lines.result(before.current_revision, before.current_revision)
        if dry_run:
            # Offline, Alembic knows no current revision: a recorded one is where the script starts.
            start = f"{before.current_revision}:" if before.state == "outdated" else ""
            sql = _offline(connection, lambda config: command.upgrade(config, f"{start}head", sql=True))
            lines.sql(sql)
            return lines.result(before.current_revision, before.current_revision, sql=sql)
        if before.state == "outdated":
            lines(f"⬆️ Upgrading from revision {before.current_revision} to {before.head_revision}")
        elif before.state == "partial":
            lines(
                f"⚠️ Partial migration found ({len(before.missing)} of {len(before.objects)} objects missing): "
                "creating what is missing"
            )
        config = _config(connection, lines)
        if before.state == "partial" and before.current_revision is not None:
            # A revision is recorded, yet objects it created were dropped since: forget the record so that every
            # revision runs again, and each recreates just what it lacks.
            command.stamp(config, "base")
        command.upgrade(config, "head")
        lines("✅ Migration completed successfully")
        return lines.result(before.current_revision, before.head_revision, changed=True)


def status(settings: Settings) -> MigrationStatus:
    """The recorded and the head revision, and which of the feature's objects exist."""
    with _transaction(settings, changes=False) as connection:
        return _status(connection)


def rollback(settings: Settings, *, dry_run: bool = False, report: Report = print_line) -> MigrationResult:
    """Remove exactly what the feature added, applied or half-applied; billing_usage and its rows stay."""
    lines = _Lines(report)
    with _transaction(settings, changes=not dry_run) as connection:
        before = _status(connection)
        if before.current_revision is None and not any(o.owned for o in before.present):
            lines("✅ Nothing to roll back: the External Agents schema is not installed")
            return lines.result(None, None)
        if dry_run:
            start = before.current_revision or before.head_revision
            sql = _offline(connection, lambda config: command.downgrade(config, f"{start}:base", sql=True))
            lines.sql(sql)
            return lines.result(before.current_revision, before.current_revision, sql=sql)
        config = _config(connection, lines)
        if before.current_revision != before.head_revision:
            # A half-applied attempt left objects but no record (or a later revision's objects were made by hand):
            # recording the head lets Alembic's downgrade walk every revision, and each drops only what exists.
            command.stamp(config, "head")
        command.downgrade(config, "base")
        lines("✅ Rollback completed successfully")
        return lines.result(before.current_revision, None, changed=True)


class _Lines:
    """Passes each line to `report` and keeps them for the result."""

    def __init__(self, report: Report) -> None:
        self._report = report
        self._lines: list[str] = []

    def __call__(self, line: str) -> None:
        self._lines.append(line)
        self._report(line)

    def sql(self, script: str) -> None:
        # SQLAlchemy's DDL leaves a space at the end of column lines.
        for line in script.rstrip("\n").splitlines():
            self(line.rstrip())

    def result(
        self, from_revision: str | None, to_revision: str | None, *, changed: bool = False, sql: str | None = None
    ) -> MigrationResult:
        return MigrationResult(
            from_revision=from_revision, to_revision=to_revision, lines=tuple(self._lines), changed=changed, sql=sql
        )


def _config(connection: sa.Connection, report: Report, *, output_buffer: io.StringIO | None = None) -> Config:
    config = Config(output_buffer=output_buffer)
    # ConfigParser interpolates "%", which a path may contain.
    config.set_main_option("script_location", str(_SCRIPT_LOCATION).replace("%", "%%"))
    config.attributes["connection"] = connection
    config.attributes["report"] = report
    return config


def _offline(connection: sa.Connection, run: Callable[[Config], None]) -> str:
    """The SQL script of an Alembic command in offline mode, for the connection's dialect."""
    buffer = io.StringIO()
    # In offline mode revisions write their steps as SQL comments, never through `report`.
    run(_config(connection, lambda _line: None, output_buffer=buffer))
    return buffer.getvalue()


def _status(connection: sa.Connection) -> MigrationStatus:
    current = MigrationContext.configure(connection).get_current_revision()
    scripts = ScriptDirectory(str(_SCRIPT_LOCATION))
    head = scripts.get_current_head()
    if head is None:
        raise RuntimeError(f"no Alembic revision found in {_SCRIPT_LOCATION}")
    found = existing(connection)
    objects = tuple(ObjectStatus(schema_object=o, present=o in found) for o in schema_objects())
    applied = {script.revision for script in scripts.iterate_revisions(current, "base")} if current else set()
    if current == head and all(o.present for o in objects):
        state: State = "applied"
    elif current is None and not any(o.schema_object.owned for o in objects if o.present):
        state = "not_applied"
    elif current is not None and all(o.present for o in objects if o.schema_object.revision in applied):
        state = "outdated"
    else:
        state = "partial"
    return MigrationStatus(current_revision=current, head_revision=head, objects=objects, state=state)


@contextmanager
def _transaction(settings: Settings, *, changes: bool) -> Iterator[sa.Connection]:
    """One connection and transaction for a whole command, committed only when the command may change things.

    On PostgreSQL a failure anywhere rolls everything back (its DDL is transactional), and a second migrator
    (another instance starting) waits on an advisory lock, then finds the work done.
    """
    engine = _engine(settings, create=changes)
    try:
        with engine.connect() as connection, connection.begin() as transaction:
            if connection.dialect.name == "postgresql":
                connection.execute(sa.text("SELECT pg_advisory_xact_lock(:key)"), {"key": _POSTGRES_LOCK_KEY})
            yield connection
            if not changes:
                transaction.rollback()
    finally:
        engine.dispose()


def _engine(settings: Settings, *, create: bool) -> sa.Engine:
    url = sa.make_url(settings.sync_database_url)
    if url.get_backend_name() != "sqlite":
        return sa.create_engine(url, poolclass=NullPool)
    if url.database and url.database != ":memory:":
        path = Path(url.database)
        if create:
            path.parent.mkdir(parents=True, exist_ok=True)
        elif not path.exists():
            # A missing file is an empty database; looking at it (status, dry run) must not create it.
            url = url.set(database=":memory:")
    engine = sa.create_engine(url, poolclass=NullPool, connect_args={"timeout": 30})

    # pysqlite runs DDL outside any transaction. Taking transactions over from it makes a migration
    # all-or-nothing on SQLite too, and BEGIN IMMEDIATE holds the write lock so a second migrator waits.
    @sa.event.listens_for(engine, "connect")
    def _driver_autocommit(dbapi_connection: Any, _record: Any) -> None:
        dbapi_connection.isolation_level = None

    @sa.event.listens_for(engine, "begin")
    def _begin_immediate(connection: sa.Connection) -> None:
        connection.exec_driver_sql("BEGIN IMMEDIATE")

    return engine
