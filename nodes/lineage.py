"""Nodes of lineage and compliance: list, get, graph, export preparation, and a user's access and erasure.

Each node validates its inputs and delegates to `stores.lineage`; the plain functions here (filter parsing,
presentation, graph shaping, export encoding) are what every channel shares, so a bad date or a second graph
selector gets the same 400 from REST, MCP and the CLI. An export is prepared by a workflow (validation, media
type, file name) and then streamed by `export_chunks`, outside the workflow, because a stream is not a JSON
value that could pass between nodes.
"""

from __future__ import annotations

import csv
import io
import uuid
from collections.abc import AsyncIterator, Callable, Mapping, Sequence
from datetime import UTC, datetime, timedelta
from json.encoder import encode_basestring  # the C implementation json.dumps uses
from typing import Any

import sqlalchemy as sa
from kailash.nodes.base import register_node
from sqlalchemy.ext.asyncio import AsyncEngine

from external_agents.errors import NotFoundError, ValidationError
from external_agents.lineage_filters import FILTER_COLUMNS, FILTER_NAMES, GRAPH_SELECTORS
from external_agents.money import to_micros, to_usd
from external_agents.nodes.base import ExternalAgentNode, dependency, value
from external_agents.request_models import reject_unstorable
from external_agents.stores import lineage as lineage_store
from external_agents.stores.lineage import LineageFilters

STATUSES = ("pending", "success", "failure", "timeout", "denied")
MAX_PAGE = 1_000_000
MAX_PAGE_SIZE = 100
DEFAULT_PAGE_SIZE = 20
DEFAULT_DEPTH = 10
MAX_DEPTH = 100
# A graph larger than this is cut (oldest invocations kept) and says so: a response of a million nodes
# would help no one and could exhaust the server.
MAX_GRAPH_NODES = 50_000
EXPORT_FORMATS = {
    "json": ("application/json", "json"),
    "csv": ("text/csv; charset=utf-8", "csv"),
    "openlineage": ("application/x-ndjson", "ndjson"),
}
EXPORT_BATCH_SIZE = 1_000

OPENLINEAGE_NAMESPACE = "external-agents"
OPENLINEAGE_PRODUCER = "urn:kailash:external-agents"
# Invocation and session ids become OpenLineage run ids (UUIDs); a non-UUID id maps to a stable UUIDv5.
_RUN_ID_NAMESPACE = uuid.uuid5(uuid.NAMESPACE_URL, "urn:kailash:external-agents:lineage")

PLATFORM_COLOURS = {
    "teams": "#6264A7",
    "slack": "#4A154B",
    "discord": "#5865F2",
    "telegram": "#26A5E4",
    "notion": "#000000",
    "custom_http": "#0F766E",
}
NEUTRAL_COLOUR = "#6B7280"
STATUS_COLOURS = {
    "success": "#16A34A",
    "failure": "#DC2626",
    "timeout": "#D97706",
    "denied": "#9333EA",
    "pending": "#6B7280",
}


# --- Input validation -------------------------------------------------------------------------------------


def _text(name: str, raw: Any) -> str | None:
    """An optional text input; empty counts as not given, as for every list filter of the API."""
    if raw is None or raw == "":
        return None
    if not isinstance(raw, str):
        raise ValidationError(f"{name}: must be a string")
    reject_unstorable(raw, name)
    return raw


def parse_timestamp(name: str, raw: str) -> datetime:
    """An ISO 8601 timestamp with a time zone; a naive one is refused rather than guessed."""
    try:
        parsed = datetime.fromisoformat(raw)
    except ValueError:
        raise ValidationError(
            f"{name}: not an ISO 8601 timestamp: {raw!r} (e.g. 2025-01-31T00:00:00Z; "
            "in a URL a '+' must be sent as %2B)"
        ) from None
    if parsed.tzinfo is None or parsed.utcoffset() is None:
        raise ValidationError(f"{name}: must include a time zone, e.g. {raw}Z or {raw}+00:00")
    return parsed.astimezone(UTC)


