"""Secrets never leave the delivery step: a scenario through every auth type and secret-bearing platform field,
then a scan of everything the app produced for any secret.

Secrets: each agent's credentials (bearer token, API key, basic password, OAuth2 client secret and the access
token it fetched, HMAC secret, custom header, Telegram bot token, Notion token, a Slack webhook URL whose
path is the secret, and a rotated token), the caller's API key, and the Fernet key. The platform is hostile:
its errors (and its OAuth2 token endpoint's) echo the credentials they were sent.

Scanned, in full: every log record the app emits as configured (the project's own loggers switched to DEBUG,
third-party libraries at the levels the app sets for them; SQLAlchemy's statement echo, a debugging aid that
prints every bound parameter, stays off), with tracebacks; stdout and stderr; every REST and MCP response
body and header; every row of every table (audit_log and invocation_lineage included); every file under
~/.kailash.
"""

from __future__ import annotations

import logging
import secrets
import uuid
from collections.abc import AsyncIterator, Iterator
from contextlib import ExitStack
from pathlib import Path
from typing import Any

import httpx
import pytest
import sqlalchemy as sa

from tests.factories import (
    IDENTITY,
    TEST_FERNET_KEY,
    app_client,
    make_settings,
    new_org,
    running_app,
    throwaway_database,
)
from tests.platform_server import TOKEN_PATH, PlatformServer, ScriptedResponse


def secret(label: str) -> str:
    return f"sekret-{label}-{secrets.token_hex(12)}"


class CaptureAll(logging.Handler):
    """Every record, formatted with its traceback, as an operator's log file would hold it."""

    def __init__(self) -> None:
        super().__init__(level=logging.DEBUG)
        self.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s %(message)s"))
        self.lines: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.lines.append(self.format(record))


OWN_LOGGERS = ("channels", "nodes", "stores", "workflows", "models", "external_agents", "settings", "app_state")


@pytest.fixture
def all_logs() -> Iterator[CaptureAll]:
    handler = CaptureAll()
    root = logging.getLogger()
    loggers = [root, *(logging.getLogger(name) for name in OWN_LOGGERS)]
    levels = {logger: logger.level for logger in loggers}
    for logger in loggers:
        logger.setLevel(logging.DEBUG)
    # The app's configuration for everything else: the noisy SDKs at WARNING, SQLAlchemy's echo off.
    for name in ("sqlalchemy", "aiosqlite", "asyncio"):
        levels.setdefault(logging.getLogger(name), logging.getLogger(name).level)
        logging.getLogger(name).setLevel(logging.WARNING)
    root.addHandler(handler)
    yield handler
    root.removeHandler(handler)
    for logger, level in levels.items():
        logger.setLevel(level)


@pytest.fixture(scope="module", params=["sqlite", "postgres"])
async def scan_gateway(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory, postgres_url: str):
    data_dir = tmp_path_factory.mktemp(f"secret-scan-{request.param}")
    with ExitStack() as cleanup:
        if request.param == "postgres":
            database_url = cleanup.enter_context(throwaway_database(postgres_url, prefix="ea_secret_scan_"))
        else:
            database_url = f"sqlite:///{data_dir}/scan.db"
        settings = make_settings(database_url, str(data_dir), external_agent_webhook_retry_attempts=0)
        async with running_app(settings) as app:
            yield app


@pytest.fixture
async def recorded(scan_gateway) -> AsyncIterator[tuple[httpx.AsyncClient, list[str]]]:
    """A client whose every response (status, headers, body) is kept for the scan."""
    seen: list[str] = []

    async def keep(response: httpx.Response) -> None:
        await response.aread()
        headers = "\n".join(f"{k}: {v}" for k, v in response.headers.multi_items())
        seen.append(f"{response.status_code}\n{headers}\n{response.text}")

    async with app_client(scan_gateway, event_hooks={"response": [keep]}) as http:
        yield http, seen


CUSTOM_AUTH_LABELS = ("bearer", "api_key", "basic", "oauth2", "hmac", "custom")


def make_secrets() -> dict[str, str]:
    labels = ("bearer", "api_key", "basic", "client_secret", "access_token", "hmac", "custom_header", "notion")
    values = {label: secret(label) for label in (*labels, "rotated", "webhook")}
    values["bot_token"] = f"{secrets.randbelow(10**9) + 10**8}:{secrets.token_urlsafe(30)}"
    return values


