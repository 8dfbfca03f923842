"""The lineage filters and the graph selectors, declared once: the REST query parameters, the MCP tool parameters,
the command-line options, the node's parsing and the store's conditions all come from these two models.

Every value is text as a channel receives it; nodes/lineage.py validates it (a status from the list, dates with a
time zone, exactly one selector) so each channel answers a bad value with the same 400. `Matches` says which
`invocation_lineage` column a value must equal, so the store builds its conditions without naming a filter.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Annotated

from pydantic import BaseModel, Field
from pydantic.fields import FieldInfo

from external_agents.field_sets import CliFlag, CliOption, cli_options

DATE_HELP = "ISO 8601 with a time zone, e.g. 2025-01-31T00:00:00Z"


@dataclass(frozen=True)
class Matches:
    """Field metadata: the value selects the invocations whose `invocation_lineage` column equals it."""

    column: str


class LineageFilterParams(BaseModel):
    """Which invocations a lineage list or export covers; each filter left out (or empty) matches any."""

    external_user_email: Annotated[str | None, Matches("external_user_email"), CliFlag("--user-email")] = Field(
        None, description="Only this end user's invocations."
    )
    external_agent_id: Annotated[str | None, Matches("external_agent_id"), CliFlag("--agent-id")] = Field(
        None, description="Only this agent's invocations."
    )
    status: Annotated[str | None, Matches("status")] = Field(
        None, description="Only invocations in this status: pending, success, failure, timeout or denied."
    )
    external_system: Annotated[str | None, Matches("external_system"), CliFlag("--system")] = Field(
        None, description="Only calls from this external system."
    )
    session_id: Annotated[str | None, Matches("external_session_id")] = Field(
        None, description="Only this external session."
    )
    # A half-open range: start_date <= request_timestamp < end_date.
    start_date: str | None = Field(None, description=f"From this time, inclusive; {DATE_HELP}.")
    end_date: str | None = Field(None, description=f"Until this time, exclusive; {DATE_HELP}.")


class GraphSelectors(BaseModel):
    """What a lineage graph is drawn around: exactly one of these, given."""

    session_id: Annotated[str | None, Matches("external_session_id")] = Field(
        None, description="All invocations of this external session."
    )
    trace_id: Annotated[str | None, Matches("trace_id")] = Field(None, description="The invocation with this trace_id.")
    invocation_id: Annotated[str | None, Matches("id")] = Field(None, description="The invocation with this id.")
    workflow_id: Annotated[str | None, Matches("workflow_id")] = Field(
        None, description="All invocations made by this workflow."
    )


def _matches(field: FieldInfo) -> str | None:
    return next((item.column for item in field.metadata if isinstance(item, Matches)), None)


def _columns(model: type[BaseModel]) -> dict[str, str]:
    return {name: column for name, field in model.model_fields.items() if (column := _matches(field)) is not None}


FILTER_NAMES = tuple(LineageFilterParams.model_fields)
# The filters that select by equality, and the column each compares (the dates bound a range instead).
FILTER_COLUMNS = _columns(LineageFilterParams)
GRAPH_SELECTORS = tuple(GraphSelectors.model_fields)
SELECTOR_COLUMNS = _columns(GraphSelectors)


def lineage_filter_options() -> tuple[CliOption, ...]:
    """The command-line options of `lineage list` and `lineage export` (`--user-email`, `--start-date`, ...)."""
    return cli_options(LineageFilterParams)


def graph_selector_options() -> tuple[CliOption, ...]:
    """The command-line options of `lineage graph` (`--session-id`, `--trace-id`, ...)."""
    return cli_options(GraphSelectors)