def parse_filters(raw: dict[str, Any], *, organization_id: str) -> LineageFilters:
    unknown = sorted(set(raw) - set(FILTER_NAMES))
    if unknown:
        raise ValidationError(f"{unknown[0]}: unknown filter; expected any of {', '.join(FILTER_NAMES)}")
    texts = {name: _text(name, raw.get(name)) for name in FILTER_NAMES}
    if texts["status"] is not None and texts["status"] not in STATUSES:
        raise ValidationError(f"status: must be one of {', '.join(STATUSES)}")
    start = parse_timestamp("start_date", texts["start_date"]) if texts["start_date"] else None
    end = parse_timestamp("end_date", texts["end_date"]) if texts["end_date"] else None
    if start is not None and end is not None and start >= end:
        raise ValidationError("start_date: must be before end_date")
    return LineageFilters(
        organization_id=organization_id,
        matches={column: texts[name] for name, column in FILTER_COLUMNS.items() if texts[name] is not None},
        start_date=start,
        end_date=end,
    )


def _bounded_int(name: str, raw: Any, *, low: int, high: int) -> int:
    if isinstance(raw, bool) or not isinstance(raw, int | str):
        raise ValidationError(f"{name}: must be an integer from {low} to {high}")
    try:
        number = int(raw)
    except ValueError:
        raise ValidationError(f"{name}: must be an integer from {low} to {high}") from None
    if not low <= number <= high:
        raise ValidationError(f"{name}: must be an integer from {low} to {high}")
    return number


def parse_page(page: Any, limit: Any) -> tuple[int, int]:
    return (
        _bounded_int("page", page, low=1, high=MAX_PAGE),
        _bounded_int("limit", limit, low=1, high=MAX_PAGE_SIZE),
    )


def parse_graph_selection(selectors: dict[str, Any], depth: Any) -> tuple[str, str, int]:
    """Exactly one of session_id, trace_id, invocation_id, workflow_id, and a depth from 0 to MAX_DEPTH."""
    unknown = sorted(set(selectors) - set(GRAPH_SELECTORS))
    if unknown:
        raise ValidationError(f"{unknown[0]}: unknown selector; expected one of {', '.join(GRAPH_SELECTORS)}")
    given = [name for name in GRAPH_SELECTORS if selectors.get(name) is not None]
    if len(given) != 1:
        got = f"; got {' and '.join(given)}" if given else ""
        raise ValidationError(f"Give exactly one of {', '.join(GRAPH_SELECTORS)}{got}")
    selector = given[0]
    raw = selectors[selector]
    if not isinstance(raw, str) or not raw:
        raise ValidationError(f"{selector}: must be a non-empty string")
    reject_unstorable(raw, selector)
    return selector, raw, _bounded_int("depth", DEFAULT_DEPTH if depth is None else depth, low=0, high=MAX_DEPTH)


def parse_email(raw: Any) -> str:
    if not isinstance(raw, str) or not raw.strip():
        raise ValidationError("email: must be a non-empty string")
    reject_unstorable(raw, "email")
    return raw.strip()


# --- Presentation -----------------------------------------------------------------------------------------


def _iso(moment: datetime | None) -> str | None:
    return moment.isoformat() if moment is not None else None


def _from_iso(text: str | None) -> datetime | None:
    return datetime.fromisoformat(text) if text is not None else None


def present_invocation(row: dict[str, Any]) -> dict[str, Any]:
    """One invocation with its five identity layers grouped; payloads only when the row was read with them."""
    with_payloads = "input" in row
    external_system: dict[str, Any] = {
        "name": row["external_system"],
        "session_id": row["external_session_id"],
        "trace_id": row["external_trace_id"],
    }
    if with_payloads:
        external_system["context"] = row["external_context"]
    record: dict[str, Any] = {
        "invocation_id": row["id"],
        "external_user": {
            "id": row["external_user_id"],
            "email": row["external_user_email"],
            "name": row["external_user_name"],
        },
        "external_system": external_system,
        "caller": {"api_key_id": row["api_key_id"], "organization_id": row["organization_id"]},
        "agent": {"id": row["external_agent_id"], "name": row["external_agent_name"], "platform": row["platform"]},
        "tracing": {
            "trace_id": row["trace_id"],
            "parent_invocation_id": row["parent_invocation_id"],
            "workflow_id": row["workflow_id"],
        },
        "status": row["status"],
        "denial_reason": row["denial_reason"],
        "cost_usd": row["cost_usd"],
        "duration_ms": row["duration_ms"],
        "request_timestamp": _iso(row["request_timestamp"]),
        "response_timestamp": _iso(row["response_timestamp"]),
        "webhook_delivery_status": row["webhook_delivery_status"],
        "webhook_delivery_error": row["webhook_delivery_error"],
        "webhook_attempts": row["webhook_attempts"],
        # The platform's reported cost when above what was billed, and why the record differs from the answer.
        "reported_cost_usd": row["reported_cost_usd"],
        "record_note": row["record_note"],
    }
    if with_payloads:
        record["input"] = row["input"]
        record["output"] = row["output"]
        record["metadata"] = row["metadata"]
    return record


