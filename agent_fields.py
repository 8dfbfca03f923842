"""An agent's fields and limits, declared once: the API validates with these models, and the presenter, the row
builder, the MCP tool and the command-line options are derived from them.

The tables (models/external_agent.py, models/external_agent_limits.py) stay the source of the database schema; a
unit test checks that every limit here has a column there of a compatible type, and every column a field. Adding
a limit is a field in `AgentLimits`, a column in `external_agent_limits` and a migration: the store writes every
column of that table, the presenter shows every limit, the PATCH may clear it (`CLEARABLE`), and the MCP tool and
the command line offer it.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Annotated, Any

from pydantic import BaseModel, ConfigDict, Field, StringConstraints

from external_agents.field_sets import CliOption, cli_options


@dataclass(frozen=True)
class Clearable:
    """Field metadata: null is a value of its own ("no limit"), so a PATCH may set the field to null."""


CLEARABLE = Clearable()

Name = Annotated[str, StringConstraints(min_length=1, max_length=255, pattern=r"\S")]
Description = Annotated[str | None, Field(max_length=10_000, description="What the agent does.")]
MAX_PER_PERIOD = 10_000_000
MAX_EXECUTIONS = 1_000_000_000


def _cost(description: str) -> Any:
    return Field(None, ge=0, allow_inf_nan=False, strict=True, description=description)


def _per_period(period: str) -> Any:
    return Field(
        None,
        ge=1,
        le=MAX_PER_PERIOD,
        strict=True,
        description=f"Invocations allowed per {period}; the configured default when left out.",
    )


def _executions(period: str) -> Any:
    return Field(
        None,
        ge=1,
        le=MAX_EXECUTIONS,
        strict=True,
        description=f"Invocations per UTC {period} (402 beyond); no limit when null or left out.",
    )


class AgentLimits(BaseModel):
    """The budget, rate and execution limits an agent is registered with, or patched to (None: not given)."""

    model_config = ConfigDict(extra="forbid")

    max_monthly_cost: float | None = _cost("US dollars a UTC month may cost; the configured default when left out.")
    max_daily_cost: float | None = _cost("US dollars a UTC day may cost; the configured default when left out.")
    cost_per_execution: float | None = _cost(
        "US dollars one invocation is estimated to cost; the configured default when left out."
    )
    requests_per_minute: int | None = _per_period("minute")
    requests_per_hour: int | None = _per_period("hour")
    requests_per_day: int | None = _per_period("day")
    daily_execution_limit: Annotated[int | None, CLEARABLE] = _executions("day")
    monthly_execution_limit: Annotated[int | None, CLEARABLE] = _executions("month")


class AgentCreate(AgentLimits):
    name: Annotated[Name, Field(description="Unique within the organisation.")]
    description: Description = None
    platform: Annotated[str, Field(min_length=1, max_length=50, description="The agent's platform.")]
    platform_config: Annotated[
        dict[str, Any],
        Field(
            description="Where to deliver: teams/slack/discord {webhook_url}, telegram {bot_token, chat_id}, "
            "notion {database_id}, custom_http {url, method?, headers?, timeout?}."
        ),
    ]
    auth_config: Annotated[
        dict[str, Any],
        Field(
            default_factory=lambda: {"auth_type": "none", "credentials": {}},
            description="{auth_type, credentials}, e.g. {'auth_type': 'bearer_token', 'credentials': "
            "{'token': '...'}}. Default: none.",
        ),
    ]


class AgentUpdate(AgentLimits):
    name: Annotated[Name | None, Field(description="A new name.")] = None
    description: Annotated[Description, CLEARABLE] = None
    platform_config: dict[str, Any] | None = None
    auth_config: dict[str, Any] | None = None


LIMIT_FIELDS = tuple(AgentLimits.model_fields)
# The fields a PATCH may set to null; null in any other field is refused.
CLEARABLE_FIELDS = tuple(
    name for name, field in AgentUpdate.model_fields.items() if any(isinstance(m, Clearable) for m in field.metadata)
)


def limit_values(model: AgentLimits) -> dict[str, Any]:
    """The limits a request gave or left out (None), by field."""
    return {name: getattr(model, name) for name in LIMIT_FIELDS}


def present_limits(row: dict[str, Any]) -> dict[str, Any]:
    """An agent row's limits as every channel shows them."""
    return {name: row[name] for name in LIMIT_FIELDS}


def agent_limit_options() -> tuple[CliOption, ...]:
    """The command-line options of `agents create` and `agents update`, one per limit (`--daily-execution-limit`)."""
    return cli_options(AgentLimits)
