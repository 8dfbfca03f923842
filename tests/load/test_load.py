"""The load test as a pytest check: every level answers every request with a 2xx, and the figures print.

Run: pytest tests/load -s   (or the full-size run: python -m tests.load.load_test)
"""

from __future__ import annotations

import pytest

from tests.load.load_test import HEADER, LEVELS, run_load


def test_every_level_is_served_without_errors(capsys: pytest.CaptureFixture[str]) -> None:
    results = run_load(levels=LEVELS, requests=400, seconds=10)
    with capsys.disabled():
        print(f"\n    {HEADER}")
        for result in results:
            print(f"    {result.row()}")
    assert [(r.endpoint, r.clients) for r in results] == [
        (endpoint, clients) for clients in LEVELS for endpoint in ("invoke", "governance-status")
    ]
    assert all(r.latencies for r in results)
    errors = {f"{r.endpoint} x{r.clients}": dict(r.statuses) for r in results if r.errors}
    assert not errors, errors
