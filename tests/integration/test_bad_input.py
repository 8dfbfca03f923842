"""Bad input over REST, on SQLite and PostgreSQL: it is refused with a 4xx and a clear detail, never a 5xx.

- Size limits: a body over KAIZEN_MAX_BODY_BYTES is a 413 and headers over KAIZEN_MAX_HEADER_BYTES a 431,
  decided before the key is looked up (an invalid key still gets 413/431, not 401) and before the body is
  read (the ASGI `receive` is never called when Content-Length declares too much); no row is written.
- Malformed JSON, JSON the database cannot hold (NaN, Infinity, lone surrogates, NUL), numbers past the
  parser's digit limit, nesting past any sane depth, wrong types, unknown platforms, unknown or hostile ids,
  out-of-range query values and bad identity headers are each a 400 (404 for ids) naming what was wrong,
  and nothing is delivered to the platform.
- Hostile text that is accepted (SQL-looking, templates, control characters, bidi overrides, emoji, long
  strings) comes back exactly as sent: from the registry, in what the platform received, and from lineage.
"""

from __future__ import annotations

import json
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import httpx
import pytest
import sqlalchemy as sa

from tests.factories import IDENTITY, Org, app_client, make_settings, new_org, running_app
from tests.factories import register as register_agent
from tests.platform_server import PlatformServer

TABLES = ("external_agents", "invocation_lineage", "billing_usage", "audit_log", "policies", "budget_counters")
HOSTILE_TEXT = [
    "x'; DROP TABLE external_agents; --",
    "please delete from my calendar /* insert into */ select * from users -- ",
    "${jndi:ldap://127.0.0.1/a} {{7*7}} #{1+1} %s%n%x <script>alert(1)</script>",
    "\u202eevil\u202c \u200b\ufeff \x07\x08\x0b\x0c\x1b[31mred\x1b[0m \t\r\n \x7f\x9f",
    "😀👩\u200d👩\u200d👧 汉字 עברית العربية 𝔘𝔫𝔦𝔠𝔬𝔡𝔢",
    "' OR '1'='1",
    "\\u0000 is not a NUL, and \\ is a backslash",
    "long " + "ß" * 9_990,
]


async def register(client, org, platform_server: PlatformServer, **overrides: Any) -> dict[str, Any]:
    """An agent with a name of its own and rate limits no test here reaches."""
    roomy = {"requests_per_minute": 10_000, "requests_per_hour": 10_000, "requests_per_day": 10_000}
    return await register_agent(
        client, org, platform_server, **{"name": f"agent-{uuid.uuid4().hex[:10]}", **roomy, **overrides}
    )


async def table_counts(gateway) -> dict[str, int]:
    async with gateway.external_agents.engine.connect() as connection:
        return {
            table: (await connection.execute(sa.text(f"SELECT count(*) FROM {table}"))).scalar_one()  # noqa: S608
            for table in TABLES
        }


def assert_clear_4xx(response, *, status: int | None = None, mentions: str | None = None) -> None:
    assert 400 <= response.status_code < 500, f"{response.status_code}: {response.text[:300]}"
    if status is not None:
        assert response.status_code == status, response.text[:300]
    body = response.json()
    assert isinstance(body["detail"], str) and body["detail"].strip(), body
    assert body["error_code"] and body["request_id"], body
    if mentions is not None:
        assert mentions.lower() in body["detail"].lower(), body["detail"]


# ---------------------------------------------------------------------------------------------------------
# Size limits, proved at the ASGI level: what the app asked of `receive` and what it sent back.
# ---------------------------------------------------------------------------------------------------------


