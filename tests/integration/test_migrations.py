"""The feature's migrations on real databases: SQLite (a temporary file) and PostgreSQL (a throwaway database).

They prove what the seed's migration guide promises and the issue adds: the guide's tables, exact PostgreSQL
types and named indexes with its progress lines in its order; an existing billing_usage extended without
losing a row; a second run that does nothing; a half-applied attempt detected, then finished or removed; a
rollback of exactly the feature's objects; a dry run that changes nothing; and a schema that Alembic's
autogenerate finds identical to the models' METADATA.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import psycopg2
import pytest
import sqlalchemy as sa
from alembic.autogenerate import compare_metadata
from alembic.runtime.migration import MigrationContext
from cryptography.fernet import Fernet
from psycopg2 import sql
from sqlalchemy.pool import NullPool

from external_agents.models import METADATA, migrate
from external_agents.models.migrations.objects import Kind, schema_objects
from external_agents.settings import Settings, load_settings

LIMITS = "0002_execution_limits"
METADATA_REVISION = "0003_invocation_metadata"
HEAD = "0004_crash_consistency"

# What revision 0004 adds, in the order it reports creating it and the order it reports dropping it.
CRASH_COLUMNS = [
    ("invocation_lineage", "instance_id"),
    ("invocation_lineage", "lease_expires_at"),
    ("invocation_lineage", "record_note"),
    ("invocation_lineage", "reported_cost_usd"),
    ("budget_counters", "overrun_alert_sent"),
]
CRASH_INDEX = "idx_invocation_lineage_status_lease"
CRASH_LINES = [
    *(f"✅ Extending table: {table} (adding {column} column)" for table, column in CRASH_COLUMNS),
    f"✅ Creating index: {CRASH_INDEX}",
]
CRASH_DROP_LINES = [
    f"✅ Dropping index: {CRASH_INDEX}",
    *(f"✅ Dropping column: {table}.{column}" for table, column in CRASH_COLUMNS),
]
CRASH_LABELS = [
    *(f"column {table}.{column}" for table, column in CRASH_COLUMNS),
    f"index {CRASH_INDEX}",
]
# SQL that takes a head database back to what revision 0003 left: the index first, SQLite will not drop an
# indexed column.
WITHOUT_CRASH_CONSISTENCY = (
    f"DROP INDEX {CRASH_INDEX}",
    *(f"ALTER TABLE {table} DROP COLUMN {column}" for table, column in CRASH_COLUMNS),
)

SEED_LINES_FRESH = [
    "✅ Creating table: external_agents",
    "✅ Creating table: invocation_lineage",
    "✅ Creating table: billing_usage",
    "✅ Creating index: idx_external_agents_org_id",
    "✅ Creating index: idx_invocation_lineage_user_email",
    "✅ Creating index: idx_invocation_lineage_agent_id",
    "✅ Creating index: idx_invocation_lineage_timestamp",
]
SEED_LINES_EXISTING = [
    *SEED_LINES_FRESH[:2],
    "✅ Extending table: billing_usage (adding external_agent_id column)",
    *SEED_LINES_FRESH[3:],
]
COMPLETED = "✅ Migration completed successfully"
UP_TO_DATE = f"✅ Database is up to date (revision {HEAD})"

FEATURE_TABLES = {
    "external_agents",
    "invocation_lineage",
    "audit_log",
    "policies",
    "api_keys",
    "budget_counters",
    "external_agent_limits",
}
FIRST_RELEASE = "0001_external_agents"

# The product's billing_usage before this feature: the columns the issue names, without external_agent_id.
PRE_FEATURE_BILLING_USAGE = """
CREATE TABLE billing_usage (
    id VARCHAR(255) NOT NULL PRIMARY KEY,
    organization_id VARCHAR(255) NOT NULL,
    usage_type VARCHAR(50) NOT NULL,
    quantity DOUBLE PRECISION NOT NULL,
    cost_usd DOUBLE PRECISION NOT NULL,
    created_at TIMESTAMP WITH TIME ZONE DEFAULT CURRENT_TIMESTAMP NOT NULL
)
"""
BILLING_ROWS = [
    {"id": "u-1", "organization_id": "org-a", "usage_type": "workflow", "quantity": 1.0, "cost_usd": 0.1},
    {"id": "u-2", "organization_id": "org-a", "usage_type": "tokens", "quantity": 1234.5, "cost_usd": 0.2},
    {"id": "u-3", "organization_id": "org-b", "usage_type": "workflow", "quantity": 3.0, "cost_usd": 123.456789},
]

# The seed's "Expected Schema" of external_agents, as psql shows it.
SEED_EXTERNAL_AGENTS_SCHEMA = [
    ("id", "character varying(255)", False),
    ("name", "character varying(255)", False),
    ("description", "text", True),
    ("platform", "character varying(50)", False),
    ("platform_config", "jsonb", False),
    ("auth_config", "jsonb", False),
    ("encrypted_credentials", "bytea", True),
    ("max_monthly_cost", "double precision", True),
    ("max_daily_cost", "double precision", True),
    ("cost_per_execution", "double precision", True),
    ("requests_per_minute", "integer", True),
    ("requests_per_hour", "integer", True),
    ("requests_per_day", "integer", True),
    ("organization_id", "character varying(255)", False),
    ("created_by", "character varying(255)", False),
    ("created_at", "timestamp with time zone", False),
    ("updated_at", "timestamp with time zone", True),
]


def _settings(url: str, data_dir: Path) -> Settings:
    return load_settings(
        database_url=url, kaizen_data_dir=data_dir, external_agent_encryption_key=Fernet.generate_key().decode()
    )


@contextmanager
def _sqlite(data_dir: Path) -> Iterator[Settings]:
    yield _settings(f"sqlite:///{data_dir / 'external_agents.db'}", data_dir)


@contextmanager
def _postgres(postgres_url: str, tmp_path: Path) -> Iterator[Settings]:
    server = sa.make_url(postgres_url).set(drivername="postgresql")
    name = f"ea_migr_{uuid.uuid4().hex[:12]}"
    try:
        admin = psycopg2.connect(server.set(database="postgres").render_as_string(hide_password=False))
    except psycopg2.OperationalError as exc:
        pytest.skip(f"PostgreSQL not reachable at {server.host}:{server.port}: {exc}")
    admin.autocommit = True
    try:
        with admin.cursor() as cursor:
            cursor.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))
        yield _settings(server.set(database=name).render_as_string(hide_password=False), tmp_path)
    finally:
        with admin.cursor() as cursor:
            cursor.execute(sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(name)))
        admin.close()


@pytest.fixture(params=["sqlite", pytest.param("postgresql", marks=pytest.mark.postgres)])
def settings(request: pytest.FixtureRequest, tmp_path: Path, postgres_url: str) -> Iterator[Settings]:
    database = _sqlite(tmp_path) if request.param == "sqlite" else _postgres(postgres_url, tmp_path)
    with database as value:
        yield value


@pytest.fixture
def pg_settings(tmp_path: Path, postgres_url: str) -> Iterator[Settings]:
    with _postgres(postgres_url, tmp_path) as value:
        yield value


@contextmanager
def _connect(settings: Settings) -> Iterator[sa.Connection]:
    engine = sa.create_engine(settings.sync_database_url, poolclass=NullPool)
    try:
        with engine.begin() as connection:
            yield connection
    finally:
        engine.dispose()


def _execute(settings: Settings, *statements: str, rows: list[dict[str, Any]] | None = None) -> None:
    with _connect(settings) as connection:
        for statement in statements:
            connection.execute(sa.text(statement), rows)


def _snapshot(settings: Settings) -> dict[str, tuple[tuple[Any, ...], tuple[Any, ...]]]:
    """Every table's columns (name, type, nullable) and indexes (name, columns, unique)."""
    with _connect(settings) as connection:
        inspector = sa.inspect(connection)
        return {
            table: (
                tuple((c["name"], str(c["type"]), c["nullable"]) for c in inspector.get_columns(table)),
                tuple(
                    sorted(
                        (str(i["name"]), tuple(i["column_names"]), bool(i["unique"]))
                        for i in inspector.get_indexes(table)
                        # PostgreSQL lists the index behind a UNIQUE constraint too; the constraint is the table's.
                        if "duplicates_constraint" not in i
                    )
                ),
            )
            for table in inspector.get_table_names()
        }


