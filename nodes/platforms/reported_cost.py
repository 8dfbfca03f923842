"""Reading the cost a platform reports for a call, strictly, before it can touch a budget.

A platform's figure is untrusted input: `1e999990` once made the process build a million-digit integer on the
event loop (every tenant stalled 25 s) and `1_000` was read as 1000. So a report is accepted only as a plain
decimal written the way a person writes money (`12`, `0.05`, `1000.000001`): digits, at most one point, at most
six decimals (our unit is the micro-dollar), no sign, exponent, underscore, whitespace or hex, and at most the
configured maximum. The text's length is bounded before anything converts it, so every input costs
microseconds. Anything else is not an error of the delivery: the estimate is billed instead and the record
says why (`ReportedCost.note`).
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from decimal import Decimal

MAX_DECIMALS = 6
# Twelve integer digits are far above any sane maximum; the bound is what keeps the regex and Decimal cheap.
MAX_COST_TEXT_LENGTH = 12 + 1 + MAX_DECIMALS
_PLAIN_DECIMAL = re.compile(rf"[0-9]+(?:\.[0-9]{{1,{MAX_DECIMALS}}})?", re.ASCII)
DEFAULT_MAX_REPORTED_COST_USD = Decimal(1000)


@dataclass(frozen=True, slots=True)
class ReportedCost:
    """What to make of a platform's cost report: the figure to use, or why none is used."""

    usd: Decimal | None
    note: str | None = None


def parse_reported_cost(text: str | None, *, maximum: Decimal) -> ReportedCost:
    """The figure in `text` (None: the platform reported nothing), or a note saying why it is ignored."""
    if text is None:
        return ReportedCost(usd=None)
    if len(text) > MAX_COST_TEXT_LENGTH or _PLAIN_DECIMAL.fullmatch(text) is None:
        return _ignored(text, f"not a plain decimal with at most {MAX_DECIMALS} decimals")
    cost = Decimal(text)
    if cost > maximum:
        return _ignored(text, f"above the maximum of {maximum} USD")
    return ReportedCost(usd=cost)


def _ignored(text: str, reason: str) -> ReportedCost:
    # Quoted by repr (control characters escaped) and shortened: it is the platform's text and may be long.
    shown = repr(text if len(text) <= 40 else f"{text[:40]}...")
    return ReportedCost(usd=None, note=f"reported cost {shown} ignored ({reason}); the estimate is billed")