class AsgiExchange:
    """One raw ASGI request: the body arrives in `chunks` only when the app asks for it."""

    def __init__(self, chunks: list[bytes]) -> None:
        self.chunks = list(chunks)
        self.bytes_read = 0
        self.receive_calls = 0
        self.status: int | None = None
        self.body = b""

    async def receive(self) -> dict[str, Any]:
        self.receive_calls += 1
        if not self.chunks:
            return {"type": "http.disconnect"}
        chunk = self.chunks.pop(0)
        self.bytes_read += len(chunk)
        return {"type": "http.request", "body": chunk, "more_body": bool(self.chunks)}

    async def send(self, message: dict[str, Any]) -> None:
        if message["type"] == "http.response.start":
            self.status = message["status"]
        elif message["type"] == "http.response.body":
            self.body += message.get("body", b"")

    def json(self) -> dict[str, Any]:
        return json.loads(self.body)


async def asgi_call(
    app: Callable[..., Awaitable[None]],
    method: str,
    path: str,
    *,
    headers: list[tuple[bytes, bytes]],
    chunks: list[bytes],
) -> AsgiExchange:
    exchange = AsgiExchange(chunks)
    scope = {
        "type": "http",
        "asgi": {"version": "3.0"},
        "http_version": "1.1",
        "method": method,
        "scheme": "http",
        "path": path,
        "raw_path": path.encode(),
        "root_path": "",
        "query_string": b"",
        "headers": [(b"host", b"gateway.test"), *headers],
        "client": ("127.0.0.1", 50000),
        "server": ("gateway.test", 80),
    }
    await app(scope, exchange.receive, exchange.send)
    return exchange


BODY_ROUTES = [
    ("POST", "/api/external-agents"),
    ("PATCH", "/api/external-agents/{agent}"),
    ("POST", "/api/external-agents/{agent}/invoke"),
    ("POST", "/api/policies"),
    ("POST", "/api/workflows/greeting/execute"),
    ("POST", "/mcp"),
]
INVALID_KEY = (b"authorization", b"Bearer not-a-key-at-all")


def limits_of(gateway) -> tuple[int, int]:
    settings = gateway.external_agents.settings
    return settings.kaizen_max_body_bytes, settings.kaizen_max_header_bytes


@pytest.mark.parametrize(("method", "path"), BODY_ROUTES)
async def test_declared_oversized_body_is_413_before_auth_and_before_reading(
    gateway, client, org, platform_server, method, path
):
    agent = await register(client, org, platform_server)
    max_body, _ = limits_of(gateway)
    before = await table_counts(gateway)
    exchange = await asgi_call(
        gateway.fastapi_app,
        method,
        path.format(agent=agent["id"]),
        headers=[INVALID_KEY, (b"content-type", b"application/json"), (b"content-length", str(max_body + 1).encode())],
        chunks=[b" " * (max_body + 1)],
    )
    assert exchange.status == 413, exchange.body[:300]
    body = exchange.json()
    assert body["error_code"] == "PAYLOAD_TOO_LARGE" and str(max_body) in body["detail"]
    assert (exchange.receive_calls, exchange.bytes_read) == (0, 0)
    assert await table_counts(gateway) == before


async def test_oversized_invocation_with_a_valid_key_delivers_and_records_nothing(
    gateway, client, org, platform_server
):
    agent = await register(client, org, platform_server)
    max_body, _ = limits_of(gateway)
    before = await table_counts(gateway)
    payload = json.dumps({"input": "x" * max_body}).encode()
    response = await client.post(
        f"/api/external-agents/{agent['id']}/invoke",
        content=payload,
        headers={**org.headers, **IDENTITY, "Content-Type": "application/json"},
    )
    assert_clear_4xx(response, status=413)
    assert platform_server.requests("/hook") == []
    assert await table_counts(gateway) == before