def _page(items: list[dict[str, Any]], *, total: int, page: int, limit: int) -> dict[str, Any]:
    return {"items": items, "total": total, "page": page, "limit": limit, "has_more": page * limit < total}


def _graph_node(row: dict[str, Any]) -> dict[str, Any]:
    platform = row["platform"]
    agent_name = row["external_agent_name"] or row["external_agent_id"] or "unknown agent"
    return {
        "id": row["id"],
        "type": "external_agent" if platform else "invocation",
        "trace_id": row["trace_id"],
        "parent_invocation_id": row["parent_invocation_id"],
        "workflow_id": row["workflow_id"],
        "agent": {"id": row["external_agent_id"], "name": row["external_agent_name"], "platform": platform},
        "status": row["status"],
        "cost_usd": row["cost_usd"],
        "duration_ms": row["duration_ms"],
        "request_timestamp": _iso(row["request_timestamp"]),
        "response_timestamp": _iso(row["response_timestamp"]),
        "external_user_email": row["external_user_email"],
        "external_system": row["external_system"],
        "external_session_id": row["external_session_id"],
        "level": row["level"],
        "ui": {
            "label": f"{agent_name} ({platform})" if platform else agent_name,
            "color": PLATFORM_COLOURS.get(platform or "", NEUTRAL_COLOUR),
            "status_color": STATUS_COLOURS.get(row["status"], NEUTRAL_COLOUR),
            "icon": platform or "invocation",
        },
    }


def present_graph(
    rows: list[dict[str, Any]], *, selector: str, value: str, depth: int, max_nodes: int
) -> dict[str, Any]:
    """Nodes and parent -> child edges as the database computed them; totals in exact micro-dollars."""
    truncated = len(rows) > max_nodes
    rows = rows[:max_nodes]
    kept = {row["id"] for row in rows}
    nodes = [_graph_node(row) for row in rows]
    edges = [
        {
            "id": f"{row['edge_from']}->{row['id']}",
            "source": row["edge_from"],
            "target": row["id"],
            "invocation_id": row["id"],
            "cost_usd": row["cost_usd"],
        }
        for row in rows
        # A cut graph may have lost a parent the database still linked to.
        if row["edge_from"] is not None and row["edge_from"] in kept
    ]
    total_micros = sum(to_micros(row["cost_usd"]) for row in rows if row["cost_usd"] is not None)
    return {
        "nodes": nodes,
        "edges": edges,
        "metadata": {
            "total_nodes": len(nodes),
            "total_edges": len(edges),
            "external_nodes": sum(1 for node in nodes if node["type"] == "external_agent"),
            "total_cost_usd": to_usd(total_micros),
            "selection": {selector: value},
            "depth": depth,
            "truncated": truncated,
        },
    }


# --- Export -----------------------------------------------------------------------------------------------


def _iso_json(moment: datetime) -> str:
    return f'"{moment.isoformat()}"'


def _column_encoders() -> list[Callable[[Any], str]]:
    """Per column, how json.dumps(ensure_ascii=False) would write a non-null value; JSON text is kept as is.

    Chosen once from the column types, so a row is encoded without building a dict of it first.
    """
    by_type: dict[type, Callable[[Any], str]] = {str: encode_basestring, float: repr, int: repr, datetime: _iso_json}
    encoders: list[Callable[[Any], str]] = []
    for column in lineage_store.lineage.c:
        sql_type = column.type
        if isinstance(sql_type, sa.types.TypeDecorator):
            sql_type = sql_type.impl_instance
        encoders.append(str if column.name in lineage_store.JSON_COLUMNS else by_type[sql_type.python_type])
    return encoders


_EXPORT_KEYS = [encode_basestring(column.name) + ":" for column in lineage_store.lineage.c]
_EXPORT_ENCODERS = _column_encoders()


def export_json_object(row: Sequence[Any]) -> str:
    """One exported row as a JSON object, keys in the table's column order."""
    fields = [
        key + ("null" if item is None else encode(item))
        for key, encode, item in zip(_EXPORT_KEYS, _EXPORT_ENCODERS, row, strict=True)
    ]
    return "{" + ",".join(fields) + "}"


async def _json_chunks(batches: AsyncIterator[list[Any]]) -> AsyncIterator[str]:
    yield "["
    separator = "\n"
    async for batch in batches:
        yield separator + ",\n".join([export_json_object(row) for row in batch])
        separator = ",\n"
    yield "\n]\n"