def _billing_rows(settings: Settings) -> list[dict[str, Any]]:
    with _connect(settings) as connection:
        result = connection.execute(
            sa.text("SELECT id, organization_id, usage_type, quantity, cost_usd FROM billing_usage ORDER BY id")
        )
        return [dict(row) for row in result.mappings()]


def _upgrade(settings: Settings, **kwargs: Any) -> tuple[migrate.MigrationResult, list[str]]:
    lines: list[str] = []
    result = migrate.upgrade(settings, report=lines.append, **kwargs)
    return result, lines


def _rollback(settings: Settings, **kwargs: Any) -> tuple[migrate.MigrationResult, list[str]]:
    lines: list[str] = []
    result = migrate.rollback(settings, report=lines.append, **kwargs)
    return result, lines


def _all_index_names() -> set[str]:
    return {str(index.name) for table in METADATA.tables.values() for index in table.indexes}


def _create_pre_feature_billing_usage(settings: Settings) -> None:
    _execute(settings, PRE_FEATURE_BILLING_USAGE)
    _execute(
        settings,
        "INSERT INTO billing_usage (id, organization_id, usage_type, quantity, cost_usd) "
        "VALUES (:id, :organization_id, :usage_type, :quantity, :cost_usd)",
        rows=BILLING_ROWS,
    )


