"""A platform's reported cost is read strictly and cheaply: a plain decimal, six decimals at most, at most the
configured maximum; anything else is no cost (the estimate is billed) with a note saying why."""

from __future__ import annotations

import time
from decimal import Decimal

import pytest

from external_agents.nodes.platforms.reported_cost import ReportedCost, parse_reported_cost

MAXIMUM = Decimal(1000)


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("0", Decimal(0)),
        ("12", Decimal(12)),
        ("0.05", Decimal("0.05")),
        ("0.1", Decimal("0.1")),
        ("1000", Decimal(1000)),
        ("999.999999", Decimal("999.999999")),
        ("0.000001", Decimal("0.000001")),
        ("007.5", Decimal("7.5")),
    ],
)
def test_a_plain_decimal_is_the_cost_exactly(text: str, expected: Decimal) -> None:
    assert parse_reported_cost(text, maximum=MAXIMUM) == ReportedCost(usd=expected)


@pytest.mark.parametrize(
    "text",
    [
        "1e999990",
        "1e3",
        "1E3",
        "1_000",
        "-1",
        "+1",
        "0x10",
        " 1 ",
        "1 ",
        "NaN",
        "Infinity",
        "-Infinity",
        "0.0000001",
        "0.30000000000000004",
        "1.",
        ".5",
        "1,5",
        "١٢",  # Arabic-Indic digits: Decimal reads them, a person reading a bill would not
        "",
        "1" * 5000,
        "9" * 100 + ".5",
    ],
)
def test_anything_else_is_ignored_with_a_note(text: str) -> None:
    result = parse_reported_cost(text, maximum=MAXIMUM)

    assert result.usd is None
    assert result.note is not None and "not a plain decimal with at most 6 decimals" in result.note


def test_a_cost_above_the_maximum_is_ignored_with_a_note() -> None:
    assert parse_reported_cost("1000.000001", maximum=MAXIMUM) == ReportedCost(
        usd=None, note="reported cost '1000.000001' ignored (above the maximum of 1000 USD); the estimate is billed"
    )
    assert parse_reported_cost("5", maximum=Decimal("4.5")).usd is None


def test_no_report_is_no_cost_and_no_note() -> None:
    assert parse_reported_cost(None, maximum=MAXIMUM) == ReportedCost(usd=None)


def test_a_long_report_is_shortened_in_the_note() -> None:
    note = parse_reported_cost("9" * 5000, maximum=MAXIMUM).note

    assert note is not None and len(note) < 200


def test_the_worst_inputs_together_cost_well_under_a_millisecond_each() -> None:
    worst = ["1e999990", "9" * 1_000_000, "1" * 18 + "." + "1" * 6, "0." + "0" * 1_000_000, "1_" * 500_000, "NaN"]
    started = time.perf_counter()
    for _ in range(10):
        for text in worst:
            parse_reported_cost(text, maximum=MAXIMUM)
    elapsed = time.perf_counter() - started

    # 60 parses, the longest texts a megabyte: generously bounded, the old parser took 25 s for the first alone.
    assert elapsed < 0.05
