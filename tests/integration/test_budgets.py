"""The budget ledger over SQLite and PostgreSQL: exact limits, concurrency, settlement, seeding, periods, alerts.

Every test runs over both databases, each a database of its own (a SQLite file in a temporary directory, a
throwaway PostgreSQL database dropped afterwards), through the engine the app itself builds. Each test uses
agents of its own, so tests sharing a database do not see each other's counters.
"""

from __future__ import annotations

import asyncio
import json
import uuid
from collections.abc import AsyncIterator
from contextlib import ExitStack
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta, timezone

import pytest
import sqlalchemy as sa
from sqlalchemy.ext.asyncio import AsyncEngine

from external_agents.models import METADATA, TABLES
from external_agents.money import to_micros
from external_agents.settings import Settings
from external_agents.stores.budgets import (
    BudgetLimits,
    BudgetRefusal,
    Reservation,
    Spend,
    claim_alert,
    current_spend,
    current_spend_many,
    day_bounds,
    month_bounds,
    period_ids,
    release,
    reserve,
    settle,
)
from external_agents.stores.database import create_engine
from tests.factories import make_settings, throwaway_database
from tests.process_servers import race_children

counters = TABLES["budget_counters"]
billing = TABLES["billing_usage"]

TEN_CENTS = to_micros(0.10)
NOW = datetime(2025, 6, 15, 12, 0, tzinfo=UTC)
ROOMY = 1_000 * 1_000_000  # $1,000: a limit that never binds


@dataclass(frozen=True)
class Backend:
    name: str
    database_url: str
    data_dir: str
    engine: AsyncEngine