def test_fresh_install_creates_every_table_and_index_with_the_seeds_lines_first(settings: Settings) -> None:
    result, lines = _upgrade(settings)

    assert lines[:7] == SEED_LINES_FRESH
    assert lines[-1] == COMPLETED
    assert result.lines == tuple(lines)
    assert result.changed and result.from_revision is None and result.to_revision == HEAD
    # One line per object, nothing announced twice.
    expected_steps = (
        {f"✅ Creating table: {name}" for name in METADATA.tables}
        | {f"✅ Creating index: {name}" for name in _all_index_names()}
        | {"✅ Extending table: invocation_lineage (adding metadata column)"}
        | {line for line in CRASH_LINES if "Extending" in line}
    )
    assert sorted(lines[:-1]) == sorted(expected_steps)
    snapshot = _snapshot(settings)
    assert set(snapshot) == set(METADATA.tables) | {"alembic_version"}
    for name, table in METADATA.tables.items():
        assert [c[0] for c in snapshot[name][0]] == [c.name for c in table.columns]
        assert {i[0] for i in snapshot[name][1]} == {str(i.name) for i in table.indexes}
    with _connect(settings) as connection:
        assert connection.execute(sa.text("SELECT version_num FROM alembic_version")).scalar_one() == HEAD


@pytest.mark.postgres
def test_postgres_types_and_indexes_are_the_seeds(pg_settings: Settings) -> None:
    migrate.upgrade(pg_settings, report=lambda _line: None)

    with _connect(pg_settings) as connection:

        def columns(table: str) -> list[tuple[str, str, bool]]:
            rows = connection.execute(
                sa.text(
                    "SELECT column_name, data_type, character_maximum_length, is_nullable "
                    "FROM information_schema.columns WHERE table_schema = 'public' AND table_name = :table "
                    "ORDER BY ordinal_position"
                ),
                {"table": table},
            )
            return [
                (name, f"{data_type}({length})" if length else data_type, nullable == "YES")
                for name, data_type, length, nullable in rows
            ]

        indexes = dict(
            connection.execute(sa.text("SELECT indexname, indexdef FROM pg_indexes WHERE schemaname = 'public'")).all()
        )

        assert columns("external_agents") == SEED_EXTERNAL_AGENTS_SCHEMA
        lineage = {name: (data_type, nullable) for name, data_type, nullable in columns("invocation_lineage")}
        assert lineage["id"] == ("character varying(255)", False)
        assert lineage["external_user_email"] == ("character varying(255)", True)
        # json, not jsonb: the text as sent is kept, so 1e308 or 1.0 read back as they were written.
        assert (lineage["external_context"], lineage["input"], lineage["output"]) == (("json", True),) * 3
        assert lineage["platform"] == ("character varying(50)", True)
        assert lineage["status"] == ("character varying(50)", False)
        assert lineage["cost_usd"] == ("double precision", True)
        assert lineage["request_timestamp"] == ("timestamp with time zone", False)
        assert ("external_agent_id", "character varying(255)", True) in columns("billing_usage")

        assert indexes["external_agents_pkey"].endswith("USING btree (id)")
        expected = {
            "idx_external_agents_org_id": "ON public.external_agents USING btree (organization_id)",
            "idx_invocation_lineage_user_email": "ON public.invocation_lineage USING btree (external_user_email)",
            "idx_invocation_lineage_agent_id": "ON public.invocation_lineage USING btree (external_agent_id)",
            "idx_invocation_lineage_timestamp": "ON public.invocation_lineage USING btree (request_timestamp)",
            "idx_invocation_lineage_parent_id": "ON public.invocation_lineage USING btree (parent_invocation_id)",
            "uq_external_agents_org_name": "ON public.external_agents USING btree (organization_id, name)",
        }
        for name, definition in expected.items():
            assert indexes[name].endswith(definition), indexes[name]
        assert indexes["uq_external_agents_org_name"].startswith("CREATE UNIQUE INDEX")