_TIMESTAMP_INDEXES = [index for index, encode in enumerate(_EXPORT_ENCODERS) if encode is _iso_json]


def export_csv_row(row: Sequence[Any]) -> list[Any]:
    """One exported row as CSV cells: the csv module writes None as empty, numbers and text as they are."""
    cells = list(row)
    for index in _TIMESTAMP_INDEXES:
        if cells[index] is not None:
            cells[index] = cells[index].isoformat()
    return cells


async def _csv_chunks(batches: AsyncIterator[list[Any]]) -> AsyncIterator[str]:
    """RFC 4180 CSV; JSON columns as their JSON text (so the string "5" and the number 5 stay apart), NULL empty."""
    buffer = io.StringIO()
    writer = csv.writer(buffer)
    writer.writerow([column.name for column in lineage_store.lineage.c])
    async for batch in batches:
        writer.writerows([export_csv_row(row) for row in batch])
        yield buffer.getvalue()
        buffer.seek(0)
        buffer.truncate()
    if buffer.tell():
        yield buffer.getvalue()


def _run_id(raw: str) -> str:
    try:
        return str(uuid.UUID(raw))
    except ValueError:
        return str(uuid.uuid5(_RUN_ID_NAMESPACE, raw))


def openlineage_events(row: Mapping[str, Any]) -> list[Any]:
    """A START event and, once the invocation ended, a COMPLETE (success) or FAIL event, as client types.

    Personal fields and payloads stay out: a lineage tool needs what ran, when and how it ended, not who
    asked what. The caller's own `metadata` for the invocation goes in as a tag holding its JSON text, exactly
    as stored (the client's serialiser would drop nulls inside an object facet). A pending invocation has not
    ended, so it has only its START.
    """
    from openlineage.client.event_v2 import Job, Run, RunEvent, RunState
    from openlineage.client.facet_v2 import error_message_run, parent_run, tags_run

    run_id = _run_id(row["id"])
    facets: dict[str, Any] = {
        "tags": tags_run.TagsRunFacet(
            tags=[
                tags_run.TagsRunFacetFields(key=key, value=str(row[column]), source="EXTERNAL_AGENTS")
                for key, column in (
                    ("invocation_id", "id"),
                    ("trace_id", "trace_id"),
                    ("parent_invocation_id", "parent_invocation_id"),
                    ("status", "status"),
                    ("platform", "platform"),
                    ("external_agent_id", "external_agent_id"),
                    ("cost_usd", "cost_usd"),
                    ("duration_ms", "duration_ms"),
                    ("metadata", "metadata"),
                )
                if row[column] is not None
            ],
            producer=OPENLINEAGE_PRODUCER,
        )
    }
    if row["external_session_id"] is not None:
        system = row["external_system"] or "external-system"
        session_key = f"{row['organization_id']}\x1f{system}\x1f{row['external_session_id']}"
        facets["parent"] = parent_run.ParentRunFacet(
            run=parent_run.Run(runId=str(uuid.uuid5(_RUN_ID_NAMESPACE, session_key))),
            job=parent_run.Job(namespace=OPENLINEAGE_NAMESPACE, name=system),
            producer=OPENLINEAGE_PRODUCER,
        )
    job = Job(
        namespace=OPENLINEAGE_NAMESPACE,
        name=row["external_agent_name"] or row["external_agent_id"] or "unknown-agent",
    )
    started: datetime = row["request_timestamp"]
    events = [
        RunEvent(
            eventType=RunState.START,
            eventTime=started.isoformat(),
            run=Run(runId=run_id, facets=facets),
            job=job,
            producer=OPENLINEAGE_PRODUCER,
        )
    ]
    if row["status"] == "pending":
        return events
    ended = row["response_timestamp"] or started + timedelta(milliseconds=row["duration_ms"] or 0)
    end_facets = dict(facets)
    state = RunState.COMPLETE
    if row["status"] != "success":
        state = RunState.FAIL
        message = row["denial_reason"] or row["webhook_delivery_error"] or row["status"]
        end_facets["errorMessage"] = error_message_run.ErrorMessageRunFacet(
            message=message, programmingLanguage="PYTHON", producer=OPENLINEAGE_PRODUCER
        )
    events.append(
        RunEvent(
            eventType=state,
            eventTime=ended.isoformat(),
            run=Run(runId=run_id, facets=end_facets),
            job=job,
            producer=OPENLINEAGE_PRODUCER,
        )
    )
    return events