def auth_specs(platform: PlatformServer, s: dict[str, str], unique: str) -> list[dict[str, Any]]:
    """One custom_http agent per auth type, with the secrets the platform receives from it."""

    def spec(label: str, auth_type: str, credentials: dict[str, Any], sent: list[str]) -> dict[str, Any]:
        return {
            "platform": "custom_http",
            "platform_config": {"url": platform.url(f"/{unique}/{label}")},
            "auth_config": {"auth_type": auth_type, "credentials": credentials},
            "sent": sent,
        }

    oauth2 = {"client_id": "scan-client", "client_secret": s["client_secret"], "token_url": platform.url(TOKEN_PATH)}
    return [
        spec("bearer", "bearer_token", {"token": s["bearer"]}, [s["bearer"]]),
        spec("api-key", "api_key", {"api_key": s["api_key"], "header_name": "X-Key"}, [s["api_key"]]),
        spec("basic", "basic", {"username": "scan-user", "password": s["basic"]}, [s["basic"]]),
        spec("oauth2", "oauth2", oauth2, [s["client_secret"], s["access_token"]]),
        spec("hmac", "hmac", {"secret": s["hmac"]}, [s["hmac"]]),
        spec("custom", "custom", {"headers": {"X-Custom-Auth": s["custom_header"]}}, [s["custom_header"]]),
    ]


def platform_specs(platform: PlatformServer, s: dict[str, str], unique: str) -> list[dict[str, Any]]:
    """Agents whose platform_config holds the secret: Telegram's bot token (in the URL) and Notion's token."""
    none = {"auth_type": "none", "credentials": {}}
    return [
        {
            "platform": "telegram",
            "platform_config": {
                "bot_token": s["bot_token"],
                "chat_id": "42",
                "api_base_url": platform.url(f"/{unique}/telegram"),
            },
            "auth_config": none,
            "sent": [s["bot_token"]],
        },
        {
            "platform": "notion",
            "platform_config": {
                "token": s["notion"],
                "database_id": "0123456789abcdef0123456789abcdef",
                "api_base_url": platform.url(f"/{unique}/notion"),
            },
            "auth_config": none,
            "sent": [s["notion"]],
        },
    ]


async def register_all(http: httpx.AsyncClient, org, specs: list[dict[str, Any]], unique: str) -> list[str]:
    agent_ids = []
    for n, spec in enumerate(specs):
        body = {"name": f"scan-{unique}-{n}", **{k: v for k, v in spec.items() if k != "sent"}}
        created = await http.post("/api/external-agents", json=body, headers=org.headers)
        assert created.status_code == 201, created.text
        agent_ids.append(created.json()["id"])
        # The same body again: the 409 must not echo it.
        assert (await http.post("/api/external-agents", json=body, headers=org.headers)).status_code == 409
    return agent_ids


async def invoke(http: httpx.AsyncClient, org, agent_id: str, *expected: int) -> httpx.Response:
    response = await http.post(
        f"/api/external-agents/{agent_id}/invoke", json={"input": "scan"}, headers={**org.headers, **IDENTITY}
    )
    assert response.status_code in expected, response.text
    await http.get(f"/api/lineage/{response.json()['invocation_id']}", headers=org.headers)
    return response


async def path_of_next_delivery(http: httpx.AsyncClient, org, platform: PlatformServer, agent_id: str) -> str:
    """Invoke once (any outcome: Telegram and Notion want replies of their own shape) and return its path."""
    seen = len(platform.requests())
    await invoke(http, org, agent_id, 200, 502)
    [path] = {r.path for r in platform.requests()[seen:]} - {TOKEN_PATH}
    return path


# The headers auth_specs' agents put their credentials in (HMAC sends a signature, never its secret).
AUTH_HEADERS = frozenset({"authorization", "x-key", "x-custom-auth"})


def scan(places: dict[str, list[str]], named: dict[str, str]) -> dict[str, list[str]]:
    """Which secrets (by name) appear in which text (by place and index)."""
    return {
        f"{place} #{index}": [name for name, value in named.items() if value in text]
        for place, texts in places.items()
        for index, text in enumerate(texts)
        if any(value in text for value in named.values())
    }


def explain(found: dict[str, list[str]], places: dict[str, list[str]]) -> str:
    if not found:
        return ""
    place, index = next(iter(found)).rsplit(" #", 1)
    return f"{found}; first: {places[place][int(index)][:400]}"