def test_existing_billing_usage_is_extended_and_keeps_every_row(settings: Settings) -> None:
    _create_pre_feature_billing_usage(settings)
    assert migrate.status(settings).state == "not_applied"

    result, lines = _upgrade(settings)

    assert lines[:7] == SEED_LINES_EXISTING
    assert "✅ Creating table: billing_usage" not in lines
    assert lines[-1] == COMPLETED
    assert result.changed
    rows = _billing_rows(settings)
    assert rows == BILLING_ROWS
    with _connect(settings) as connection:
        agent_ids = connection.execute(sa.text("SELECT external_agent_id FROM billing_usage")).scalars().all()
        assert agent_ids == [None, None, None]
    columns, indexes = _snapshot(settings)["billing_usage"]
    assert [c[0] for c in columns] == [
        "id",
        "organization_id",
        "usage_type",
        "quantity",
        "cost_usd",
        "created_at",
        "external_agent_id",
    ]
    assert ("idx_billing_usage_agent_created", ("external_agent_id", "created_at"), False) in indexes


def test_a_second_run_is_a_no_op_that_says_up_to_date(settings: Settings) -> None:
    _upgrade(settings)
    before = _snapshot(settings)

    result, lines = _upgrade(settings)

    assert lines == [UP_TO_DATE]
    assert not result.changed
    assert result.from_revision == result.to_revision == HEAD
    assert _snapshot(settings) == before


def test_status_reports_not_applied_then_applied(settings: Settings) -> None:
    before = migrate.status(settings)

    assert before.state == "not_applied"
    assert before.current_revision is None
    assert before.head_revision == HEAD
    assert not before.present
    labels = [o.schema_object.label for o in before.objects]
    assert labels[:4] == [
        "table external_agents",
        "table invocation_lineage",
        "table billing_usage",
        "column billing_usage.external_agent_id",
    ]
    assert set(labels) >= {f"table {t}" for t in METADATA.tables} | {f"index {i}" for i in _all_index_names()}
    if settings.is_sqlite:
        # Looking must not create the database file.
        assert not settings.sqlite_path.exists()

    migrate.upgrade(settings, report=lambda _line: None)
    after = migrate.status(settings)

    assert after.state == "applied"
    assert after.current_revision == HEAD
    assert not after.missing


def test_hand_made_table_is_partial_and_migrate_finishes_without_table_already_exists(
    settings: Settings,
) -> None:
    with _connect(settings) as connection:
        # The table alone, as someone following the seed by hand would have made it.
        connection.execute(sa.schema.CreateTable(METADATA.tables["external_agents"]))

    status = migrate.status(settings)
    assert status.state == "partial"
    assert status.current_revision is None
    assert [o.label for o in status.present] == ["table external_agents"]

    result, lines = _upgrade(settings)

    assert lines[0].startswith("⚠️ Partial migration found")
    assert "✅ Creating table: external_agents" not in lines
    assert lines[1:8] == [
        SEED_LINES_FRESH[1],
        SEED_LINES_FRESH[2],
        *SEED_LINES_FRESH[3:],
        "✅ Creating table: api_keys",
    ]
    assert lines[-1] == COMPLETED
    assert result.changed
    assert migrate.status(settings).state == "applied"


def _interrupted_attempt(settings: Settings) -> None:
    """What a crash half-way leaves on a database without transactional DDL: objects, but no version."""
    migrate.upgrade(settings, report=lambda _line: None)
    _execute(settings, "DELETE FROM alembic_version", "DROP INDEX idx_invocation_lineage_timestamp")


def test_interrupted_attempt_is_partial_and_migrate_creates_only_what_is_missing(settings: Settings) -> None:
    _interrupted_attempt(settings)
    status = migrate.status(settings)
    assert status.state == "partial"
    assert status.current_revision is None
    assert [o.label for o in status.missing] == ["index idx_invocation_lineage_timestamp"]

    result, lines = _upgrade(settings)

    assert lines[1:] == ["✅ Creating index: idx_invocation_lineage_timestamp", COMPLETED]
    assert result.to_revision == HEAD
    assert migrate.status(settings).state == "applied"


def test_interrupted_attempt_is_removed_by_rollback(settings: Settings) -> None:
    _create_pre_feature_billing_usage(settings)
    before = _snapshot(settings)
    _interrupted_attempt(settings)
    assert migrate.status(settings).state == "partial"

    result, lines = _rollback(settings)

    assert result.changed
    assert lines[-1] == "✅ Rollback completed successfully"
    assert "✅ Dropping column: billing_usage.external_agent_id" in lines
    assert migrate.status(settings).state == "not_applied"
    assert {t: s for t, s in _snapshot(settings).items() if t != "alembic_version"} == before
    assert _billing_rows(settings) == BILLING_ROWS


def test_an_index_dropped_after_migration_is_reported_and_recreated(settings: Settings) -> None:
    _upgrade(settings)
    _execute(settings, "DROP INDEX idx_external_agents_org_id")

    status = migrate.status(settings)
    assert status.state == "partial"
    assert status.current_revision == HEAD
    assert [o.label for o in status.missing] == ["index idx_external_agents_org_id"]

    _, lines = _upgrade(settings)

    assert lines[1:] == ["✅ Creating index: idx_external_agents_org_id", COMPLETED]
    assert migrate.status(settings).state == "applied"


