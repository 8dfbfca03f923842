"""Whatever a platform answers, the invocation is recorded: each hostile answer, sent by the real local platform
server, gets the caller a prompt answer and leaves lineage, billing and audit rows with the right cost, on
SQLite and PostgreSQL (issue 11, points 3 and 4).

Before: `{"result": NaN}`, `-Infinity`, `1e400`, a lone surrogate or a reported cost of 1e30 made "delivered,
nothing recorded", and the caller waited 8.6 s for a 500 (or got a 200 for the 1e30 cost); `X-Cost-USD:
1e999990` stalled the event loop for 25 s.
"""

from __future__ import annotations

import time
from typing import Any

import pytest

from tests.factories import invoke, register, rows
from tests.platform_server import ScriptedResponse

ESTIMATE = 0.05
JSON = {"Content-Type": "application/json"}
# Generous: a prompt answer is milliseconds; the old failure took 8.6 s.
PROMPT_SECONDS = 3.0


def _answer(body: bytes, headers: dict[str, str] | None = None) -> ScriptedResponse:
    return ScriptedResponse(200, headers={**JSON, **(headers or {})}, body=body)


HUGE_INTEGER = b"1" * 5000
# (scripted answer, the output the caller gets and lineage keeps, the note's start, the billed cost)
HOSTILE: dict[str, tuple[ScriptedResponse, Any, str | None, float]] = {
    "nan": (_answer(b'{"result": NaN}'), '{"result": NaN}', "output kept as text", ESTIMATE),
    "minus_infinity": (_answer(b'{"result": -Infinity}'), '{"result": -Infinity}', "output kept as text", ESTIMATE),
    "overflow_1e400": (_answer(b'{"result": 1e400}'), '{"result": 1e400}', "output kept as text", ESTIMATE),
    "lone_surrogate": (_answer(b'{"result": "\\ud800"}'), '{"result": "\\ud800"}', "output kept as text", ESTIMATE),
    "nul_in_json": (_answer(b'{"result": "a\\u0000b"}'), '{"result": "a\\u0000b"}', "output kept as text", ESTIMATE),
    "huge_integer": (
        _answer(b'{"result": ' + HUGE_INTEGER + b"}"),
        '{"result": ' + HUGE_INTEGER.decode() + "}",
        "output kept as text",
        ESTIMATE,
    ),
    "nul_in_text": (
        ScriptedResponse(200, headers={"Content-Type": "text/plain"}, body=b"a\x00b"),
        "a\ufffdb",
        "output text changed",
        ESTIMATE,
    ),
    "body_cost_1e30": (
        _answer(b'{"ok": true, "cost_usd": 1e30}'),
        {"ok": True, "cost_usd": 1e30},
        "reported cost",
        ESTIMATE,
    ),
    "header_cost_1e999990": (
        _answer(b'{"ok": true}', {"X-Cost-USD": "1e999990"}),
        {"ok": True},
        "reported cost '1e999990' ignored",
        ESTIMATE,
    ),
    "header_cost_underscore": (
        _answer(b'{"ok": true}', {"X-Cost-USD": "1_000"}),
        {"ok": True},
        "reported cost '1_000' ignored",
        ESTIMATE,
    ),
    "header_cost_seven_decimals": (
        _answer(b'{"ok": true}', {"X-Cost-USD": "0.0100001"}),
        {"ok": True},
        "reported cost '0.0100001' ignored",
        ESTIMATE,
    ),
    "cost_below_estimate": (_answer(b'{"ok": true}', {"X-Cost-USD": "0.02"}), {"ok": True}, None, 0.02),
}


@pytest.mark.parametrize("case", list(HOSTILE))
async def test_a_hostile_answer_is_answered_promptly_and_recorded(gateway, client, org, platform_server, case) -> None:
    scripted, expected_output, note, billed = HOSTILE[case]
    path = f"/hostile-{case}"
    platform_server.script(path, scripted)
    agent = await register(client, org, platform_server, path=path, cost_per_execution=ESTIMATE)

    started = time.perf_counter()
    response = await invoke(client, org, agent["id"])
    elapsed = time.perf_counter() - started

    assert response.status_code == 200, response.text
    assert elapsed < PROMPT_SECONDS
    body = response.json()
    assert body["status"] == "success"
    assert body["output"] == expected_output
    assert body["metadata"]["cost_usd"] == billed
    invocation_id = body["invocation_id"]
    [lineage] = await rows(
        gateway, "SELECT status, cost_usd, record_note FROM invocation_lineage WHERE id = :id", id=invocation_id
    )
    assert lineage["status"] == "success" and lineage["cost_usd"] == billed
    stored = await client.get(f"/api/lineage/{invocation_id}", headers=org.headers)
    assert stored.status_code == 200 and stored.json()["output"] == expected_output
    assert stored.json()["record_note"] == lineage["record_note"]
    if note is None:
        assert lineage["record_note"] is None
    else:
        assert lineage["record_note"].startswith(note), lineage["record_note"]
    [billing] = await rows(gateway, "SELECT cost_usd FROM billing_usage WHERE id = :id", id=invocation_id)
    assert billing["cost_usd"] == billed
    audit = await rows(
        gateway,
        "SELECT event_type FROM audit_log WHERE resource_id = :agent AND event_type = 'external_agent.invoked'",
        agent=agent["id"],
    )
    assert len(audit) == 1
