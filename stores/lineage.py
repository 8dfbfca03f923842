"""Reads of `invocation_lineage` (pages, one record, the graph, export batches) and the GDPR erasure.

Every query is scoped to one organisation. The lineage graph is computed by the database: a recursive CTE
over the indexed `parent_invocation_id` (walking down) and the primary key (walking up), seeded through the
indexes on trace_id, id or external_session_id, so the cost grows with the size of the graph, never with the
size of the table. Exports are read in keyset-paginated batches on (request_timestamp, id), which keeps
memory flat and each batch an index range scan however deep the export has gone.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
from collections.abc import AsyncIterator, Callable, Mapping
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, Literal

import sqlalchemy as sa
from sqlalchemy.dialects import postgresql
from sqlalchemy.ext.asyncio import AsyncEngine

from external_agents.lineage_filters import SELECTOR_COLUMNS
from external_agents.models import TABLES
from external_agents.stores.audit import audit_log, audit_row, insert_audit_rows
from external_agents.stores.database import autocommit

lineage = TABLES["invocation_lineage"]


def parent_invocation(*, prefix: str = "") -> sa.ScalarSelect[Any]:
    """The parent of an invocation being written: the invocation of its organisation whose trace_id the caller sent
    back as X-External-Trace-ID. Bound to the `<prefix>external_trace_id` and `<prefix>organization_id`
    parameters of the INSERT it sits in.

    The row is found by its trace_id alone, so the only index a plan can take is trace_id's unique one; the
    organisation is checked on the row found. With both in the WHERE, a plan made while the table's statistics
    said it was empty (PostgreSQL without autovacuum, or a cached generic plan) took the organisation's timestamp
    index and read every row of the organisation on each write: seen as a soak slowing from 290 to 80
    invocations/s over 25,000 invocations.
    """
    return (
        sa.select(sa.case((lineage.c.organization_id == sa.bindparam(f"{prefix}organization_id"), lineage.c.id)))
        .where(lineage.c.trace_id == sa.bindparam(f"{prefix}external_trace_id"))
        .scalar_subquery()
    )


# The columns an organisation's rows rarely share a value of (see `_in_organization`).
SELECTIVE_COLUMNS = frozenset({"external_agent_id", "external_user_email", "external_session_id"})

REDACTED = "[REDACTED]"
# The columns that identify or describe the external user; an erasure overwrites exactly these.
PERSONAL_TEXT_COLUMNS = ("external_user_id", "external_user_email", "external_user_name")
# `metadata` is the caller's free-form JSON: it may name the person as well as `input` can.
PERSONAL_JSON_COLUMNS = ("input", "output", "external_context", "metadata")
# The payloads (input, output, context): left out of pages and graphs, written as JSON text in CSV.
JSON_COLUMNS = tuple(column.name for column in lineage.c if isinstance(column.type, sa.JSON))

# What a graph node needs; payloads stay out so a 10,000-node graph reads a few MB, not the inputs.
GRAPH_COLUMNS = (
    "id",
    "trace_id",
    "parent_invocation_id",
    "workflow_id",
    "external_system",
    "external_session_id",
    "external_user_email",
    "external_agent_id",
    "external_agent_name",
    "platform",
    "status",
    "cost_usd",
    "duration_ms",
    "request_timestamp",
    "response_timestamp",
)

ERASURE_EVENT = "lineage.user_erased"
_ERASED_VALUES = {name: REDACTED for name in (*PERSONAL_TEXT_COLUMNS, *PERSONAL_JSON_COLUMNS)}
PATH_TYPE = postgresql.ARRAY(sa.Text)


@dataclass(frozen=True, kw_only=True)
class LineageFilters:
    """Which invocations of one organisation a list or an export covers: those whose columns equal `matches`
    (by column name, from lineage_filters.FILTER_COLUMNS) in a time range; None means "any"."""

    organization_id: str
    matches: Mapping[str, str] = field(default_factory=dict)
    # Half-open: start_date <= request_timestamp < end_date.
    start_date: datetime | None = None
    end_date: datetime | None = None


def _in_organization(column: sa.ColumnElement[str], organization_id: str, *, selective: bool) -> sa.ColumnElement[bool]:
    """The organisation scope; checked on the rows found rather than through its index when `selective`.

    An agent id, an email or a session id belongs to one organisation in practice, but the planner assumes
    the columns independent, underestimates the matches tenfold, and ANDs the organisation's entire index
    range into the bitmap (17 ms for an organisation of 100,000 rows, against 3 ms without). COALESCE over
    this NOT NULL column changes no result; it only keeps that index out of such plans.
    """
    return sa.func.coalesce(column, "") == organization_id if selective else column == organization_id


def _conditions(filters: LineageFilters) -> list[sa.ColumnElement[bool]]:
    c = lineage.c
    selective = not SELECTIVE_COLUMNS.isdisjoint(filters.matches)
    conditions = [_in_organization(c.organization_id, filters.organization_id, selective=selective)]
    conditions.extend(c[column] == wanted for column, wanted in filters.matches.items())
    if filters.start_date is not None:
        conditions.append(c.request_timestamp >= filters.start_date)
    if filters.end_date is not None:
        conditions.append(c.request_timestamp < filters.end_date)
    return conditions


def _without_payloads() -> list[sa.Column[Any]]:
    return [column for column in lineage.c if column.name not in JSON_COLUMNS]


def page_statement(filters: LineageFilters, *, page: int, limit: int) -> sa.Select[Any]:
    """Newest first; the id breaks ties so pages never overlap or skip a row."""
    return (
        sa.select(*_without_payloads())
        .where(*_conditions(filters))
        .order_by(lineage.c.request_timestamp.desc(), lineage.c.id.desc())
        .limit(limit)
        .offset((page - 1) * limit)
    )


def count_statement(filters: LineageFilters) -> sa.Select[Any]:
    return sa.select(sa.func.count()).select_from(lineage).where(*_conditions(filters))


async def list_lineage(
    engine: AsyncEngine, *, filters: LineageFilters, page: int, limit: int
) -> tuple[list[dict[str, Any]], int]:
    """One page of invocations without their payloads, and the true number of matching invocations."""
    async with engine.connect() as connection:
        rows = [dict(r._mapping) for r in (await connection.execute(page_statement(filters, page=page, limit=limit)))]
        total = (await connection.execute(count_statement(filters))).scalar_one()
    return rows, total


async def get_lineage(engine: AsyncEngine, *, organization_id: str, invocation_id: str) -> dict[str, Any] | None:
    query = sa.select(lineage).where(lineage.c.id == invocation_id, lineage.c.organization_id == organization_id)
    async with engine.connect() as connection:
        row = (await connection.execute(query)).first()
    return dict(row._mapping) if row else None


SeedCondition = Callable[[sa.FromClause], sa.ColumnElement[bool]]


def _seed_condition(selector: str, value: str) -> SeedCondition:
    """The selection, written against whichever alias of the table a query needs it on."""
    column = SELECTOR_COLUMNS[selector]
    return lambda table: table.c[column] == value


def _walk(
    *,
    name: str,
    seeds: SeedCondition,
    direction: Literal["down", "up"],
    organization_id: str,
    depth: int,
    postgres: bool,
    skip_seeds: bool,
    seeds_indexed: bool,
) -> sa.CTE:
    """A recursive CTE of (id, parent_id, level[, path]) from the seeds, `depth` hops down or up at most.

    On PostgreSQL a path array stops a walk that comes back to an invocation it passed (a corrupt, looping
    ancestry); SQLite has no arrays, and there the depth bound alone ends such a loop.
    """
    start = lineage.alias(f"{name}_seed")
    columns: list[Any] = [
        start.c.id.label("id"),
        start.c.parent_invocation_id.label("parent_id"),
        sa.literal(0, sa.Integer).label("level"),
    ]
    if postgres:
        columns.append(sa.cast(postgresql.array([start.c.id]), PATH_TYPE).label("path"))
    # A session's invocations come from the session index; workflow_id has no index of its own, so a workflow's
    # come from the organisation's.
    in_organization = _in_organization(start.c.organization_id, organization_id, selective=seeds_indexed)
    walk = sa.select(*columns).where(in_organization, seeds(start)).cte(name=name, recursive=True)
    step = lineage.alias(f"{name}_step")
    joined_on = step.c.parent_invocation_id == walk.c.id if direction == "down" else step.c.id == walk.c.parent_id
    conditions = [joined_on, step.c.organization_id == organization_id, walk.c.level < depth]
    if skip_seeds:
        # A child that is itself a seed is walked from its own seed row; entering it twice would multiply
        # the work by the depth of the session. (IS NOT TRUE: a child with a NULL session is no seed.)
        conditions.append(seeds(step).is_not(sa.true()))
    step_columns: list[Any] = [step.c.id, step.c.parent_invocation_id, (walk.c.level + 1).label("level")]
    if postgres:
        conditions.append(sa.not_(step.c.id == sa.any_(walk.c.path)))
        step_columns.append(sa.cast(sa.func.array_append(walk.c.path, step.c.id), PATH_TYPE))
    return walk.union_all(sa.select(*step_columns).where(*conditions))


def graph_statement(
    *,
    organization_id: str,
    selector: str,
    value: str,
    depth: int,
    max_nodes: int,
    postgres: bool,
) -> sa.Select[Any]:
    """One statement for the whole graph: its nodes, each with `level` and `edge_from`.

    `level` is the hop distance from the selection (negative for ancestors); `edge_from` is the parent's id
    when the parent is itself a node of this graph, else NULL (no parent, a parent that does not exist or
    belongs to another organisation, or one outside the selection). At most `max_nodes` + 1 rows come back,
    oldest first, so a caller can tell that the graph was cut.
    """
    c = lineage.c
    seeds = _seed_condition(selector, value)
    single = selector in ("trace_id", "invocation_id")
    common = {
        "seeds": seeds,
        "organization_id": organization_id,
        "depth": depth,
        "postgres": postgres,
        "seeds_indexed": selector == "session_id",
    }
    # A session's or workflow's invocations are often each other's descendants: each is walked from its own seed.
    down = _walk(name="descendants", direction="down", skip_seeds=not single, **common)
    reached_parts = [sa.select(down.c.id, down.c.level)]
    if single:
        up = _walk(name="ancestors", direction="up", skip_seeds=False, **common)
        reached_parts.append(sa.select(up.c.id, (-up.c.level).label("level")))
    reached_cte = sa.union_all(*reached_parts).cte("reached")
    nodes = (
        sa.select(reached_cte.c.id, sa.func.min(reached_cte.c.level).label("level"))
        .group_by(reached_cte.c.id)
        .cte("graph_nodes")
    )
    parent_is_node = c.parent_invocation_id.in_(sa.select(nodes.c.id))
    return (
        sa.select(
            *(c[name] for name in GRAPH_COLUMNS),
            nodes.c.level,
            sa.case((parent_is_node, c.parent_invocation_id), else_=sa.null()).label("edge_from"),
        )
        .join_from(lineage, nodes, nodes.c.id == c.id)
        .order_by(c.request_timestamp, c.id)
        .limit(max_nodes + 1)
    )


async def lineage_graph(
    engine: AsyncEngine,
    *,
    organization_id: str,
    selector: str,
    value: str,
    depth: int,
    max_nodes: int,
) -> list[dict[str, Any]]:
    statement = graph_statement(
        organization_id=organization_id,
        selector=selector,
        value=value,
        depth=depth,
        max_nodes=max_nodes,
        postgres=engine.dialect.name == "postgresql",
    )
    async with engine.connect() as connection:
        return [dict(r._mapping) for r in await connection.execute(statement)]


# Exports read the JSON columns as their JSON text: written out as it is, it needs no parse and re-encode.
EXPORT_COLUMNS = tuple(
    sa.cast(column, sa.Text).label(column.name) if column.name in JSON_COLUMNS else column for column in lineage.c
)
EXPORT_COLUMN_NAMES = tuple(column.name for column in lineage.c)
_KEYSET = (EXPORT_COLUMN_NAMES.index("request_timestamp"), EXPORT_COLUMN_NAMES.index("id"))


def export_batch_statement(
    filters: LineageFilters, *, after: tuple[datetime, str] | None, batch_size: int
) -> sa.Select[Any]:
    """The next batch after the keyset (request_timestamp, id), oldest first."""
    c = lineage.c
    conditions = _conditions(filters)
    if after is not None:
        timestamp, invocation_id = after
        # The redundant `>=` gives the planner an index range on request_timestamp; the OR alone would not.
        conditions.append(c.request_timestamp >= timestamp)
        conditions.append(sa.or_(c.request_timestamp > timestamp, c.id > invocation_id))
    return sa.select(*EXPORT_COLUMNS).where(*conditions).order_by(c.request_timestamp, c.id).limit(batch_size)


async def _read_batch(
    engine: AsyncEngine, *, filters: LineageFilters, after: tuple[datetime, str] | None, batch_size: int
) -> list[tuple[Any, ...]]:
    async with engine.connect() as connection:
        # One statement, so no transaction: without a BEGIN to wait for, the query of a batch read ahead
        # leaves at once and the database works while the previous batch is encoded.
        connection = await connection.execution_options(isolation_level="AUTOCOMMIT")
        result = await connection.execute(export_batch_statement(filters, after=after, batch_size=batch_size))
        # Plain tuples of plain values, which the garbage collector stops tracking: Row objects that live
        # through a batch's encoding were promoted by the thousand and set off full collections of the whole
        # heap (about 100 ms each, two or three per 100,000 rows).
        return [tuple(row) for row in result]


async def iter_lineage_batches(
    engine: AsyncEngine, *, filters: LineageFilters, batch_size: int = 1000
) -> AsyncIterator[list[tuple[Any, ...]]]:
    """Every matching row as a tuple in EXPORT_COLUMN_NAMES order, JSON columns as JSON text, in batches.

    The next batch is read while the caller encodes and sends this one (the database works on its own core),
    so at most two batches are in memory; a connection is held only while a batch is read.
    """
    batch = await _read_batch(engine, filters=filters, after=None, batch_size=batch_size)
    following: asyncio.Task[list[tuple[Any, ...]]] | None = None
    try:
        while batch:
            if len(batch) == batch_size:
                keyset = (batch[-1][_KEYSET[0]], batch[-1][_KEYSET[1]])
                following = asyncio.create_task(
                    _read_batch(engine, filters=filters, after=keyset, batch_size=batch_size)
                )
                # Let the read send its query before the caller's encoding keeps the event loop busy.
                await asyncio.sleep(0)
            yield batch
            batch = await following if following is not None else []
            following = None
    finally:
        if following is not None:
            # The caller stopped early (a client went away): end the read so its connection goes back.
            following.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await following


def _email_matches(email: str) -> sa.ColumnElement[bool]:
    # Case-insensitive, so no copy of a person's data escapes access or erasure through its capitalisation.
    return sa.func.lower(lineage.c.external_user_email) == email.lower()


async def user_lineage(
    engine: AsyncEngine, *, organization_id: str, email: str, page: int, limit: int
) -> tuple[list[dict[str, Any]], int, list[dict[str, Any]]]:
    """A page of everything recorded about one external user, its total, and a per-agent summary."""
    c = lineage.c
    where = (c.organization_id == organization_id, _email_matches(email))
    page_query = sa.select(lineage).where(*where).order_by(c.request_timestamp.desc(), c.id.desc())
    page_query = page_query.limit(limit).offset((page - 1) * limit)
    # Summed as integer micro-dollars: every stored cost is a whole number of them, so the sum is exact.
    micros = sa.cast(sa.func.round(sa.func.coalesce(c.cost_usd, 0.0) * 1_000_000), sa.BigInteger)
    summary_query = (
        sa.select(
            c.external_agent_id,
            sa.func.max(c.external_agent_name).label("external_agent_name"),
            sa.func.max(c.platform).label("platform"),
            sa.func.count().label("invocations"),
            sa.func.sum(micros).label("cost_micros"),
            sa.func.min(c.request_timestamp).label("first_seen"),
            sa.func.max(c.request_timestamp).label("last_seen"),
        )
        .where(*where)
        .group_by(c.external_agent_id)
        .order_by(sa.func.count().desc(), c.external_agent_id)
    )
    async with engine.connect() as connection:
        rows = [dict(r._mapping) for r in await connection.execute(page_query)]
        summary = [dict(r._mapping) for r in await connection.execute(summary_query)]
    total = sum(s["invocations"] for s in summary)
    return rows, total, summary


def email_digest(email: str) -> str:
    """What the audit log keeps of an erased email: enough to prove an erasure for it, not to read it."""
    return hashlib.sha256(email.strip().lower().encode()).hexdigest()


async def erase_user_lineage(engine: AsyncEngine, *, organization_id: str, email: str, actor_id: str | None) -> int:
    """Overwrite one external user's personal fields in the organisation's lineage; rows, costs and links stay.

    The erasure and its audit record commit together: an erasure is never left unrecorded, and a failed
    audit write leaves the data as it was for the caller to retry.
    """
    digest = email_digest(email)
    async with engine.begin() as connection:
        result = await connection.execute(
            lineage.update()
            .where(lineage.c.organization_id == organization_id, _email_matches(email))
            .values(_ERASED_VALUES)
        )
        erased = result.rowcount
        event = audit_row(
            event_type=ERASURE_EVENT,
            organization_id=organization_id,
            actor_id=actor_id,
            resource_type="external_user",
            resource_id=digest,
            details={"email_sha256": digest, "erased_rows": erased},
        )
        await insert_audit_rows(connection, [event])
    return erased


async def erased_since(engine: AsyncEngine, *, organization_id: str, email: str, since: datetime) -> bool:
    """Whether the organisation erased this email's lineage at or after `since` (its audit log says so)."""
    query = sa.select(audit_log.c.id).where(
        audit_log.c.organization_id == organization_id,
        audit_log.c.event_type == ERASURE_EVENT,
        audit_log.c.resource_id == email_digest(email),
        audit_log.c.created_at >= since,
    )
    async with autocommit(engine).connect() as connection:
        return (await connection.execute(query.limit(1))).first() is not None


def erased(row: dict[str, Any]) -> dict[str, Any]:
    """A lineage row as an erasure leaves it: personal fields [REDACTED], everything else kept."""
    return {**row, **_ERASED_VALUES}
