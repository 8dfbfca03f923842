"""The agent's field set: the API model agrees with the tables, and the derivations every channel uses."""

from __future__ import annotations

from typing import get_args

import pytest

from external_agents.agent_fields import (
    CLEARABLE_FIELDS,
    LIMIT_FIELDS,
    AgentCreate,
    AgentLimits,
    AgentUpdate,
    agent_limit_options,
    limit_values,
    present_limits,
)
from external_agents.errors import ValidationError
from external_agents.models import TABLES
from external_agents.nodes.agents import AgentDefaults
from external_agents.request_models import parse
from external_agents.stores.agents import LIMIT_COLUMNS

AGENTS = TABLES["external_agents"]
LIMITS = TABLES["external_agent_limits"]
# external_agents columns no request sets: the server fills them in.
SERVER_SET = {"id", "encrypted_credentials", "organization_id", "created_by", "created_at", "updated_at"}


def _python_type(name: str) -> type:
    (declared,) = (t for t in get_args(AgentLimits.model_fields[name].annotation) if t is not type(None))
    return declared


@pytest.mark.parametrize("name", LIMIT_FIELDS)
def test_every_limit_has_a_nullable_column_of_a_compatible_type(name: str) -> None:
    column = LIMITS.c.get(name) if name in LIMITS.c else AGENTS.c.get(name)
    assert column is not None, f"{name} has no column in external_agents or external_agent_limits"
    assert column.nullable, f"{name}: a limit left out is stored as NULL"
    assert column.type.python_type is _python_type(name)


def test_every_limits_table_column_is_a_limit_and_the_store_writes_them_all() -> None:
    assert set(LIMIT_COLUMNS) <= set(LIMIT_FIELDS)
    assert set(LIMIT_COLUMNS) == {c.name for c in LIMITS.c} - {"external_agent_id", "updated_at"}


def test_every_agents_column_is_a_registration_field_or_set_by_the_server() -> None:
    assert {c.name for c in AGENTS.c} - SERVER_SET == set(AgentCreate.model_fields) - set(LIMIT_COLUMNS)


def test_a_patch_may_clear_the_description_and_limits_without_a_default_only() -> None:
    defaulted = AgentDefaults(
        monthly_budget=1, daily_budget=1, cost_per_execution=1, per_minute=1, per_hour=1, per_day=1
    ).by_limit()
    assert {"description", "daily_execution_limit", "monthly_execution_limit"} <= set(CLEARABLE_FIELDS)
    assert set(CLEARABLE_FIELDS).isdisjoint(defaulted) and set(defaulted) <= set(LIMIT_FIELDS)
    assert set(CLEARABLE_FIELDS) <= set(AgentUpdate.model_fields)


def test_limit_values_and_present_limits_cover_every_limit_in_order() -> None:
    spec = parse(AgentLimits, {"max_monthly_cost": 5, "daily_execution_limit": 3})
    values = limit_values(spec)
    assert list(values) == list(LIMIT_FIELDS)
    assert values["max_monthly_cost"] == 5.0 and values["daily_execution_limit"] == 3
    assert values["requests_per_minute"] is None
    row = {**dict.fromkeys(LIMIT_FIELDS, 1), "encrypted_credentials": b"secret"}
    assert present_limits(row) == dict.fromkeys(LIMIT_FIELDS, 1)


@pytest.mark.parametrize(
    ("body", "message"),
    [
        ({"requests_per_minute": 0}, "requests_per_minute: Input should be greater than or equal to 1"),
        ({"requests_per_minute": "5"}, "requests_per_minute: Input should be a valid integer"),
        ({"max_daily_cost": -1}, "max_daily_cost: Input should be greater than or equal to 0"),
        ({"daily_execution_limit": 1_000_000_001}, "daily_execution_limit: Input should be less than or equal to"),
        ({"weekly_limit": 1}, "weekly_limit: unknown field"),
    ],
)
def test_the_api_refuses_bad_limits_naming_the_field(body: dict[str, object], message: str) -> None:
    with pytest.raises(ValidationError) as refused:
        parse(AgentUpdate, body)
    assert refused.value.detail.startswith(message)


def test_the_command_line_options_keep_todays_flags_with_the_models_bounds() -> None:
    options = {option.name: option for option in agent_limit_options()}
    assert [option.flag for option in options.values()][:8] == [
        "--max-monthly-cost",
        "--max-daily-cost",
        "--cost-per-execution",
        "--requests-per-minute",
        "--requests-per-hour",
        "--requests-per-day",
        "--daily-execution-limit",
        "--monthly-execution-limit",
    ]
    assert (options["max_monthly_cost"].min, options["max_monthly_cost"].max) == (0, None)
    assert (options["requests_per_day"].min, options["requests_per_day"].max) == (1, 10_000_000)
    assert options["monthly_execution_limit"].annotation == int | None
    assert "UTC month" in options["monthly_execution_limit"].help