async def _openlineage_chunks(batches: AsyncIterator[list[Any]]) -> AsyncIterator[str]:
    from openlineage.client.serde import Serde

    async for batch in batches:
        yield "".join(
            Serde.to_json(event) + "\n"
            for row in batch
            for event in openlineage_events(dict(zip(lineage_store.EXPORT_COLUMN_NAMES, row, strict=True)))
        )


def filters_from_export(export: dict[str, Any]) -> LineageFilters:
    """The filters a prepared export carries (JSON between nodes), as the store takes them."""
    values = export["filters"]
    return LineageFilters(
        organization_id=values["organization_id"],
        matches=values["matches"],
        start_date=_from_iso(values["start_date"]),
        end_date=_from_iso(values["end_date"]),
    )


async def export_chunks(
    engine: AsyncEngine, *, export: dict[str, Any], batch_size: int = EXPORT_BATCH_SIZE
) -> AsyncIterator[str]:
    """The text of a prepared export, one chunk per batch of rows, read as it is sent.

    The first batch is read before this returns, so a database that is down or not migrated fails the call
    itself (a 503, one line from the CLI) instead of a stream that has sent its "[" and then breaks.
    """
    batches = lineage_store.iter_lineage_batches(engine, filters=filters_from_export(export), batch_size=batch_size)
    first = await anext(batches, None)

    async def read() -> AsyncIterator[list[Any]]:
        if first is None:
            return
        yield first
        async for batch in batches:
            yield batch

    encoders = {"json": _json_chunks, "csv": _csv_chunks, "openlineage": _openlineage_chunks}
    return encoders[export["format"]](read())


def prepare_export(*, caller: dict[str, Any], export_format: Any, filters: dict[str, Any]) -> dict[str, Any]:
    if export_format not in EXPORT_FORMATS:
        raise ValidationError(f"format: must be one of {', '.join(EXPORT_FORMATS)}")
    parsed = parse_filters(filters, organization_id=caller["organization_id"])
    media_type, extension = EXPORT_FORMATS[export_format]
    stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%SZ")
    return {
        "format": export_format,
        "media_type": media_type,
        "filename": f"lineage-{stamp}.{extension}",
        "filters": {
            "organization_id": parsed.organization_id,
            "matches": dict(parsed.matches),
            "start_date": _iso(parsed.start_date),
            "end_date": _iso(parsed.end_date),
        },
    }


def present_user_summary(summary: list[dict[str, Any]]) -> dict[str, Any]:
    total_micros = sum(int(item["cost_micros"] or 0) for item in summary)
    return {
        "invocations": sum(item["invocations"] for item in summary),
        "total_cost_usd": to_usd(total_micros),
        "first_seen": _iso(min((item["first_seen"] for item in summary), default=None)),
        "last_seen": _iso(max((item["last_seen"] for item in summary), default=None)),
        "agents": [
            {
                "id": item["external_agent_id"],
                "name": item["external_agent_name"],
                "platform": item["platform"],
                "invocations": item["invocations"],
                "cost_usd": to_usd(int(item["cost_micros"] or 0)),
            }
            for item in summary
        ],
    }


# --- Nodes ------------------------------------------------------------------------------------------------


def _engine() -> Any:
    return dependency("engine", "SQLAlchemy AsyncEngine")


def _caller() -> Any:
    return value("caller", "{api_key_id, organization_id}")


@register_node()
class ListLineageNode(ExternalAgentNode):
    """One page of the organisation's invocations, newest first, filtered, with the true total."""

    def get_parameters(self) -> dict[str, Any]:
        return {
            "engine": _engine(),
            "caller": _caller(),
            "filters": value("filters", f"any of {', '.join(FILTER_NAMES)}", required=False, default=None),
            "page": value("page", "1-based page number", required=False, default=1),
            "limit": value("limit", f"page size, at most {MAX_PAGE_SIZE}", required=False, default=DEFAULT_PAGE_SIZE),
        }

    async def async_run(self, **kw: Any) -> dict[str, Any]:
        filters = parse_filters(kw.get("filters") or {}, organization_id=kw["caller"]["organization_id"])
        page, limit = parse_page(kw["page"], kw["limit"])
        rows, total = await lineage_store.list_lineage(kw["engine"], filters=filters, page=page, limit=limit)
        return {"page_of_lineage": _page([present_invocation(r) for r in rows], total=total, page=page, limit=limit)}


