"""money.py: dollars to integer micro-dollars and back, exactly."""

from __future__ import annotations

from decimal import Decimal

import pytest

from external_agents.money import MICROS_PER_USD, to_micros, to_usd


@pytest.mark.parametrize(
    ("usd", "micros"),
    [
        (0.1, 100_000),  # the decimal 0.1, not the binary float's 0.1000000000000000055...
        (0.3, 300_000),
        (123.456789, 123_456_789),
        (Decimal("0.02"), 20_000),
        (5, 5 * MICROS_PER_USD),
        (0, 0),
        (-0.25, -250_000),
    ],
)
def test_to_micros_is_exact(usd: float | Decimal | int, micros: int) -> None:
    assert to_micros(usd) == micros


@pytest.mark.parametrize(("usd", "micros"), [("0.0000005", 0), ("0.0000015", 2), ("0.0000025", 2)])
def test_to_micros_rounds_half_to_even_below_a_micro_dollar(usd: str, micros: int) -> None:
    assert to_micros(Decimal(usd)) == micros


def test_a_budget_holds_exactly_as_many_calls_as_it_should() -> None:
    # As floats, 0.1 + 0.1 + 0.1 > 0.3: a $0.30 budget would refuse the third $0.10 call.
    assert 3 * to_micros(0.10) == to_micros(0.30)


@pytest.mark.parametrize("usd", [0.02, 0.1, 123.456789, 1_000_000.0, 0.000001])
def test_to_usd_returns_the_decimal_it_came_from(usd: float) -> None:
    assert to_usd(to_micros(usd)) == usd
    assert repr(to_usd(to_micros(usd))) == repr(usd)


def test_to_usd_is_a_float_for_json() -> None:
    assert isinstance(to_usd(20_000), float)
    assert to_usd(-250_000) == -0.25
