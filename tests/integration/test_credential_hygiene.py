"""Credentials stay secret in every encoding a platform may echo them in, and bad ones are refused up front.

A hostile platform answers an error that quotes the credential it was sent: as sent, JSON-escaped (a secret
holding `"` and `\\`), whitespace-collapsed, percent-encoded or base64 (basic auth's `user:pass` too). None of
those forms may reach the 502 body, the lineage row or a log line. A credential with a control character is a
400 naming the field at registration and update, over REST and the CLI; one stored before that rule (so httpx
refuses to send it) never leaves, and is neither retried nor billed.
"""

from __future__ import annotations

import asyncio
import base64
import json
import logging
from typing import Any
from urllib.parse import quote, quote_plus

import pytest
import sqlalchemy as sa
from typer.testing import CliRunner

from external_agents.channels.cli import app as cli_app
from tests.factories import TEST_FERNET_KEY, invoke, register, rows
from tests.platform_server import PlatformServer, ScriptedResponse

# Printable ASCII (a valid header value) with everything an escaping step changes: quotes, backslash, runs of
# spaces, and characters that percent- and base64-encoding rewrite.
TOKEN = 'tok"quoted\\back  double   spaces+plus/slash=eq&amp?q'
USERNAME = "basic-user"
PASSWORD = 'pa"ss\\word  with+spaces'


def forms(secret: str) -> dict[str, str]:
    """Each form a platform may echo `secret` in, written out here independently of the code under test."""
    raw = secret.encode()
    return {
        "raw": secret,
        "json_escaped": json.dumps(secret)[1:-1],
        "whitespace_collapsed": " ".join(secret.split()),
        "json_escaped_collapsed": " ".join(json.dumps(secret)[1:-1].split()),
        "percent_encoded": quote(secret, safe=""),
        "form_encoded": quote_plus(secret),
        "base64": base64.b64encode(raw).decode(),
        "base64_unpadded": base64.b64encode(raw).decode().rstrip("="),
        "base64_urlsafe": base64.urlsafe_b64encode(raw).decode(),
    }


def every_form(*secrets: str) -> list[str]:
    return [form for secret in secrets for form in forms(secret).values()]


def echo(encoding: str, secret: str) -> ScriptedResponse:
    """A 401 (never retried) whose body quotes `secret` in `encoding`."""
    if encoding == "json_escaped":
        return ScriptedResponse(401, body={"error": "invalid_token", "received": secret})
    return ScriptedResponse(401, body=f"rejected credential: {forms(secret)[encoding]} (check your settings)")


def assert_nowhere(secrets: list[str], *places: str) -> None:
    for place in places:
        for form in secrets:
            assert form not in place, f"a form of a credential leaked: {form!r}"


async def lineage_text(gateway: Any, invocation_id: str) -> str:
    [row] = await rows(gateway, "SELECT * FROM invocation_lineage WHERE id = :id", id=invocation_id)
    return " ".join(str(value) for value in row.values())


@pytest.mark.parametrize(
    "encoding", ["raw", "json_escaped", "whitespace_collapsed", "percent_encoded", "form_encoded", "base64"]
)
async def test_an_echoed_bearer_token_is_scrubbed_in_every_encoding(
    gateway, client, org, platform_server: PlatformServer, caplog: pytest.LogCaptureFixture, encoding: str
) -> None:
    caplog.set_level(logging.DEBUG)
    path = f"/echo-{encoding}"
    agent = await register(
        client,
        org,
        platform_server,
        path=path,
        auth_config={"auth_type": "bearer_token", "credentials": {"token": TOKEN}},
    )
    platform_server.script(path, echo(encoding, TOKEN))

    response = await invoke(client, org, agent["id"])

    assert response.status_code == 502, response.text
    # The platform did receive the token and did echo it: the scrubbing is what keeps it out.
    assert platform_server.requests(path)[0].headers["Authorization"] == f"Bearer {TOKEN}"
    assert "rejected credential" in response.json()["detail"] or "invalid_token" in response.json()["detail"]
    leaks = every_form(TOKEN)
    assert_nowhere(leaks, response.text, response.json()["detail"], str(dict(response.headers)))
    assert_nowhere(leaks, await lineage_text(gateway, response.json()["invocation_id"]))
    assert_nowhere(leaks, caplog.text)


@pytest.mark.parametrize("encoding", ["raw", "json_escaped", "whitespace_collapsed", "base64"])
async def test_an_echoed_basic_auth_pair_is_scrubbed(
    gateway, client, org, platform_server: PlatformServer, caplog: pytest.LogCaptureFixture, encoding: str
) -> None:
    caplog.set_level(logging.DEBUG)
    path = f"/echo-basic-{encoding}"
    agent = await register(
        client,
        org,
        platform_server,
        path=path,
        auth_config={"auth_type": "basic", "credentials": {"username": USERNAME, "password": PASSWORD}},
    )
    pair = f"{USERNAME}:{PASSWORD}"
    platform_server.script(path, echo(encoding, pair))

    response = await invoke(client, org, agent["id"])

    assert response.status_code == 502, response.text
    sent = platform_server.requests(path)[0].headers["Authorization"]
    assert sent == "Basic " + base64.b64encode(pair.encode()).decode()
    leaks = every_form(pair, PASSWORD)
    assert_nowhere(leaks, response.text, await lineage_text(gateway, response.json()["invocation_id"]), caplog.text)