@pytest.fixture(scope="module", params=["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
async def backend(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory, postgres_url: str
) -> AsyncIterator[Backend]:
    data_dir = str(tmp_path_factory.mktemp(f"budgets-{request.param}"))
    with ExitStack() as cleanup:
        if request.param == "postgres":
            url = cleanup.enter_context(throwaway_database(postgres_url, prefix="ea_budget_"))
        else:
            url = f"sqlite:///{data_dir}/budgets.db"
        settings: Settings = make_settings(url, data_dir, database_pool_size=20)
        schema_engine = sa.create_engine(settings.sync_database_url)
        METADATA.create_all(schema_engine)
        schema_engine.dispose()
        engine = create_engine(settings)
        try:
            yield Backend(name=request.param, database_url=url, data_dir=data_dir, engine=engine)
        finally:
            await engine.dispose()


@pytest.fixture
def engine(backend: Backend) -> AsyncEngine:
    return backend.engine


@pytest.fixture
def agent_id() -> str:
    return f"agent-{uuid.uuid4().hex}"


def limits(daily: float = 1_000, monthly: float = 1_000, **executions: int) -> BudgetLimits:
    return BudgetLimits(daily_micros=to_micros(daily), monthly_micros=to_micros(monthly), **executions)


async def bill(engine: AsyncEngine, agent_id: str, cost_usd: float, at: datetime) -> None:
    """A billing row as the invocation recorder writes it."""
    async with engine.begin() as connection:
        await connection.execute(
            billing.insert().values(
                id=str(uuid.uuid4()),
                organization_id="org-budgets",
                usage_type="external_agent_invocation",
                quantity=1,
                cost_usd=cost_usd,
                created_at=at,
                external_agent_id=agent_id,
            )
        )


async def counter_rows(engine: AsyncEngine, agent_id: str) -> dict[str, tuple[int, int]]:
    async with engine.connect() as connection:
        result = await connection.execute(
            sa.select(counters.c.id, counters.c.spent_micros, counters.c.executions).where(
                counters.c.external_agent_id == agent_id
            )
        )
        return {row.id: (row.spent_micros, row.executions) for row in result}


async def delete_counters(engine: AsyncEngine, agent_id: str) -> None:
    async with engine.begin() as connection:
        await connection.execute(counters.delete().where(counters.c.external_agent_id == agent_id))


def admitted(outcome: Reservation | BudgetRefusal) -> Reservation:
    assert isinstance(outcome, Reservation), outcome
    return outcome


def refused(outcome: Reservation | BudgetRefusal) -> BudgetRefusal:
    assert isinstance(outcome, BudgetRefusal), outcome
    return outcome


# ---- limits ----


async def test_thirty_cent_daily_budget_admits_exactly_three_ten_cent_calls(engine: AsyncEngine, agent_id: str):
    budget = limits(daily=0.30, monthly=100)

    outcomes = [
        await reserve(engine, agent_id=agent_id, amount_micros=TEN_CENTS, limits=budget, now=NOW) for _ in range(4)
    ]

    assert [admitted(o).day_spent_micros for o in outcomes[:3]] == [100_000, 200_000, 300_000]
    assert [admitted(o).month_executions for o in outcomes[:3]] == [1, 2, 3]
    assert refused(outcomes[3]) == BudgetRefusal(
        period="daily", limit_micros=300_000, spent_micros=300_000, remaining_micros=0, reason="cost"
    )
    day_id, month_id = period_ids(agent_id, NOW)
    assert await counter_rows(engine, agent_id) == {day_id: (300_000, 3), month_id: (300_000, 3)}


async def test_monthly_budget_refuses_across_days(engine: AsyncEngine, agent_id: str):
    budget = limits(daily=0.20, monthly=0.30)
    first_day, second_day = NOW, NOW + timedelta(days=1)

    day_one = [
        await reserve(engine, agent_id=agent_id, amount_micros=TEN_CENTS, limits=budget, now=first_day)
        for _ in range(3)
    ]
    day_two = [
        await reserve(engine, agent_id=agent_id, amount_micros=TEN_CENTS, limits=budget, now=second_day)
        for _ in range(2)
    ]

    for outcome in (day_one[0], day_one[1], day_two[0]):
        admitted(outcome)
    assert refused(day_one[2]).period == "daily"
    assert refused(day_two[1]) == BudgetRefusal(
        period="monthly", limit_micros=300_000, spent_micros=300_000, remaining_micros=0, reason="cost"
    )
    assert (await current_spend(engine, agent_id=agent_id, now=second_day)) == Spend(
        day_spent_micros=100_000, month_spent_micros=300_000, day_executions=1, month_executions=3
    )


async def test_remaining_is_what_is_left_when_the_next_call_does_not_fit(engine: AsyncEngine, agent_id: str):
    budget = limits(daily=0.25)

    outcomes = [
        await reserve(engine, agent_id=agent_id, amount_micros=TEN_CENTS, limits=budget, now=NOW) for _ in range(3)
    ]

    assert refused(outcomes[2]) == BudgetRefusal(
        period="daily", limit_micros=250_000, spent_micros=200_000, remaining_micros=50_000, reason="cost"
    )


@pytest.mark.parametrize(
    ("execution_limits", "period"),
    [({"daily_executions": 2}, "daily"), ({"monthly_executions": 2, "daily_executions": 5}, "monthly")],
)
async def test_execution_limits(engine: AsyncEngine, agent_id: str, execution_limits: dict[str, int], period: str):
    budget = limits(**execution_limits)

    outcomes = [
        await reserve(engine, agent_id=agent_id, amount_micros=TEN_CENTS, limits=budget, now=NOW) for _ in range(3)
    ]

    assert [admitted(o).day_executions for o in outcomes[:2]] == [1, 2]
    refusal = refused(outcomes[2])
    assert (refusal.period, refusal.reason, refusal.spent_micros) == (period, "executions", 200_000)


async def test_a_refusal_takes_nothing_from_the_period_that_had_room(engine: AsyncEngine, agent_id: str):
    budget = limits(daily=0.10)
    admitted(await reserve(engine, agent_id=agent_id, amount_micros=TEN_CENTS, limits=budget, now=NOW))

    for _ in range(5):
        refused(await reserve(engine, agent_id=agent_id, amount_micros=TEN_CENTS, limits=budget, now=NOW))

    spend = await current_spend(engine, agent_id=agent_id, now=NOW)
    assert (spend.month_spent_micros, spend.month_executions) == (100_000, 1)


async def test_negative_amount_is_rejected(engine: AsyncEngine, agent_id: str):
    with pytest.raises(ValueError, match="amount_micros"):
        await reserve(engine, agent_id=agent_id, amount_micros=-1, limits=limits(), now=NOW)


# ---- concurrency ----


@pytest.mark.parametrize("binding", ["daily", "monthly"])
async def test_exact_under_concurrency(engine: AsyncEngine, agent_id: str, binding: str):
    allowed = 37
    cap = allowed * TEN_CENTS
    budget = BudgetLimits(
        daily_micros=cap if binding == "daily" else ROOMY, monthly_micros=cap if binding == "monthly" else ROOMY
    )

    # The rows do not exist yet: the first callers also race to seed them.
    outcomes = await asyncio.gather(
        *(reserve(engine, agent_id=agent_id, amount_micros=TEN_CENTS, limits=budget, now=NOW) for _ in range(200))
    )

    reservations = [o for o in outcomes if isinstance(o, Reservation)]
    assert len(reservations) == allowed
    # Each admitted call saw a distinct running total: the reservations were serialised, none lost.
    assert sorted(r.day_spent_micros for r in reservations) == [TEN_CENTS * n for n in range(1, allowed + 1)]
    assert {o.period for o in outcomes if isinstance(o, BudgetRefusal)} == {binding}
    day_id, month_id = period_ids(agent_id, NOW)
    assert await counter_rows(engine, agent_id) == {day_id: (cap, allowed), month_id: (cap, allowed)}


CHILD_SCRIPT = """
import asyncio, sys
from datetime import datetime
import sqlalchemy as sa
from external_agents.stores.budgets import BudgetLimits, Reservation, reserve
from external_agents.stores.database import create_engine
from tests.factories import make_settings

async def main(url, data_dir, agent_id, now, calls, allowed, amount):
    engine = create_engine(make_settings(url, data_dir, database_pool_size=10))
    async with engine.connect() as connection:
        await connection.execute(sa.text("SELECT 1"))
    print("ready", flush=True)
    await asyncio.get_running_loop().run_in_executor(None, sys.stdin.readline)
    budget = BudgetLimits(daily_micros=allowed * amount, monthly_micros=allowed * amount)
    when = datetime.fromisoformat(now)
    outcomes = await asyncio.gather(
        *(reserve(engine, agent_id=agent_id, amount_micros=amount, limits=budget, now=when) for _ in range(calls))
    )
    print(sum(isinstance(o, Reservation) for o in outcomes), flush=True)
    await engine.dispose()

args = sys.argv[1:]
asyncio.run(main(args[0], args[1], args[2], args[3], int(args[4]), int(args[5]), int(args[6])))
"""


async def test_exact_across_processes(backend: Backend, agent_id: str):
    allowed, calls = 37, 100
    args = [backend.database_url, backend.data_dir, agent_id, NOW.isoformat(), str(calls), str(allowed), str(TEN_CENTS)]
    # Both processes connected before either fires, so their reservations overlap in the database.
    results = await race_children(CHILD_SCRIPT, args, count=2, ready_timeout=60, run_timeout=120)

    assert [code for code, _ in results] == [0, 0]
    successes = [int(stdout) for _, stdout in results]
    assert sum(successes) == allowed, successes
    day_id, month_id = period_ids(agent_id, NOW)
    cap = allowed * TEN_CENTS
    assert await counter_rows(backend.engine, agent_id) == {day_id: (cap, allowed), month_id: (cap, allowed)}


# ---- settle and release ----


async def test_settle_adjusts_both_counters_by_the_difference(engine: AsyncEngine, agent_id: str):
    higher = admitted(await reserve(engine, agent_id=agent_id, amount_micros=TEN_CENTS, limits=limits(), now=NOW))
    lower = admitted(await reserve(engine, agent_id=agent_id, amount_micros=TEN_CENTS, limits=limits(), now=NOW))
    same = admitted(await reserve(engine, agent_id=agent_id, amount_micros=TEN_CENTS, limits=limits(), now=NOW))

    async with engine.begin() as connection:
        await settle(connection, reservation=higher, actual_micros=to_micros(0.15))
        await settle(connection, reservation=lower, actual_micros=to_micros(0.04))
        await settle(connection, reservation=same, actual_micros=TEN_CENTS)

    total = to_micros(0.15) + to_micros(0.04) + TEN_CENTS
    day_id, month_id = period_ids(agent_id, NOW)
    assert total == 290_000
    assert await counter_rows(engine, agent_id) == {day_id: (total, 3), month_id: (total, 3)}


async def test_settle_records_an_overrun_and_the_overrun_refuses_what_follows(engine: AsyncEngine, agent_id: str):
    budget = limits(daily=0.30)
    reservation = admitted(await reserve(engine, agent_id=agent_id, amount_micros=TEN_CENTS, limits=budget, now=NOW))

    async with engine.begin() as connection:
        await settle(connection, reservation=reservation, actual_micros=to_micros(0.50))

    assert refused(await reserve(engine, agent_id=agent_id, amount_micros=1, limits=budget, now=NOW)) == BudgetRefusal(
        period="daily", limit_micros=300_000, spent_micros=500_000, remaining_micros=0, reason="cost"
    )


async def test_settle_belongs_to_the_callers_transaction(engine: AsyncEngine, agent_id: str):
    reservation = admitted(await reserve(engine, agent_id=agent_id, amount_micros=TEN_CENTS, limits=limits(), now=NOW))

    with pytest.raises(RuntimeError, match="caller failed"):
        async with engine.begin() as connection:
            await settle(connection, reservation=reservation, actual_micros=to_micros(0.75))
            raise RuntimeError("caller failed after settling")

    assert (await current_spend(engine, agent_id=agent_id, now=NOW)).day_spent_micros == TEN_CENTS


async def test_release_undoes_a_reservation_and_frees_its_room(engine: AsyncEngine, agent_id: str):
    budget = limits(daily=0.20)
    first = admitted(await reserve(engine, agent_id=agent_id, amount_micros=TEN_CENTS, limits=budget, now=NOW))
    admitted(await reserve(engine, agent_id=agent_id, amount_micros=TEN_CENTS, limits=budget, now=NOW))
    refused(await reserve(engine, agent_id=agent_id, amount_micros=TEN_CENTS, limits=budget, now=NOW))

    async with engine.begin() as connection:
        await release(connection, reservation=first)

    assert await current_spend(engine, agent_id=agent_id, now=NOW) == Spend(
        day_spent_micros=TEN_CENTS, month_spent_micros=TEN_CENTS, day_executions=1, month_executions=1
    )
    third = admitted(await reserve(engine, agent_id=agent_id, amount_micros=TEN_CENTS, limits=budget, now=NOW))
    assert (third.day_spent_micros, third.day_executions) == (200_000, 2)


async def test_settling_after_midnight_adjusts_the_periods_reserved_in(engine: AsyncEngine, agent_id: str):
    before = datetime(2025, 6, 30, 23, 59, 59, 999_000, tzinfo=UTC)
    reservation = admitted(
        await reserve(engine, agent_id=agent_id, amount_micros=TEN_CENTS, limits=limits(), now=before)
    )

    async with engine.begin() as connection:
        await settle(connection, reservation=reservation, actual_micros=to_micros(0.30))

    assert (await current_spend(engine, agent_id=agent_id, now=before)).month_spent_micros == 300_000
    assert await current_spend(engine, agent_id=agent_id, now=before + timedelta(seconds=1)) == Spend()


# ---- seeding from billing_usage ----


async def test_lost_counters_are_rebuilt_from_this_months_billing(engine: AsyncEngine, agent_id: str):
    budget = limits(daily=1.00, monthly=0.50)
    admitted(await reserve(engine, agent_id=agent_id, amount_micros=TEN_CENTS, limits=budget, now=NOW))
    month_start, _ = month_bounds(NOW)
    # This month: 0.10 + 0.20 on earlier days (one at the first instant) and 0.05 today.
    await bill(engine, agent_id, 0.10, month_start)
    await bill(engine, agent_id, 0.20, NOW - timedelta(days=3))
    await bill(engine, agent_id, 0.05, NOW - timedelta(hours=1))
    # Not this month's, or not this agent's: none of these may count.
    await bill(engine, agent_id, 5.00, month_start - timedelta(microseconds=1))
    await bill(engine, agent_id, 7.00, NOW - timedelta(days=40))
    await bill(engine, agent_id, 9.00, month_start + timedelta(days=31))
    await bill(engine, f"other-{agent_id}", 3.00, NOW)
    await delete_counters(engine, agent_id)

    after_restart = admitted(await reserve(engine, agent_id=agent_id, amount_micros=TEN_CENTS, limits=budget, now=NOW))

    assert (after_restart.month_spent_micros, after_restart.month_executions) == (450_000, 4)
    assert (after_restart.day_spent_micros, after_restart.day_executions) == (150_000, 2)
    assert refused(
        await reserve(engine, agent_id=agent_id, amount_micros=TEN_CENTS, limits=budget, now=NOW)
    ) == BudgetRefusal(
        period="monthly", limit_micros=500_000, spent_micros=450_000, remaining_micros=50_000, reason="cost"
    )
    # What remains still fits, to the micro-dollar.
    last = admitted(await reserve(engine, agent_id=agent_id, amount_micros=50_000, limits=budget, now=NOW))
    assert last.month_spent_micros == 500_000


async def test_seeded_billing_refuses_at_once_when_spent(engine: AsyncEngine, agent_id: str):
    for _ in range(3):
        await bill(engine, agent_id, 0.10, NOW - timedelta(hours=2))

    refusal = refused(
        await reserve(engine, agent_id=agent_id, amount_micros=TEN_CENTS, limits=limits(daily=0.30), now=NOW)
    )

    assert (refusal.period, refusal.spent_micros, refusal.remaining_micros) == ("daily", 300_000, 0)


async def test_only_a_missing_row_is_seeded(engine: AsyncEngine, agent_id: str):
    admitted(await reserve(engine, agent_id=agent_id, amount_micros=TEN_CENTS, limits=limits(), now=NOW))
    day_id, _ = period_ids(agent_id, NOW)
    async with engine.begin() as connection:
        await connection.execute(counters.delete().where(counters.c.id == day_id))
    await bill(engine, agent_id, 0.25, NOW - timedelta(hours=1))

    reservation = admitted(await reserve(engine, agent_id=agent_id, amount_micros=TEN_CENTS, limits=limits(), now=NOW))

    # The day row is rebuilt from billing; the month row kept its own count, including the unbilled reservation.
    assert (reservation.day_spent_micros, reservation.month_spent_micros) == (350_000, 200_000)


# ---- periods ----


async def test_rollover_at_midnight_of_the_last_day_of_the_month_uses_new_rows(engine: AsyncEngine, agent_id: str):
    budget = limits(daily=0.10, monthly=0.10)
    last_instant = datetime(2025, 1, 31, 23, 59, 59, 999_000, tzinfo=UTC)
    next_month = datetime(2025, 2, 1, 0, 0, 0, tzinfo=UTC)

    old = admitted(await reserve(engine, agent_id=agent_id, amount_micros=TEN_CENTS, limits=budget, now=last_instant))
    refused(await reserve(engine, agent_id=agent_id, amount_micros=TEN_CENTS, limits=budget, now=last_instant))
    new = admitted(await reserve(engine, agent_id=agent_id, amount_micros=TEN_CENTS, limits=budget, now=next_month))

    assert (old.day_id, old.month_id) == (f"{agent_id}|day|2025-01-31", f"{agent_id}|month|2025-01")
    assert (new.day_id, new.month_id) == (f"{agent_id}|day|2025-02-01", f"{agent_id}|month|2025-02")
    assert (new.day_spent_micros, new.month_spent_micros, new.month_executions) == (TEN_CENTS, TEN_CENTS, 1)


async def test_billing_seeds_only_its_own_period_across_a_rollover(engine: AsyncEngine, agent_id: str):
    await bill(engine, agent_id, 0.10, datetime(2025, 1, 31, 23, 59, 59, 999_000, tzinfo=UTC))

    new = admitted(
        await reserve(
            engine,
            agent_id=agent_id,
            amount_micros=TEN_CENTS,
            limits=limits(),
            now=datetime(2025, 2, 1, tzinfo=UTC),
        )
    )

    assert (new.day_spent_micros, new.month_spent_micros) == (TEN_CENTS, TEN_CENTS)


def test_periods_are_utc_calendar_days_and_months():
    east_of_utc = datetime(2025, 1, 1, 1, 30, tzinfo=timezone(timedelta(hours=2)))  # 2024-12-31 23:30 UTC

    assert period_ids("a", east_of_utc) == ("a|day|2024-12-31", "a|month|2024-12")
    assert day_bounds(east_of_utc) == (datetime(2024, 12, 31, tzinfo=UTC), datetime(2025, 1, 1, tzinfo=UTC))
    assert month_bounds(east_of_utc) == (datetime(2024, 12, 1, tzinfo=UTC), datetime(2025, 1, 1, tzinfo=UTC))
    assert month_bounds(datetime(2024, 2, 29, 23, 59, tzinfo=UTC)) == (
        datetime(2024, 2, 1, tzinfo=UTC),
        datetime(2024, 3, 1, tzinfo=UTC),
    )
    assert month_bounds(datetime(2025, 1, 31, tzinfo=UTC))[1] == datetime(2025, 2, 1, tzinfo=UTC)
    with pytest.raises(ValueError, match="naive"):
        period_ids("a", datetime(2025, 1, 1))


# ---- alerts ----


@pytest.mark.parametrize("kind", ["warning", "degraded"])
async def test_alert_is_claimed_exactly_once_per_month(engine: AsyncEngine, agent_id: str, kind: str):
    admitted(await reserve(engine, agent_id=agent_id, amount_micros=TEN_CENTS, limits=limits(), now=NOW))

    claims = await asyncio.gather(*(claim_alert(engine, agent_id=agent_id, now=NOW, kind=kind) for _ in range(50)))
    later = await claim_alert(engine, agent_id=agent_id, now=NOW + timedelta(days=1), kind=kind)

    assert sum(claims) == 1
    assert later is False
    next_month = NOW + timedelta(days=31)
    admitted(await reserve(engine, agent_id=agent_id, amount_micros=TEN_CENTS, limits=limits(), now=next_month))
    assert await claim_alert(engine, agent_id=agent_id, now=next_month, kind=kind) is True


async def test_warning_and_degraded_are_claimed_independently(engine: AsyncEngine, agent_id: str):
    admitted(await reserve(engine, agent_id=agent_id, amount_micros=TEN_CENTS, limits=limits(), now=NOW))

    assert await claim_alert(engine, agent_id=agent_id, now=NOW, kind="warning") is True
    assert await claim_alert(engine, agent_id=agent_id, now=NOW, kind="degraded") is True
    assert await claim_alert(engine, agent_id=agent_id, now=NOW, kind="warning") is False


async def test_no_alert_without_a_month_row(engine: AsyncEngine, agent_id: str):
    assert await claim_alert(engine, agent_id=agent_id, now=NOW, kind="warning") is False
    assert await counter_rows(engine, agent_id) == {}


# ---- money ----


async def test_money_adds_up_exactly(engine: AsyncEngine, agent_id: str):
    # As floats, 0.1 + 0.2 > 0.3 and the second call would be refused.
    budget = limits(daily=0.30)
    cents = [to_micros(0.1), to_micros(0.2)]

    outcomes = [await reserve(engine, agent_id=agent_id, amount_micros=m, limits=budget, now=NOW) for m in cents]
    over = await reserve(engine, agent_id=agent_id, amount_micros=1, limits=budget, now=NOW)

    assert [admitted(o).day_spent_micros for o in outcomes] == [100_000, 300_000]
    assert refused(over).remaining_micros == 0


async def test_many_small_amounts_sum_to_the_integer_total(engine: AsyncEngine, agent_id: str):
    amounts = [to_micros(usd) for usd in (0.1, 0.2, 0.3, 0.07, 0.000001, 12.345678, 0.1, 0.2) * 5]

    for amount in amounts:
        admitted(await reserve(engine, agent_id=agent_id, amount_micros=amount, limits=limits(), now=NOW))

    spend = await current_spend(engine, agent_id=agent_id, now=NOW)
    assert spend.day_spent_micros == spend.month_spent_micros == sum(amounts) == 66_578_395


async def test_seeding_converts_each_float_cost_exactly(engine: AsyncEngine, agent_id: str):
    costs = [0.1, 0.2, 0.3, 0.000001, 12345.678901, 0.07] * 3
    for cost in costs:
        await bill(engine, agent_id, cost, NOW - timedelta(minutes=5))

    budget = limits(daily=1_000_000, monthly=1_000_000)
    reservation = admitted(await reserve(engine, agent_id=agent_id, amount_micros=0, limits=budget, now=NOW))

    assert reservation.month_spent_micros == sum(to_micros(c) for c in costs) == 37_039_046_706


# ---- reads and serialisation ----


async def test_current_spend_reads_without_creating_rows(engine: AsyncEngine, agent_id: str):
    other = f"other-{agent_id}"
    admitted(await reserve(engine, agent_id=agent_id, amount_micros=TEN_CENTS, limits=limits(), now=NOW))

    assert await current_spend(engine, agent_id=other, now=NOW) == Spend()
    assert await current_spend_many(engine, agent_ids=[agent_id, other], now=NOW) == {
        agent_id: Spend(day_spent_micros=TEN_CENTS, month_spent_micros=TEN_CENTS, day_executions=1, month_executions=1),
        other: Spend(),
    }
    assert await current_spend_many(engine, agent_ids=[], now=NOW) == {}
    assert await counter_rows(engine, other) == {}


async def test_reservation_and_refusal_travel_as_json(engine: AsyncEngine, agent_id: str):
    reservation = admitted(await reserve(engine, agent_id=agent_id, amount_micros=TEN_CENTS, limits=limits(), now=NOW))
    refusal = refused(
        await reserve(engine, agent_id=agent_id, amount_micros=TEN_CENTS, limits=limits(daily=0.1), now=NOW)
    )

    assert Reservation.from_dict(json.loads(json.dumps(reservation.to_dict()))) == reservation
    assert json.loads(json.dumps(refusal.to_dict())) == {
        "period": "daily",
        "limit_micros": 100_000,
        "spent_micros": 100_000,
        "remaining_micros": 0,
        "reason": "cost",
    }