@register_node()
class GetLineageNode(ExternalAgentNode):
    """One invocation of the caller's organisation, in full (another organisation's is not found)."""

    def get_parameters(self) -> dict[str, Any]:
        return {"engine": _engine(), "caller": _caller(), "invocation_id": value("invocation_id", "the invocation")}

    async def async_run(self, **kw: Any) -> dict[str, Any]:
        invocation_id = _text("invocation_id", kw["invocation_id"]) or ""
        row = await lineage_store.get_lineage(
            kw["engine"], organization_id=kw["caller"]["organization_id"], invocation_id=invocation_id
        )
        if row is None:
            raise NotFoundError(f"Invocation '{invocation_id}' not found")
        return {"invocation": present_invocation(row)}


@register_node()
class LineageGraphNode(ExternalAgentNode):
    """The invocation graph around a session, workflow, trace or invocation, computed by the database."""

    def get_parameters(self) -> dict[str, Any]:
        return {
            "engine": _engine(),
            "max_nodes": value("max_nodes", "cut the graph past this many nodes", required=False, default=None),
            "caller": _caller(),
            "selectors": value("selectors", f"exactly one of {', '.join(GRAPH_SELECTORS)}"),
            "depth": value("depth", f"hops from the selection, 0 to {MAX_DEPTH}", required=False, default=None),
        }

    async def async_run(self, **kw: Any) -> dict[str, Any]:
        selector, selected, depth = parse_graph_selection(kw["selectors"] or {}, kw.get("depth"))
        max_nodes = kw.get("max_nodes") or MAX_GRAPH_NODES
        rows = await lineage_store.lineage_graph(
            kw["engine"],
            organization_id=kw["caller"]["organization_id"],
            selector=selector,
            value=selected,
            depth=depth,
            max_nodes=max_nodes,
        )
        if not rows and selector in ("trace_id", "invocation_id"):
            raise NotFoundError(f"No invocation with {selector} '{selected}'")
        return {"graph": present_graph(rows, selector=selector, value=selected, depth=depth, max_nodes=max_nodes)}


@register_node()
class PrepareLineageExportNode(ExternalAgentNode):
    """Validate an export's format and filters; the channel then streams `export_chunks` of the result."""

    def get_parameters(self) -> dict[str, Any]:
        return {
            "caller": _caller(),
            "format": value("format", f"one of {', '.join(EXPORT_FORMATS)}", required=False, default="json"),
            "filters": value("filters", f"any of {', '.join(FILTER_NAMES)}", required=False, default=None),
        }

    async def async_run(self, **kw: Any) -> dict[str, Any]:
        return {"export": prepare_export(caller=kw["caller"], export_format=kw["format"], filters=kw["filters"] or {})}


@register_node()
class GetUserLineageNode(ExternalAgentNode):
    """GDPR access: everything recorded about one external user across the organisation's agents."""

    def get_parameters(self) -> dict[str, Any]:
        return {
            "engine": _engine(),
            "caller": _caller(),
            "email": value("email", "the external user's email (matched case-insensitively)"),
            "page": value("page", "1-based page number", required=False, default=1),
            "limit": value("limit", f"page size, at most {MAX_PAGE_SIZE}", required=False, default=MAX_PAGE_SIZE),
        }

    async def async_run(self, **kw: Any) -> dict[str, Any]:
        email = parse_email(kw["email"])
        page, limit = parse_page(kw["page"], kw["limit"])
        rows, total, summary = await lineage_store.user_lineage(
            kw["engine"], organization_id=kw["caller"]["organization_id"], email=email, page=page, limit=limit
        )
        listing = _page([present_invocation(r) for r in rows], total=total, page=page, limit=limit)
        return {"user_lineage": {"email": email, "summary": present_user_summary(summary), **listing}}


@register_node()
class EraseUserLineageNode(ExternalAgentNode):
    """GDPR erasure: redact one external user's personal fields; the erasure is audited in the same commit."""

    def get_parameters(self) -> dict[str, Any]:
        return {
            "engine": _engine(),
            "caller": _caller(),
            "email": value("email", "the external user's email (matched case-insensitively)"),
        }

    async def async_run(self, **kw: Any) -> dict[str, Any]:
        email = parse_email(kw["email"])
        erased = await lineage_store.erase_user_lineage(
            kw["engine"],
            organization_id=kw["caller"]["organization_id"],
            email=email,
            actor_id=kw["caller"]["api_key_id"],
        )
        return {"erasure": {"erased_rows": erased}}