def test_rollback_removes_exactly_the_feature_and_keeps_billing_usage_rows(settings: Settings) -> None:
    _create_pre_feature_billing_usage(settings)
    # A table of the product that the feature knows nothing about.
    _execute(settings, "CREATE TABLE workflows (id VARCHAR(255) PRIMARY KEY, name VARCHAR(255))")
    _execute(settings, "CREATE INDEX idx_workflows_name ON workflows (name)")
    _execute(settings, "INSERT INTO workflows (id, name) VALUES ('w-1', 'nightly report')")
    before = _snapshot(settings)
    _upgrade(settings)

    result, lines = _rollback(settings)

    assert result.changed
    assert result.from_revision == HEAD and result.to_revision is None
    assert sorted(line for line in lines if line.startswith("✅ Dropping table: ")) == sorted(
        f"✅ Dropping table: {name}" for name in FEATURE_TABLES
    )
    assert lines[-3:] == [
        "✅ Dropping index: idx_billing_usage_agent_created",
        "✅ Dropping column: billing_usage.external_agent_id",
        "✅ Rollback completed successfully",
    ]
    after = _snapshot(settings)
    # Alembic keeps its (now empty) version table, as `alembic downgrade base` always does.
    assert after.pop("alembic_version")
    assert after == before
    assert _billing_rows(settings) == BILLING_ROWS
    with _connect(settings) as connection:
        assert connection.execute(sa.text("SELECT name FROM workflows")).scalars().all() == ["nightly report"]
        assert connection.execute(sa.text("SELECT count(*) FROM alembic_version")).scalar_one() == 0
    assert migrate.status(settings).state == "not_applied"


def test_rollback_of_a_fresh_install_keeps_the_billing_usage_table(settings: Settings) -> None:
    _upgrade(settings)

    migrate.rollback(settings, report=lambda _line: None)

    tables = set(_snapshot(settings))
    assert tables == {"billing_usage", "alembic_version"}


def test_remigration_after_rollback(settings: Settings) -> None:
    _create_pre_feature_billing_usage(settings)
    _upgrade(settings)
    migrate.rollback(settings, report=lambda _line: None)

    result, lines = _upgrade(settings)

    assert lines[:7] == SEED_LINES_EXISTING
    assert lines[-1] == COMPLETED
    assert result.changed
    assert migrate.status(settings).state == "applied"
    assert _billing_rows(settings) == BILLING_ROWS


def test_rollback_with_nothing_installed_does_nothing(settings: Settings) -> None:
    _create_pre_feature_billing_usage(settings)
    before = _snapshot(settings)

    result, lines = _rollback(settings)

    assert lines == ["✅ Nothing to roll back: the External Agents schema is not installed"]
    assert not result.changed
    assert _snapshot(settings) == before


def test_dry_run_prints_the_sql_for_the_dialect_and_changes_nothing(settings: Settings) -> None:
    _create_pre_feature_billing_usage(settings)
    before = _snapshot(settings)

    result, lines = _upgrade(settings, dry_run=True)

    assert not result.changed
    assert result.sql is not None
    assert "CREATE TABLE external_agents (" in lines
    assert "-- Extending table: billing_usage (adding external_agent_id column)" in lines
    assert "ALTER TABLE billing_usage ADD COLUMN external_agent_id VARCHAR(255)" in result.sql
    assert "CREATE TABLE billing_usage" not in result.sql
    assert "CREATE INDEX idx_external_agents_org_id ON external_agents (organization_id)" in result.sql
    if settings.is_sqlite:
        # TEXT, not JSON: a JSON type name gets NUMERIC affinity in SQLite, which rewrites stored scalars.
        assert "platform_config TEXT NOT NULL" in result.sql
    else:
        assert "platform_config JSONB NOT NULL" in result.sql
        assert "max_monthly_cost DOUBLE PRECISION" in result.sql
        assert "created_at TIMESTAMP WITH TIME ZONE DEFAULT now() NOT NULL" in result.sql
    assert COMPLETED not in lines
    assert _snapshot(settings) == before
    assert migrate.status(settings).state == "not_applied"


def test_dry_run_rollback_prints_the_drops_and_changes_nothing(settings: Settings) -> None:
    _upgrade(settings)
    before = _snapshot(settings)

    result, lines = _rollback(settings, dry_run=True)

    assert result.sql is not None
    assert "DROP TABLE external_agents;" in lines
    assert "ALTER TABLE billing_usage DROP COLUMN external_agent_id;" in lines
    assert "DROP TABLE billing_usage" not in result.sql
    assert _snapshot(settings) == before
    assert migrate.status(settings).state == "applied"