async def test_an_echo_in_a_successful_answer_is_scrubbed_from_the_output(
    gateway, client, org, platform_server: PlatformServer
) -> None:
    path = "/echo-output"
    agent = await register(
        client,
        org,
        platform_server,
        path=path,
        auth_config={"auth_type": "bearer_token", "credentials": {"token": TOKEN}},
    )
    echoed = {name: value for name, value in forms(TOKEN).items()}
    platform_server.script(path, ScriptedResponse(200, body={"you_sent": echoed}))

    response = await invoke(client, org, agent["id"])

    assert response.status_code == 200, response.text
    assert set(response.json()["output"]["you_sent"]) == set(echoed)
    assert_nowhere(every_form(TOKEN), response.text, await lineage_text(gateway, response.json()["invocation_id"]))


@pytest.mark.parametrize(
    ("auth_type", "legacy", "refused_by"),
    [
        # Delivery re-checks a header credential before sending it.
        ("bearer_token", {"token": "legacy-token-with-newline\n"}, "auth_config.credentials.token"),
        # A custom header is sent as stored: checked before httpx, whose refusal would quote it in a debug log.
        ("custom", {"headers": {"X-Legacy": "legacy-header-with-newline\n"}}, "header X-Legacy"),
    ],
)
async def test_a_stored_credential_that_cannot_be_sent_is_not_sent_retried_or_billed(
    gateway,
    client,
    org,
    platform_server: PlatformServer,
    caplog: pytest.LogCaptureFixture,
    auth_type,
    legacy,
    refused_by,
) -> None:
    """An agent whose credential was stored before control characters were refused."""
    caplog.set_level(logging.DEBUG)
    path = f"/never-left-{auth_type}"
    agent = await register(client, org, platform_server, path=path, name=path, cost_per_execution=0.25)
    sealed = gateway.external_agents.cipher.encrypt({"auth": legacy, "platform": {}})
    async with gateway.external_agents.engine.begin() as connection:
        await connection.execute(
            sa.text("UPDATE external_agents SET auth_config = :auth, encrypted_credentials = :sealed WHERE id = :id"),
            {"auth": json.dumps({"auth_type": auth_type}), "sealed": sealed, "id": agent["id"]},
        )

    response = await invoke(client, org, agent["id"])

    assert response.status_code == 502, response.text
    body = response.json()
    assert refused_by in body["detail"] and "(after 1 attempt)" in body["detail"]
    assert platform_server.requests(path) == []
    [row] = await rows(gateway, "SELECT * FROM invocation_lineage WHERE id = :id", id=body["invocation_id"])
    assert (row["status"], float(row["cost_usd"]), row["webhook_attempts"]) == ("failure", 0.0, 1)
    assert await rows(gateway, "SELECT id FROM billing_usage WHERE external_agent_id = :id", id=agent["id"]) == []
    status = await client.get(f"/api/external-agents/{agent['id']}/governance-status", headers=org.headers)
    assert status.json()["budget"]["daily_spent_usd"] == 0
    secret = next(iter(legacy.get("headers", legacy).values()))
    leaks = [*every_form(secret, secret.strip()), repr(secret.encode())[2:-1]]
    assert_nowhere(leaks, response.text, await lineage_text(gateway, body["invocation_id"]), caplog.text)


CONTROL_CHARACTERS = {"LF": "\n", "CR": "\r", "CRLF": "\r\n", "NUL": "\x00", "TAB": "\t", "ESC": "\x1b", "DEL": "\x7f"}