async def test_chunked_oversized_body_is_413_after_reading_at_most_the_limit(gateway, client, org, platform_server):
    agent = await register(client, org, platform_server)
    max_body, _ = limits_of(gateway)
    chunk = 64 * 1024
    before = await table_counts(gateway)
    exchange = await asgi_call(
        gateway.fastapi_app,
        "POST",
        f"/api/external-agents/{agent['id']}/invoke",
        headers=[INVALID_KEY, (b"content-type", b"application/json"), (b"transfer-encoding", b"chunked")],
        chunks=[b" " * chunk] * (2 * max_body // chunk),
    )
    assert exchange.status == 413, exchange.body[:300]
    assert max_body < exchange.bytes_read <= max_body + chunk
    assert await table_counts(gateway) == before


async def test_body_of_exactly_the_limit_is_accepted(gateway, client, org, platform_server):
    max_body, _ = limits_of(gateway)
    body = json.dumps(
        {
            "name": f"at-limit-{uuid.uuid4().hex[:8]}",
            "platform": "custom_http",
            "platform_config": {"url": platform_server.url("/hook")},
        }
    ).encode()
    padded = body + b" " * (max_body - len(body))
    assert len(padded) == max_body
    response = await client.post(
        "/api/external-agents", content=padded, headers={**org.headers, "Content-Type": "application/json"}
    )
    assert response.status_code == 201, response.text


async def test_oversized_headers_are_431_before_auth(gateway, client, org, platform_server):
    agent = await register(client, org, platform_server)
    _, max_header = limits_of(gateway)
    before = await table_counts(gateway)
    exchange = await asgi_call(
        gateway.fastapi_app,
        "POST",
        f"/api/external-agents/{agent['id']}/invoke",
        headers=[INVALID_KEY, (b"x-filler", b"a" * max_header), (b"content-length", b"2")],
        chunks=[b"{}"],
    )
    assert exchange.status == 431, exchange.body[:300]
    assert exchange.json()["error_code"] == "HEADERS_TOO_LARGE"
    assert (exchange.receive_calls, exchange.bytes_read) == (0, 0)
    assert await table_counts(gateway) == before


async def test_headers_of_exactly_the_limit_pass_the_size_check(gateway):
    _, max_header = limits_of(gateway)
    headers = [INVALID_KEY, (b"content-length", b"0")]
    used = len(b"host") + len(b"gateway.test") + sum(len(name) + len(value) for name, value in headers)
    headers.append((b"x-filler", b"a" * (max_header - used - len(b"x-filler"))))
    exchange = await asgi_call(gateway.fastapi_app, "GET", "/api/external-agents", headers=headers, chunks=[b""])
    # Past the size check, the invalid key is what refuses it.
    assert exchange.status == 401, exchange.body[:300]


async def test_invalid_content_length_is_400(gateway):
    exchange = await asgi_call(
        gateway.fastapi_app,
        "POST",
        "/api/external-agents",
        headers=[INVALID_KEY, (b"content-length", b"-5")],
        chunks=[b""],
    )
    assert exchange.status == 400 and exchange.receive_calls == 0


# ---------------------------------------------------------------------------------------------------------
# Malformed and hostile bodies: each route's valid body with one hostile JSON value spliced in.
# ---------------------------------------------------------------------------------------------------------

# Each is refused by any route that stores what it is given. The first group is not JSON a database or a
# client can hold (RFC 8259 has no NaN or Infinity; 1e400 is no double; a number past Python's 4,300-digit
# limit and nesting past the recursion limit cannot be parsed), so every route must refuse it as bad JSON.
UNPARSEABLE_JSON = {
    "truncated": b'"unterminated',
    "single-quotes": b"'x'",
    "not-utf8": b'"\xff\xfe"',
    "nan": b"NaN",
    "infinity": b"-Infinity",
    "overflowing-float": b"1e400",
    "too-many-digits": b"9" * 5000,
    "nested-100k-deep": b"[" * 100_000 + b"]" * 100_000,
    "nested-5000-deep-objects": b'{"a":' * 5000 + b"1" + b"}" * 5000,
}
# Valid JSON that PostgreSQL cannot store (U+0000) or that is not Unicode text (a lone surrogate).
UNSTORABLE_JSON = {
    "lone-surrogate": b'"\\ud800 alone"',
    "nul-character": b'"a\\u0000b"',
}


def body_templates(agent_id: str) -> dict[str, tuple[str, str, bytes]]:
    """For each route that stores its body, (method, path, body) with @@ where the hostile value goes."""
    return {
        "create-agent": (
            "POST",
            "/api/external-agents",
            b'{"name": "n-'
            + uuid.uuid4().hex.encode()
            + b'", "platform": "custom_http", "platform_config": {"url": "http://127.0.0.1:9/x"}, "description": @@}',
        ),
        "update-agent": ("PATCH", f"/api/external-agents/{agent_id}", b'{"description": @@}'),
        "invoke-input": ("POST", f"/api/external-agents/{agent_id}/invoke", b'{"input": @@}'),
        "invoke-context": ("POST", f"/api/external-agents/{agent_id}/invoke", b'{"input": 1, "context": {"k": @@}}'),
        "invoke-metadata": ("POST", f"/api/external-agents/{agent_id}/invoke", b'{"input": 1, "metadata": {"k": @@}}'),
        "create-policy": (
            "POST",
            "/api/policies",
            b'{"name": "p", "effect": "deny", "conditions": [{"type": "cost", "above_usd": @@}]}',
        ),
    }


async def send_hostile(client, org, value: bytes, templates: dict[str, tuple[str, str, bytes]]) -> dict[str, Any]:
    outcomes = {}
    for route, (method, path, template) in templates.items():
        response = await client.request(
            method,
            path,
            content=template.replace(b"@@", value),
            headers={**org.headers, **IDENTITY, "Content-Type": "application/json"},
        )
        outcomes[route] = (response.status_code, response.text[:200])
    return outcomes


@pytest.mark.parametrize("value_name", [*UNPARSEABLE_JSON, *UNSTORABLE_JSON])
async def test_hostile_json_values_are_a_clear_400_on_every_storing_route(
    gateway, client, org, platform_server, value_name
):
    agent = await register(client, org, platform_server)
    before = await table_counts(gateway)
    value = {**UNPARSEABLE_JSON, **UNSTORABLE_JSON}[value_name]
    outcomes = await send_hostile(client, org, value, body_templates(agent["id"]))
    not_400 = {route: outcome for route, outcome in outcomes.items() if outcome[0] != 400}
    assert not not_400, not_400
    assert all('"error_code":"VALIDATION_ERROR"' in text for _, text in outcomes.values()), outcomes
    assert platform_server.requests("/hook") == []
    assert await table_counts(gateway) == before


@asynccontextmanager
async def private_app(data_dir: Path) -> AsyncIterator[tuple[httpx.AsyncClient, Org]]:
    """An app of its own (SQLite): host workflows keep state between runs, and these tests must not leak theirs
    into the shared app."""
    settings = make_settings(f"sqlite:///{data_dir}/app.db", str(data_dir))
    async with running_app(settings) as app, app_client(app) as http:
        yield http, await new_org(app)


@pytest.fixture(scope="module")
async def host_workflow_app(tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[tuple[httpx.AsyncClient, Org]]:
    async with private_app(tmp_path_factory.mktemp("host-workflows")) as app:
        yield app


GREETING = ("POST", "/api/workflows/greeting/execute", b'{"inputs": {"greet": {"name": @@}}}')


@pytest.mark.parametrize("value_name", list(UNPARSEABLE_JSON))
async def test_unparseable_json_is_400_for_a_host_workflow_too(host_workflow_app, value_name):
    http, org = host_workflow_app
    outcomes = await send_hostile(http, org, UNPARSEABLE_JSON[value_name], {"execute-workflow": GREETING})
    assert outcomes["execute-workflow"][0] == 400, outcomes


async def test_one_callers_input_does_not_change_what_later_callers_get(tmp_path):
    """A NaN as the first input a freshly started app's host workflow sees made Kailash's parameter cache drop
    that parameter for every later run: all callers then got "Hello, world!" whatever name they sent."""
    async with private_app(tmp_path) as (http, org):
        await send_hostile(http, org, b"NaN", {"execute-workflow": GREETING})
        later = await http.post(
            "/api/workflows/greeting/execute", json={"inputs": {"greet": {"name": "Ada"}}}, headers=org.headers
        )
    assert later.json()["outputs"]["greet"]["greeting"] == "Hello, Ada!", later.text


@pytest.mark.parametrize(
    ("change", "mentions"),
    [
        ({"platform": "myspace"}, "platform"),
        ({"platform": 7}, "platform"),
        ({"name": 123}, "name"),
        ({"name": ""}, "name"),
        ({"name": "n" * 256}, "name"),
        ({"requests_per_minute": "10"}, "requests_per_minute"),
        ({"requests_per_minute": 10**30}, "requests_per_minute"),
        ({"requests_per_minute": 1.5}, "requests_per_minute"),
        ({"max_daily_cost": True}, "max_daily_cost"),
        ({"max_daily_cost": -1}, "max_daily_cost"),
        ({"platform_config": []}, "platform_config"),
        ({"platform_config": {"url": "not a url"}}, "url"),
        ({"auth_config": {"auth_type": "telepathy"}}, "auth_type"),
        ({"auth_config": {"auth_type": "bearer_token", "credentials": {}}}, "token"),
        ({"surprise": 1}, "surprise"),
    ],
)
async def test_wrong_types_and_unknown_values_in_a_registration_are_400_naming_the_field(
    gateway, client, org, platform_server, change, mentions
):
    before = await table_counts(gateway)
    body = {
        "name": f"bad-{uuid.uuid4().hex[:8]}",
        "platform": "custom_http",
        "platform_config": {"url": platform_server.url("/hook")},
        **change,
    }
    response = await client.post("/api/external-agents", json=body, headers=org.headers)
    assert_clear_4xx(response, status=400, mentions=mentions)
    assert await table_counts(gateway) == before


@pytest.mark.parametrize(
    ("header", "value"),
    [
        ("X-External-User-ID", "u" * 256),
        ("X-External-User-Email", "no-at-sign"),
        ("X-External-Context", "[1, 2]"),
        ("X-External-Context", '"text"'),
        ("X-External-Context", "{not json"),
        ("X-External-Context", '{"a": NaN}'),
        ("X-External-Context", '{"a": 1e999}'),
        ("X-External-Context", '{"a": ' + "7" * 5000 + "}"),
        ("X-External-Context", '{"a": ' + "[" * 6000 + "]" * 6000 + "}"),
        ("X-External-Context", '{"a": "\\u0000"}'),
        ("X-External-Context", '{"a": "\\udfff"}'),
    ],
)
async def test_bad_identity_headers_are_400_naming_the_header(gateway, client, org, platform_server, header, value):
    agent = await register(client, org, platform_server)
    before = await table_counts(gateway)
    response = await client.post(
        f"/api/external-agents/{agent['id']}/invoke",
        json={"input": "x"},
        headers={**org.headers, **IDENTITY, header: value},
    )
    assert_clear_4xx(response, status=400, mentions=header)
    assert platform_server.requests("/hook") == []
    assert await table_counts(gateway) == before


@pytest.mark.parametrize(
    "query",
    [
        "/api/external-agents?page=0",
        "/api/external-agents?page=-1",
        f"/api/external-agents?page={10**30}",
        "/api/external-agents?limit=101",
        "/api/external-agents?limit=abc",
        "/api/external-agents?search=" + "s" * 300,
        "/api/lineage?page=0",
        "/api/lineage?limit=100000",
        "/api/lineage?start_date=yesterday",
        "/api/lineage?end_date=2025-13-45T99:00:00Z",
        "/api/lineage/graph?depth=-1",
        "/api/lineage/graph?depth=abc",
        "/api/lineage/export?format=xml",
    ],
)
async def test_out_of_range_query_values_are_400(client, org, query):
    response = await client.get(query, headers=org.headers)
    assert_clear_4xx(response, status=400)


@pytest.mark.parametrize(
    "url",
    [
        "/api/policies?external_agent_id=a%00b",
        "/api/external-agents?search=%00",
        "/api/lineage?external_user_email=x%00@example.com",
        "/api/lineage/graph?session_id=%00",
        "/api/external-agents/a%00b",
        "/api/lineage/user/x%00@example.com",
    ],
)
async def test_a_nul_character_in_the_url_is_a_clear_400(gateway, client, org, url):
    """PostgreSQL cannot hold U+0000: a NUL in a query (refused by the request limits) or in a path id must be
    a 400, not a database error."""
    before = await table_counts(gateway)
    response = await client.get(url, headers=org.headers)
    assert_clear_4xx(response, status=400)
    assert await table_counts(gateway) == before


@pytest.mark.parametrize(
    "agent_id",
    [
        str(uuid.uuid4()),
        "../../etc/passwd",
        "' OR 1=1 --",
        "${agent_id}",
        "a" * 10_000,
        "%00",
        "😀",
    ],
)
async def test_unknown_and_hostile_ids_are_404(client, org, agent_id):
    from urllib.parse import quote

    path = quote(agent_id, safe="")
    for method, suffix, body in (
        ("GET", "", None),
        ("PATCH", "", {"description": "x"}),
        ("DELETE", "", None),
        ("GET", "/governance-status", None),
        ("POST", "/invoke", {"input": "x"}),
    ):
        response = await client.request(
            method, f"/api/external-agents/{path}{suffix}", json=body, headers={**org.headers, **IDENTITY}
        )
        assert_clear_4xx(response, status=404)
    for resource in ("lineage", "policies"):
        assert_clear_4xx(await client.get(f"/api/{resource}/{path}", headers=org.headers), status=404)


# ---------------------------------------------------------------------------------------------------------
# What is accepted comes back exactly.
# ---------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("text", HOSTILE_TEXT, ids=range(len(HOSTILE_TEXT)))
async def test_accepted_hostile_text_round_trips_through_registry_platform_and_lineage(
    client, org, platform_server, text
):
    agent = await register(client, org, platform_server, description=text)
    fetched = await client.get(f"/api/external-agents/{agent['id']}", headers=org.headers)
    assert fetched.json()["description"] == text
    # Header values travel as ASCII: the context header carries any text JSON-escaped, the name header plain.
    context = json.dumps({"note": text[:1000]})
    headers = {**org.headers, **IDENTITY, "X-External-Context": context}
    if text.isascii() and text.isprintable():
        headers["X-External-User-Name"] = text
    payload = {"input": {"text": text, "list": [text]}, "context": {"note": text}, "metadata": {"m": text}}
    response = await client.post(f"/api/external-agents/{agent['id']}/invoke", json=payload, headers=headers)
    assert response.status_code == 200, response.text
    [received] = platform_server.requests("/hook")
    assert received.json()["input"] == payload["input"]
    lineage = (await client.get(f"/api/lineage/{response.json()['invocation_id']}", headers=org.headers)).json()
    assert lineage["input"] == payload["input"]
    assert lineage["external_system"]["context"] == {"note": text[:1000]}
    if "X-External-User-Name" in headers:
        assert lineage["external_user"]["name"] == text


@pytest.mark.parametrize("number", ["1.0", "0.1", "1e308", "5e-324", "123456789012345678901234567890"])
async def test_accepted_numbers_round_trip_with_their_json_type_and_precision(client, org, platform_server, number):
    agent = await register(client, org, platform_server)
    response = await client.post(
        f"/api/external-agents/{agent['id']}/invoke",
        content=b'{"input": ' + number.encode() + b"}",
        headers={**org.headers, **IDENTITY, "Content-Type": "application/json"},
    )
    assert response.status_code == 200, response.text
    lineage = (await client.get(f"/api/lineage/{response.json()['invocation_id']}", headers=org.headers)).json()
    # json.dumps tells 1.0 from 1 and 1e308 (a float) from 10**308 (an int): both must survive storage.
    assert json.dumps(lineage["input"]) == json.dumps(json.loads(number))