async def test_no_credential_reaches_logs_responses_rows_or_files(
    scan_gateway, recorded, all_logs: CaptureAll, platform_server: PlatformServer, capfd: pytest.CaptureFixture[str]
):
    http, responses = recorded
    s = make_secrets()
    org = await new_org(scan_gateway)
    unique = uuid.uuid4().hex[:8]
    specs = auth_specs(platform_server, s, unique) + platform_specs(platform_server, s, unique)
    agent_ids = await register_all(http, org, specs, unique)
    platform_server.script(TOKEN_PATH, ScriptedResponse(body={"access_token": s["access_token"], "expires_in": 3600}))
    # A hostile platform: its errors echo back every credential it was sent.
    for agent_id, spec in zip(agent_ids, specs, strict=True):
        path = await path_of_next_delivery(http, org, platform_server, agent_id)
        echo = " ".join(f"you sent {value}" for value in spec["sent"])
        platform_server.script(path, ScriptedResponse(500, body=f"rejected: {echo}"))
        await invoke(http, org, agent_id, 502)

    # A token endpoint that refuses, echoing the client secret.
    refusing = {
        "name": f"scan-{unique}-refused",
        "platform": "custom_http",
        "platform_config": {"url": platform_server.url(f"/{unique}/refused")},
        "auth_config": {
            "auth_type": "oauth2",
            "credentials": {
                "client_id": "c",
                "client_secret": s["client_secret"],
                "token_url": platform_server.url("/refusing-token"),
            },
        },
    }
    platform_server.script("/refusing-token", ScriptedResponse(401, body=f"bad client_secret={s['client_secret']}"))
    created = await http.post("/api/external-agents", json=refusing, headers=org.headers)
    await invoke(http, org, created.json()["id"], 502)
    # Rotation, reads of every kind, and bad registrations that carry secrets in unexpected places.
    rotated = {"auth_config": {"auth_type": "bearer_token", "credentials": {"token": s["rotated"]}}}
    assert (await http.patch(f"/api/external-agents/{agent_ids[0]}", json=rotated, headers=org.headers)).is_success
    platform_server.script(f"/{unique}/bearer", ScriptedResponse(401, body=f"unknown token {s['rotated']}"))
    await invoke(http, org, agent_ids[0], 502)
    for agent_id in agent_ids:
        await http.get(f"/api/external-agents/{agent_id}", headers=org.headers)
        await http.get(f"/api/external-agents/{agent_id}/governance-status", headers=org.headers)
    await http.get("/api/external-agents", headers=org.headers)
    await http.get("/api/lineage/export?format=csv", headers=org.headers)
    for bad_credentials in ({"token": s["bearer"], "unexpected": s["hmac"]}, {"tok": s["bearer"]}):
        bad = {
            "name": f"bad-{unique}",
            "platform": "custom_http",
            "platform_config": {"url": platform_server.url("/x")},
            "auth_config": {"auth_type": "bearer_token", "credentials": bad_credentials},
        }
        assert (await http.post("/api/external-agents", json=bad, headers=org.headers)).status_code == 400
    mcp_invoke = {
        "agent_id": agent_ids[0],
        "input": "mcp",
        "external_user_id": "u",
        "external_user_email": "u@example.com",
        "external_system": "mcp",
        "external_session_id": "s",
    }
    for name, arguments in (("get_agent", {"agent_id": agent_ids[0]}), ("invoke_agent", mcp_invoke)):
        await http.post(
            "/mcp",
            json={"jsonrpc": "2.0", "id": 1, "method": "tools/call", "params": {"name": name, "arguments": arguments}},
            headers={**org.headers, "Accept": "application/json, text/event-stream"},
        )

    # Every credential really was used: each platform path and the token endpoint saw requests.
    assert len(platform_server.requests()) >= 2 * len(agent_ids) and platform_server.requests(TOKEN_PATH)
    output = capfd.readouterr()
    places = {
        "log line": all_logs.lines,
        "stdout/stderr": [output.out, output.err],
        "response": responses,
        "database row": await every_row(scan_gateway),
        "~/.kailash file": kailash_files(),
    }
    named_secrets = {
        **{k: v for k, v in s.items() if k != "webhook"},
        "api key": org.api_key,
        "fernet": TEST_FERNET_KEY,
    }
    assert all_logs.lines and responses
    found = scan(places, named_secrets)
    assert not found, explain(found, places)