def test_dry_run_on_an_absent_sqlite_file_does_not_create_it(tmp_path: Path) -> None:
    with _sqlite(tmp_path / "data") as settings:
        result, _ = _upgrade(settings, dry_run=True)

        assert result.sql is not None and "CREATE TABLE external_agents" in result.sql
        assert not settings.sqlite_path.parent.exists()


def test_a_failed_migration_leaves_nothing_behind(settings: Settings) -> None:
    # Tables and indexes share one namespace, so creating this index fails half-way through the migration.
    _execute(settings, "CREATE TABLE idx_policies_org_id (id INTEGER PRIMARY KEY)")
    before = _snapshot(settings)

    with pytest.raises(sa.exc.DatabaseError):
        migrate.upgrade(settings, report=lambda _line: None)

    assert _snapshot(settings) == before
    assert migrate.status(settings).state == "not_applied"


def test_autogenerate_finds_no_difference_from_metadata(settings: Settings) -> None:
    migrate.upgrade(settings, report=lambda _line: None)

    with _connect(settings) as connection:
        assert compare_metadata(MigrationContext.configure(connection), METADATA) == []


def _first_release_database(settings: Settings) -> None:
    """A database as the first release left it: revision 0001 recorded, no execution-limits table, no lineage
    metadata column, an agent."""
    _upgrade(settings)
    _execute(
        settings,
        *WITHOUT_CRASH_CONSISTENCY,
        "DROP TABLE external_agent_limits",
        "ALTER TABLE invocation_lineage DROP COLUMN metadata",
        "UPDATE alembic_version SET version_num = '0001_external_agents'",
        "INSERT INTO external_agents (id, name, platform, platform_config, auth_config, organization_id, created_by) "
        "VALUES ('a-1', 'kept', 'slack', '{}', '{}', 'org-a', 'k-1')",
    )


def test_a_first_release_database_is_outdated_with_only_the_limits_table_missing(settings: Settings) -> None:
    _first_release_database(settings)

    status = migrate.status(settings)

    assert status.state == "outdated"
    assert status.current_revision == FIRST_RELEASE and status.head_revision == HEAD
    assert [o.label for o in status.missing] == [
        "table external_agent_limits",
        "column invocation_lineage.metadata",
        *CRASH_LABELS,
    ]


def test_upgrading_a_first_release_database_creates_just_the_limits_table(settings: Settings) -> None:
    _first_release_database(settings)
    before = _snapshot(settings)

    result, lines = _upgrade(settings)

    assert lines == [
        f"⬆️ Upgrading from revision {FIRST_RELEASE} to {HEAD}",
        "✅ Creating table: external_agent_limits",
        "✅ Extending table: invocation_lineage (adding metadata column)",
        *CRASH_LINES,
        COMPLETED,
    ]
    assert result.from_revision == FIRST_RELEASE and result.to_revision == HEAD
    after = _snapshot(settings)
    assert set(after) - set(before) == {"external_agent_limits"}
    unchanged = set(before) - {"alembic_version", "invocation_lineage", "budget_counters"}
    assert {table: after[table] for table in unchanged} == {table: before[table] for table in unchanged}
    assert after["invocation_lineage"][0][:-5] == before["invocation_lineage"][0]
    assert [c[0] for c in after["invocation_lineage"][0][-5:]] == ["metadata"] + [
        column for table, column in CRASH_COLUMNS if table == "invocation_lineage"
    ]
    with _connect(settings) as connection:
        assert connection.execute(sa.text("SELECT name FROM external_agents")).scalars().all() == ["kept"]
    assert migrate.status(settings).state == "applied"


def test_dry_run_of_a_first_release_database_prints_only_the_new_revision(settings: Settings) -> None:
    _first_release_database(settings)
    before = _snapshot(settings)

    result, lines = _upgrade(settings, dry_run=True)

    assert result.sql is not None
    assert "-- Creating table: external_agent_limits" in lines
    assert "CREATE TABLE external_agent_limits (" in lines
    assert "CREATE TABLE external_agents" not in result.sql
    assert (
        "UPDATE alembic_version SET version_num='0002_execution_limits' "
        "WHERE alembic_version.version_num = '0001_external_agents';" in lines
    )
    assert _snapshot(settings) == before


def test_rollback_of_a_first_release_database_removes_the_feature(settings: Settings) -> None:
    _first_release_database(settings)

    result, lines = _rollback(settings)

    assert result.from_revision == FIRST_RELEASE and result.to_revision is None
    assert "✅ Dropping table: external_agents" in lines
    assert "✅ Dropping table: external_agent_limits" not in lines
    assert migrate.status(settings).state == "not_applied"


