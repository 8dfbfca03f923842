"""Money as integer micro-dollars, so sums are exact: a $0.30 budget at $0.10 a call allows exactly 3 calls."""

from __future__ import annotations

from decimal import ROUND_HALF_EVEN, Decimal

MICROS_PER_USD = 1_000_000


def to_micros(usd: float | Decimal | int) -> int:
    # Through str: 0.1 becomes Decimal("0.1"), not the binary float's 0.1000000000000000055...
    return int((Decimal(str(usd)) * MICROS_PER_USD).to_integral_value(ROUND_HALF_EVEN))


def to_usd(micros: int) -> float:
    """A float for JSON, rounded at the micro-dollar so it prints as the decimal it is."""
    return float(Decimal(micros) / MICROS_PER_USD)