async def test_a_platform_echoing_credentials_in_its_answer_does_not_hand_them_to_the_caller(
    scan_gateway, recorded, platform_server: PlatformServer
):
    """A debugging endpoint (or a hostile one) returns the request it got; the caller must not see the
    agent's credentials in the invocation output, in lineage or in an export."""
    http, responses = recorded
    s = make_secrets()
    org = await new_org(scan_gateway)
    unique = uuid.uuid4().hex[:8]
    specs = auth_specs(platform_server, s, unique)
    agent_ids = await register_all(http, org, specs, unique)
    platform_server.script(TOKEN_PATH, ScriptedResponse(body={"access_token": s["access_token"], "expires_in": 3600}))
    sent: dict[str, str] = {}
    for agent_id in agent_ids:
        path = await path_of_next_delivery(http, org, platform_server, agent_id)
        received = platform_server.requests(path)[-1]
        # Echo exactly what arrived: every header (Authorization, X-Key, X-Custom-Auth...) and the body.
        echo = {"headers": dict(received.headers.items()), "body": received.body.decode()}
        sent |= {f"{path} {name}": value for name, value in received.headers.items() if name in AUTH_HEADERS}
        platform_server.script(path, ScriptedResponse(200, body={"you_sent": echo}))
        await invoke(http, org, agent_id, 200)
    await http.get("/api/lineage/export?format=json", headers=org.headers)
    places = {"response": responses, "database row": await every_row(scan_gateway)}
    credentials = {k: v for k, v in s.items() if k not in ("webhook", "rotated", "notion", "bot_token")}
    assert any(v in text for v in credentials.values() for text in sent.values())  # the echo carries them
    # The auth headers as sent, the OAuth2 access token included (an earlier test may have fetched it).
    found = scan(places, {**credentials, **{k: v.split(" ")[-1] for k, v in sent.items()}})
    assert not found, explain(found, places)


@pytest.mark.parametrize("platform", ["slack", "discord", "teams"])
async def test_webhook_urls_are_credentials_sealed_masked_and_scrubbed(
    scan_gateway, recorded, platform_server: PlatformServer, platform
):
    """Anyone holding a Slack, Discord or Teams webhook URL can post as the agent: the URL is its credential.
    It must be stored sealed like Telegram's bot token, come back masked, and be scrubbed from error texts."""
    http, responses = recorded
    webhook = platform_server.url(f"/hooks/{platform}/{secret('webhook')}")
    org = await new_org(scan_gateway)
    body = {
        "name": f"hook-{uuid.uuid4().hex[:8]}",
        "platform": platform,
        "platform_config": {"webhook_url": webhook},
    }
    created = await http.post("/api/external-agents", json=body, headers=org.headers)
    assert created.status_code == 201, created.text
    agent_id = created.json()["id"]
    await http.get(f"/api/external-agents/{agent_id}", headers=org.headers)
    await http.get("/api/external-agents", headers=org.headers)
    path = await path_of_next_delivery(http, org, platform_server, agent_id)
    assert webhook.endswith(path)  # the secret URL really was used
    platform_server.script(path, ScriptedResponse(404, body=f"no such webhook: {webhook}"))
    await invoke(http, org, agent_id, 502)
    places = {"response": responses, "database row": await every_row(scan_gateway)}
    found = scan(places, {"webhook url": webhook, "webhook path": path})
    assert not found, explain(found, places)


async def every_row(gateway) -> list[str]:
    engine = gateway.external_agents.engine
    async with engine.connect() as connection:
        tables = await connection.run_sync(lambda sync: sa.inspect(sync).get_table_names())
        rows = []
        for table in tables:
            result = await connection.execute(sa.text(f'SELECT * FROM "{table}"'))  # noqa: S608
            rows += [f"{table}: {tuple(row)!r} {row_text(row)}" for row in result]
        return rows


def row_text(row: Any) -> str:
    # bytea/blob columns as raw text too, so a secret stored unencrypted would be found.
    return " ".join(bytes(v).decode("latin-1") for v in row if isinstance(v, bytes | memoryview))


def kailash_files() -> list[str]:
    root = Path.home() / ".kailash"
    if not root.exists():
        return []
    return [path.read_bytes().decode("latin-1") for path in root.rglob("*") if path.is_file()]