def test_a_first_release_database_missing_one_of_its_own_indexes_is_partial_and_repaired(settings: Settings) -> None:
    _first_release_database(settings)
    _execute(settings, "DROP INDEX idx_invocation_lineage_user_email")

    assert migrate.status(settings).state == "partial"
    _, lines = _upgrade(settings)

    assert "✅ Creating index: idx_invocation_lineage_user_email" in lines
    assert "✅ Creating table: external_agent_limits" in lines
    assert migrate.status(settings).state == "applied"


def _limits_release_database(settings: Settings) -> None:
    """A database as revision 0002 left it: no lineage metadata column, one invocation recorded."""
    _upgrade(settings)
    _execute(
        settings,
        *WITHOUT_CRASH_CONSISTENCY,
        "ALTER TABLE invocation_lineage DROP COLUMN metadata",
        "UPDATE alembic_version SET version_num = '0002_execution_limits'",
        "INSERT INTO invocation_lineage (id, organization_id, trace_id, status) "
        "VALUES ('i-1', 'org-a', 'trc-1', 'success')",
    )


def _lineage_columns(settings: Settings) -> list[str]:
    with _connect(settings) as connection:
        return [c["name"] for c in sa.inspect(connection).get_columns("invocation_lineage")]


def test_a_limits_release_database_is_outdated_with_only_the_metadata_column_missing(settings: Settings) -> None:
    _limits_release_database(settings)

    status = migrate.status(settings)

    assert status.state == "outdated"
    assert status.current_revision == LIMITS and status.head_revision == HEAD
    assert [o.label for o in status.missing] == ["column invocation_lineage.metadata", *CRASH_LABELS]


def test_upgrading_a_limits_release_database_adds_the_metadata_column_and_keeps_rows(settings: Settings) -> None:
    _limits_release_database(settings)

    _, lines = _upgrade(settings)

    assert lines == [
        f"⬆️ Upgrading from revision {LIMITS} to {HEAD}",
        "✅ Extending table: invocation_lineage (adding metadata column)",
        *CRASH_LINES,
        COMPLETED,
    ]
    assert _lineage_columns(settings)[-5] == "metadata"
    with _connect(settings) as connection:
        rows = connection.execute(sa.text("SELECT id, metadata FROM invocation_lineage")).all()
    assert [tuple(row) for row in rows] == [("i-1", None)]
    assert migrate.status(settings).state == "applied"


def test_downgrading_the_metadata_revision_removes_just_the_column(settings: Settings) -> None:
    from alembic import command

    _upgrade(settings)
    before = _snapshot(settings)
    lines: list[str] = []

    with migrate._transaction(settings, changes=True) as connection:
        command.downgrade(migrate._config(connection, lines.append), LIMITS)

    assert lines == [*CRASH_DROP_LINES, "✅ Dropping column: invocation_lineage.metadata"]
    after = _snapshot(settings)
    assert "metadata" not in _lineage_columns(settings)
    changed = ("invocation_lineage", "budget_counters", "alembic_version")
    assert {t: s for t, s in after.items() if t not in changed} == {t: s for t, s in before.items() if t not in changed}
    assert migrate.status(settings).state == "outdated"


def test_rollback_drops_the_metadata_column_before_the_tables(settings: Settings) -> None:
    _upgrade(settings)

    _, lines = _rollback(settings)

    assert lines[:7] == [*CRASH_DROP_LINES, "✅ Dropping column: invocation_lineage.metadata"]
    assert "✅ Dropping table: invocation_lineage" in lines
    assert migrate.status(settings).state == "not_applied"


@pytest.mark.postgres
def test_the_metadata_column_is_exact_json_like_input_and_output(pg_settings: Settings) -> None:
    migrate.upgrade(pg_settings, report=lambda _line: None)

    with _connect(pg_settings) as connection:
        types = dict(
            connection.execute(
                sa.text(
                    "SELECT column_name, data_type FROM information_schema.columns "
                    "WHERE table_name = 'invocation_lineage' AND column_name IN ('input', 'output', 'metadata')"
                )
            ).all()
        )
    assert types == {"input": "json", "output": "json", "metadata": "json"}


def test_each_revision_owns_its_own_objects() -> None:
    revisions = {o.label: o.revision for o in schema_objects()}

    assert {label for label, revision in revisions.items() if revision == LIMITS} == {"table external_agent_limits"}
    assert {label for label, revision in revisions.items() if revision == METADATA_REVISION} == {
        "column invocation_lineage.metadata"
    }
    assert [o.label for o in schema_objects(HEAD)] == CRASH_LABELS
    revisions_in_order = (FIRST_RELEASE, LIMITS, METADATA_REVISION, HEAD)
    assert tuple(o for r in revisions_in_order for o in schema_objects(r)) == schema_objects()


