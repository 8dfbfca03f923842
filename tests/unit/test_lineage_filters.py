"""The lineage filter and graph selector sets: their names (the channels' contract), their columns, their options."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest

from external_agents.errors import ValidationError
from external_agents.lineage_filters import (
    FILTER_COLUMNS,
    FILTER_NAMES,
    GRAPH_SELECTORS,
    SELECTOR_COLUMNS,
    graph_selector_options,
    lineage_filter_options,
)
from external_agents.models import TABLES
from external_agents.nodes.lineage import filters_from_export, parse_filters, prepare_export

LINEAGE = TABLES["invocation_lineage"]


def test_the_filter_and_selector_names_are_the_apis() -> None:
    assert FILTER_NAMES == (
        "external_user_email",
        "external_agent_id",
        "status",
        "external_system",
        "session_id",
        "start_date",
        "end_date",
    )
    assert GRAPH_SELECTORS == ("session_id", "trace_id", "invocation_id", "workflow_id")


def test_every_filter_compares_a_lineage_column_except_the_date_range() -> None:
    assert set(FILTER_NAMES) - set(FILTER_COLUMNS) == {"start_date", "end_date"}
    assert FILTER_COLUMNS["session_id"] == "external_session_id"
    assert set(SELECTOR_COLUMNS) == set(GRAPH_SELECTORS)
    assert SELECTOR_COLUMNS["invocation_id"] == "id"
    for column in (*FILTER_COLUMNS.values(), *SELECTOR_COLUMNS.values()):
        assert column in LINEAGE.c


def test_the_command_line_options_are_todays_flags() -> None:
    assert [option.flag for option in lineage_filter_options()] == [
        "--user-email",
        "--agent-id",
        "--status",
        "--system",
        "--session-id",
        "--start-date",
        "--end-date",
    ]
    assert [option.flag for option in graph_selector_options()] == [
        "--session-id",
        "--trace-id",
        "--invocation-id",
        "--workflow-id",
    ]
    assert all(option.annotation == str | None for option in lineage_filter_options())
    assert "inclusive" in next(o.help for o in lineage_filter_options() if o.name == "start_date")


def test_parsed_filters_match_by_column_and_survive_the_export_round_trip() -> None:
    raw = {
        "external_agent_id": "agent-1",
        "session_id": "s-1",
        "status": "",
        "start_date": "2025-01-01T00:00:00+02:00",
        "end_date": None,
    }
    filters = parse_filters(raw, organization_id="org-1")
    assert dict(filters.matches) == {"external_agent_id": "agent-1", "external_session_id": "s-1"}
    assert filters.start_date == datetime(2024, 12, 31, 22, tzinfo=UTC) and filters.end_date is None
    export = prepare_export(caller={"organization_id": "org-1"}, export_format="csv", filters=raw)
    assert filters_from_export(export) == filters


@pytest.mark.parametrize(
    ("raw", "message"),
    [
        ({"agent": "x"}, "agent: unknown filter; expected any of external_user_email, external_agent_id,"),
        ({"status": "done"}, "status: must be one of pending, success, failure, timeout, denied"),
        ({"end_date": "2025-01-01"}, "end_date: must include a time zone"),
    ],
)
def test_bad_filters_are_refused_naming_the_filter(raw: dict[str, str], message: str) -> None:
    with pytest.raises(ValidationError) as refused:
        parse_filters(raw, organization_id="org-1")
    assert refused.value.detail.startswith(message)