# Each secret a registration takes, as (platform, platform_config, auth_config, the field named in the 400).
# `{bad}` is where the control character goes: at the end, as a pasted newline would be.
SECRET_FIELDS = [
    ("custom_http", {}, {"auth_type": "bearer_token", "credentials": {"token": "tok{bad}"}}, "token"),
    ("custom_http", {}, {"auth_type": "api_key", "credentials": {"api_key": "key{bad}"}}, "api_key"),
    ("custom_http", {}, {"auth_type": "api_key", "credentials": {"key": "key{bad}"}}, "key"),
    ("custom_http", {}, {"auth_type": "basic", "credentials": {"username": "u{bad}", "password": "p"}}, "username"),
    ("custom_http", {}, {"auth_type": "basic", "credentials": {"username": "u", "password": "pw{bad}"}}, "password"),
    ("custom_http", {}, {"auth_type": "oauth2", "credentials": {"token": "tok{bad}"}}, "token"),
    (
        "custom_http",
        {},
        {"auth_type": "oauth2", "credentials": {"client_id": "id{bad}", "client_secret": "s", "token_url": "{url}"}},
        "client_id",
    ),
    (
        "custom_http",
        {},
        {"auth_type": "oauth2", "credentials": {"client_id": "id", "client_secret": "s{bad}", "token_url": "{url}"}},
        "client_secret",
    ),
    (
        "custom_http",
        {},
        {"auth_type": "custom", "credentials": {"headers": {"X-Secret": "v{bad}"}}},
        "headers.X-Secret",
    ),
    ("custom_http", {}, {"auth_type": "hmac", "credentials": {"secret": "hmac{bad}"}}, "secret"),
    ("custom_http", {"headers": {"X-Configured": "v{bad}"}}, {"auth_type": "none"}, "platform_config.headers"),
    ("telegram", {"chat_id": 1, "bot_token": "123456:ABCdef{bad}"}, {"auth_type": "none"}, "platform_config.bot_token"),
    ("notion", {"database_id": "0" * 32, "token": "secret_x{bad}"}, {"auth_type": "none"}, "platform_config.token"),
    ("slack", {"webhook_url": "{url}{bad}"}, {"auth_type": "none"}, "platform_config.webhook_url"),
    ("discord", {"webhook_url": "{url}{bad}"}, {"auth_type": "none"}, "platform_config.webhook_url"),
    ("teams", {"webhook_url": "{url}{bad}"}, {"auth_type": "none"}, "platform_config.webhook_url"),
]


def fill(value: Any, *, bad: str, url: str) -> Any:
    if isinstance(value, str):
        return value.replace("{bad}", bad).replace("{url}", url)
    if isinstance(value, dict):
        return {k: fill(v, bad=bad, url=url) for k, v in value.items()}
    return value


def expected_field(field: str, platform_config: dict[str, Any], header: str) -> str:
    if field.startswith("platform_config."):
        return field + (".X-Configured" if "headers" in platform_config else "")
    return f"auth_config.credentials.{field}"


@pytest.mark.parametrize("character", list(CONTROL_CHARACTERS))
@pytest.mark.parametrize(("platform", "platform_config", "auth_config", "field"), SECRET_FIELDS)
async def test_a_secret_with_a_control_character_is_refused_at_registration_and_update(
    client, org, platform_server: PlatformServer, platform, platform_config, auth_config, field, character
) -> None:
    bad = CONTROL_CHARACTERS[character]
    url = platform_server.url("/hook")
    config = fill(platform_config, bad=bad, url=url)
    if platform == "custom_http":
        config = {"url": url, **config}
    named = expected_field(field, platform_config, character)
    body = {"name": f"bad-{platform}-{field}-{character}", "platform": platform, "platform_config": config}
    body["auth_config"] = fill(auth_config, bad=bad, url=url)

    created = await client.post("/api/external-agents", json=body, headers=org.headers)

    assert created.status_code == 400, created.text
    assert named in created.json()["detail"]
    assert bad not in created.json()["detail"]

    good = {"name": body["name"], "platform": platform, "platform_config": fill(platform_config, bad="", url=url)}
    if platform == "custom_http":
        good["platform_config"] = {"url": url, **good["platform_config"]}
    good["auth_config"] = fill(auth_config, bad="", url=url)
    agent = await client.post("/api/external-agents", json=good, headers=org.headers)
    assert agent.status_code == 201, agent.text
    patched = await client.patch(
        f"/api/external-agents/{agent.json()['id']}",
        json={"platform_config": config, "auth_config": body["auth_config"]},
        headers=org.headers,
    )
    assert patched.status_code == 400, patched.text
    assert named in patched.json()["detail"]


async def test_the_cli_refuses_a_token_ending_in_a_newline_in_one_line(gateway, org, platform_server) -> None:
    settings = gateway.external_agents.settings
    env = {
        "DATABASE_URL": settings.database_url,
        "KAIZEN_DATA_DIR": str(settings.kaizen_data_dir),
        "REDIS_URL": settings.redis_url,
        "EXTERNAL_AGENT_ENCRYPTION_KEY": TEST_FERNET_KEY,
        "EXTERNAL_AGENT_ALLOW_PRIVATE_WEBHOOKS": "true",
        "KAIZEN_API_KEY": None,
        "KAIZEN_URL": None,
    }
    args = [
        "agents",
        "create",
        "--name",
        "cli-newline",
        "--platform",
        "custom_http",
        "--platform-config",
        json.dumps({"url": platform_server.url("/cli-newline")}),
        "--auth-config",
        json.dumps({"auth_type": "bearer_token", "credentials": {"token": "cli-token\n"}}),
        "--api-key",
        org.api_key,
    ]

    result = await asyncio.to_thread(CliRunner().invoke, cli_app, args, env=env)

    assert result.exit_code == 2, result.output
    [line] = result.stderr.strip().splitlines()
    assert line.startswith("error: ") and "auth_config.credentials.token" in line
    assert "cli-token" not in result.output