def test_rollback_owns_everything_but_the_billing_usage_table() -> None:
    objects = {o.label: o for o in schema_objects()}

    assert not objects["table billing_usage"].owned
    assert objects["column billing_usage.external_agent_id"].owned
    assert objects["index idx_billing_usage_agent_created"].owned
    assert all(o.owned for o in objects.values() if o.kind is Kind.TABLE and o.name != "billing_usage")


def test_the_default_report_prints_each_line(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    with _sqlite(tmp_path) as settings:
        migrate.upgrade(settings)

    printed = capsys.readouterr().out.splitlines()
    assert printed[:7] == SEED_LINES_FRESH
    assert printed[-1] == COMPLETED


def _metadata_release_database(settings: Settings) -> None:
    """A database as revision 0003 left it: no crash-consistency columns or index, one invocation recorded and
    one budget counter."""
    _upgrade(settings)
    _execute(
        settings,
        *WITHOUT_CRASH_CONSISTENCY,
        "UPDATE alembic_version SET version_num = '0003_invocation_metadata'",
        "INSERT INTO invocation_lineage (id, organization_id, trace_id, status) "
        "VALUES ('i-1', 'org-a', 'trc-1', 'success')",
        "INSERT INTO budget_counters (id, external_agent_id, spent_micros, executions, warning_sent, degraded_sent) "
        "VALUES ('a-1|day|2026-12-06', 'a-1', 5, 1, false, false)",
    )


def test_a_metadata_release_database_is_outdated_with_only_the_crash_consistency_objects_missing(
    settings: Settings,
) -> None:
    _metadata_release_database(settings)

    status = migrate.status(settings)

    assert status.state == "outdated"
    assert status.current_revision == METADATA_REVISION and status.head_revision == HEAD
    assert [o.label for o in status.missing] == CRASH_LABELS


def test_upgrading_a_metadata_release_database_adds_the_columns_and_index_and_keeps_rows(settings: Settings) -> None:
    _metadata_release_database(settings)

    _, lines = _upgrade(settings)

    assert lines == [f"⬆️ Upgrading from revision {METADATA_REVISION} to {HEAD}", *CRASH_LINES, COMPLETED]
    with _connect(settings) as connection:
        lineage = connection.execute(
            sa.text("SELECT id, instance_id, lease_expires_at, reported_cost_usd, record_note FROM invocation_lineage")
        ).all()
        counters = connection.execute(sa.text("SELECT id, spent_micros, overrun_alert_sent FROM budget_counters")).all()
    assert [tuple(row) for row in lineage] == [("i-1", None, None, None, None)]
    assert [tuple(row) for row in counters] == [("a-1|day|2026-12-06", 5, False)]
    assert migrate.status(settings).state == "applied"


def test_dry_run_of_a_metadata_release_database_prints_only_revision_0004(settings: Settings) -> None:
    _metadata_release_database(settings)
    before = _snapshot(settings)

    result, lines = _upgrade(settings, dry_run=True)

    assert result.sql is not None
    assert "-- Extending table: budget_counters (adding overrun_alert_sent column)" in lines
    assert "ALTER TABLE invocation_lineage ADD COLUMN lease_expires_at" in result.sql
    assert f"CREATE INDEX {CRASH_INDEX} ON invocation_lineage (status, lease_expires_at)" in result.sql
    assert "ADD COLUMN metadata" not in result.sql
    assert "CREATE TABLE" not in result.sql.replace("CREATE TABLE alembic_version", "")
    assert _snapshot(settings) == before
    assert migrate.status(settings).state == "outdated"


def test_downgrading_just_the_crash_consistency_revision_removes_its_columns_and_index(settings: Settings) -> None:
    from alembic import command

    _upgrade(settings)
    before = _snapshot(settings)
    lines: list[str] = []

    with migrate._transaction(settings, changes=True) as connection:
        command.downgrade(migrate._config(connection, lines.append), METADATA_REVISION)

    assert lines == CRASH_DROP_LINES
    after = _snapshot(settings)
    assert _lineage_columns(settings)[-1] == "metadata"
    changed = ("invocation_lineage", "budget_counters", "alembic_version")
    assert {t: s for t, s in after.items() if t not in changed} == {t: s for t, s in before.items() if t not in changed}
    assert "overrun_alert_sent" not in [c[0] for c in after["budget_counters"][0]]
    assert CRASH_INDEX not in [i[0] for i in after["invocation_lineage"][1]]
    status = migrate.status(settings)
    assert status.state == "outdated" and status.current_revision == METADATA_REVISION
