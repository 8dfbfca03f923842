"""Delivery over real sockets to the local platform server: payloads, auth headers, OAuth2, retries, failures.

Every platform's request is checked field by field against the payload its documentation describes. Timeouts
and backoff are small so the whole file runs in a few seconds.
"""

from __future__ import annotations

import asyncio
import base64
import hmac
import logging
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import replace
from typing import Any

import pytest

from external_agents.errors import PlatformError, PlatformTimeoutError
from external_agents.nodes.platforms import get_adapter
from external_agents.nodes.platforms.auth import OAuth2TokenCache, validate_auth_config
from external_agents.nodes.platforms.base import DeliveryOptions, DeliveryRequest, DeliveryResult
from external_agents.nodes.platforms.delivery import deliver
from external_agents.nodes.platforms.http_client import PlatformClient
from tests.platform_server import TOKEN_PATH, PlatformServer, ScriptedResponse, closed_port_url

OPTIONS = DeliveryOptions(
    timeout_seconds=0.3,
    retry_attempts=2,
    allow_private_webhooks=True,
    allowed_webhook_domains=(),
    backoff_base_seconds=0.01,
    max_retry_after_seconds=2,
)
BOT_TOKEN = "123456:ABC-DEF_ghijklmnopqrstuvwxyz0123"
NOTION_TOKEN = "secret_notion_integration_token"
DATABASE_ID = "0123456789abcdef0123456789abcdef"
FACTS = [
    ("User", "Ada <ada@example.com>"),
    ("System", "crm"),
    ("Session", "sess-1"),
    ("Invocation", "inv-1"),
    ("Trace", "trace-1"),
]


@pytest.fixture
async def client() -> AsyncIterator[PlatformClient]:
    # The app's own client (it uses no proxy from the environment, so none sees or breaks traffic to 127.0.0.1).
    http_client = PlatformClient(max_connections=100)
    yield http_client
    await http_client.aclose()


def make_request(
    platform: str,
    platform_config: dict[str, Any],
    *,
    auth_config: dict[str, Any] | None = None,
    **overrides: Any,
) -> DeliveryRequest:
    config = get_adapter(platform).validate_config(platform_config)
    auth_type, non_secret, credentials = validate_auth_config(auth_config or {"auth_type": "none"})
    values: dict[str, Any] = {
        "invocation_id": "inv-1",
        "trace_id": "trace-1",
        "agent_id": "agent-1",
        "agent_name": "Support Bot",
        "platform_config": config,
        "auth_type": auth_type,
        "auth_config": non_secret,
        "credentials": credentials,
        "input": "Hello *world*",
        "context": {"environment": "test"},
        "external_user_id": "u-1",
        "external_user_email": "ada@example.com",
        "external_user_name": "Ada",
        "external_system": "crm",
        "external_session_id": "sess-1",
    }
    return DeliveryRequest(**(values | overrides))


async def send(
    request: DeliveryRequest,
    client: PlatformClient,
    *,
    platform: str = "custom_http",
    options: DeliveryOptions = OPTIONS,
    token_cache: OAuth2TokenCache | None = None,
) -> DeliveryResult:
    return await deliver(
        request,
        adapter=get_adapter(platform),
        client=client,
        options=options,
        token_cache=token_cache or OAuth2TokenCache(),
    )


def _paragraph(text: str) -> dict[str, Any]:
    return {
        "object": "block",
        "type": "paragraph",
        "paragraph": {"rich_text": [{"type": "text", "text": {"content": text}}]},
    }


# (platform, config from the server, path, query, scripted answer, expected body, expected headers, output)
PlatformCase = tuple[
    str,
    Callable[[PlatformServer], dict[str, Any]],
    str,
    dict[str, list[str]],
    ScriptedResponse,
    Any,
    dict[str, str],
    Any,
]

PLATFORM_CASES: list[PlatformCase] = [
    (
        "teams",
        lambda s: {
            "webhook_url": s.url("/teams/workflow"),
            "studio_base_url": "https://studio.example.com/",
            "icon_url": "https://cdn.example.com/icon.png",
        },
        "/teams/workflow",
        {},
        ScriptedResponse(status=202),
        {
            "type": "message",
            "attachments": [
                {
                    "contentType": "application/vnd.microsoft.card.adaptive",
                    "contentUrl": None,
                    "content": {
                        "$schema": "http://adaptivecards.io/schemas/adaptive-card.json",
                        "type": "AdaptiveCard",
                        "version": "1.4",
                        "body": [
                            {
                                "type": "ColumnSet",
                                "columns": [
                                    {
                                        "type": "Column",
                                        "width": "auto",
                                        "items": [
                                            {
                                                "type": "Image",
                                                "url": "https://cdn.example.com/icon.png",
                                                "size": "Small",
                                                "altText": "Support Bot",
                                            }
                                        ],
                                    },
                                    {
                                        "type": "Column",
                                        "width": "stretch",
                                        "verticalContentAlignment": "Center",
                                        "items": [
                                            {
                                                "type": "TextBlock",
                                                "text": "Support Bot",
                                                "weight": "Bolder",
                                                "size": "Medium",
                                                "wrap": True,
                                            }
                                        ],
                                    },
                                ],
                            },
                            {"type": "TextBlock", "text": "Hello *world*", "wrap": True},
                            {"type": "FactSet", "facts": [{"title": k, "value": v} for k, v in FACTS]},
                        ],
                        "actions": [
                            {
                                "type": "Action.OpenUrl",
                                "title": "Open in Studio",
                                "url": "https://studio.example.com/external-agents/agent-1/invocations/inv-1",
                            }
                        ],
                    },
                }
            ],
        },
        {"Content-Type": "application/json"},
        {"delivered": True, "response": None},
    ),
    (
        "teams",
        lambda s: {"webhook_url": s.url("/teams/connector"), "card_format": "messagecard"},
        "/teams/connector",
        {},
        ScriptedResponse(body="1"),
        {
            "@type": "MessageCard",
            "@context": "https://schema.org/extensions",
            "summary": "Support Bot: Hello *world*",
            "themeColor": "0078D7",
            "title": "Support Bot",
            "sections": [
                {"activityTitle": "Support Bot", "facts": [{"name": k, "value": v} for k, v in FACTS]},
                {"text": "Hello *world*", "markdown": True},
            ],
        },
        {"Content-Type": "application/json"},
        {"delivered": True, "response": "1"},
    ),
    (
        "slack",
        lambda s: {"webhook_url": s.url("/slack/services/T0/B0/x"), "channel": "#ops"},
        "/slack/services/T0/B0/x",
        {},
        ScriptedResponse(body="ok"),
        {
            "text": "Support Bot: Hello *world*",
            "blocks": [
                {"type": "header", "text": {"type": "plain_text", "text": "Support Bot", "emoji": True}},
                {"type": "section", "text": {"type": "mrkdwn", "text": "Hello *world*"}},
                {
                    "type": "context",
                    "elements": [
                        {"type": "mrkdwn", "text": "*User:* Ada &lt;ada@example.com&gt;"},
                        {"type": "mrkdwn", "text": "*System:* crm"},
                        {"type": "mrkdwn", "text": "*Session:* sess-1"},
                        {"type": "mrkdwn", "text": "*Invocation:* inv-1"},
                        {"type": "mrkdwn", "text": "*Trace:* trace-1"},
                    ],
                },
            ],
            "channel": "#ops",
        },
        {"Content-Type": "application/json"},
        {"delivered": True, "response": "ok"},
    ),
    (
        "discord",
        lambda s: {
            "webhook_url": s.url("/discord/api/webhooks/1/tok"),
            "username": "Helper",
            "avatar_url": "https://cdn.example.com/a.png",
        },
        "/discord/api/webhooks/1/tok",
        {"wait": ["true"]},
        ScriptedResponse(body={"id": "m-1", "channel_id": "c-1", "content": ""}),
        {
            "embeds": [
                {
                    "title": "Support Bot",
                    "description": "Hello *world*",
                    "color": 0x5865F2,
                    "fields": [
                        {"name": "User", "value": "Ada <ada@example.com>", "inline": True},
                        {"name": "System", "value": "crm", "inline": True},
                        {"name": "Session", "value": "sess-1", "inline": True},
                    ],
                    "footer": {"text": "Invocation inv-1 · Trace trace-1"},
                }
            ],
            "allowed_mentions": {"parse": []},
            "username": "Helper",
            "avatar_url": "https://cdn.example.com/a.png",
        },
        {"Content-Type": "application/json"},
        {"delivered": True, "message_id": "m-1", "channel_id": "c-1"},
    ),
    (
        "telegram",
        lambda s: {"bot_token": BOT_TOKEN, "chat_id": -100123, "api_base_url": s.url("/telegram")},
        f"/telegram/bot{BOT_TOKEN}/sendMessage",
        {},
        ScriptedResponse(body={"ok": True, "result": {"message_id": 42, "chat": {"id": -100123}}}),
        {
            "chat_id": -100123,
            "text": (
                "*Support Bot*\n\nHello \\*world\\*\n\n*User:* Ada <ada@example\\.com\\>\n*System:* crm\n"
                "*Session:* sess\\-1\n*Invocation:* inv\\-1\n*Trace:* trace\\-1"
            ),
            "parse_mode": "MarkdownV2",
        },
        {"Content-Type": "application/json"},
        {"delivered": True, "message_id": 42, "chat_id": -100123},
    ),
    (
        "notion",
        lambda s: {"database_id": DATABASE_ID, "token": NOTION_TOKEN, "api_base_url": s.url("/notion")},
        "/notion/v1/pages",
        {},
        ScriptedResponse(body={"object": "page", "id": "page-1", "url": "https://www.notion.so/page-1"}),
        {
            "parent": {"database_id": DATABASE_ID},
            "properties": {"Name": {"title": [{"type": "text", "text": {"content": "Support Bot · inv-1"}}]}},
            "children": [
                _paragraph("Hello *world*"),
                _paragraph(" · ".join(f"{k}: {v}" for k, v in FACTS)),
            ],
        },
        {
            "Content-Type": "application/json",
            "Notion-Version": "2022-06-28",
            "Authorization": f"Bearer {NOTION_TOKEN}",
        },
        {"page_id": "page-1", "url": "https://www.notion.so/page-1"},
    ),
    (
        "custom_http",
        lambda s: {"url": s.url("/agent"), "headers": {"X-Tenant": "acme"}},
        "/agent",
        {},
        ScriptedResponse(body={"answer": 42, "cost_usd": 0.0123}),
        {
            "invocation_id": "inv-1",
            "trace_id": "trace-1",
            "agent_id": "agent-1",
            "input": "Hello *world*",
            "context": {"environment": "test"},
            "external_user": {"id": "u-1", "email": "ada@example.com", "name": "Ada"},
            "external_system": "crm",
            "session_id": "sess-1",
        },
        {
            "Content-Type": "application/json",
            "X-Tenant": "acme",
            "Idempotency-Key": "inv-1",
            "X-Kaizen-Invocation-ID": "inv-1",
            "X-Kaizen-Trace-ID": "trace-1",
        },
        {"answer": 42, "cost_usd": 0.0123},
    ),
]


@pytest.mark.parametrize(
    ("platform", "config", "path", "query", "answer", "expected_body", "expected_headers", "expected_output"),
    PLATFORM_CASES,
    ids=["teams-adaptive", "teams-messagecard", "slack", "discord", "telegram", "notion", "custom_http"],
)
async def test_each_platform_receives_its_documented_payload(
    platform_server: PlatformServer,
    client: PlatformClient,
    platform: str,
    config: Callable[[PlatformServer], dict[str, Any]],
    path: str,
    query: dict[str, list[str]],
    answer: ScriptedResponse,
    expected_body: Any,
    expected_headers: dict[str, str],
    expected_output: Any,
) -> None:
    platform_server.script(path, answer)
    request = make_request(platform, config(platform_server))

    result = await send(request, client, platform=platform)

    [received] = platform_server.requests()
    assert (received.method, received.path, received.query) == ("POST", path, query)
    assert received.json() == expected_body
    for name, value in expected_headers.items():
        assert received.headers[name] == value
    assert result.status_code == answer.status
    assert result.output == expected_output
    assert result.attempts == 1
    # The figure as the platform wrote it; delivery's strict parser reads it (tests/unit/test_reported_cost.py).
    expected_cost = "0.0123" if platform == "custom_http" else None
    assert result.reported_cost == expected_cost


async def test_custom_http_get_sends_the_envelope_in_the_query(
    platform_server: PlatformServer, client: PlatformClient
) -> None:
    platform_server.script("/lookup", ScriptedResponse(body="plain answer", headers={"X-Cost-USD": "0.25"}))
    request = make_request("custom_http", {"url": platform_server.url("/lookup?fixed=1"), "method": "get"})

    result = await send(replace(request, input={"q": "x"}), client)

    [received] = platform_server.requests()
    assert received.method == "GET"
    assert received.body == b""
    assert received.query == {
        "fixed": ["1"],
        "invocation_id": ["inv-1"],
        "trace_id": ["trace-1"],
        "agent_id": ["agent-1"],
        "input": ['{"q":"x"}'],
        "context": ['{"environment":"test"}'],
        "external_system": ["crm"],
        "session_id": ["sess-1"],
        "external_user_id": ["u-1"],
        "external_user_email": ["ada@example.com"],
        "external_user_name": ["Ada"],
    }
    assert result.output == "plain answer"
    assert result.reported_cost == "0.25"


def _basic(pair: str) -> str:
    return "Basic " + base64.b64encode(pair.encode()).decode()


AUTH_CASES: list[tuple[str, dict[str, Any], dict[str, str | None]]] = [
    ("none", {"auth_type": "none", "credentials": {}}, {"Authorization": None, "X-API-Key": None}),
    ("api_key", {"auth_type": "api_key", "credentials": {"api_key": "k-123"}}, {"X-API-Key": "k-123"}),
    (
        "api_key-key-and-header",
        {"auth_type": "api_key", "header_name": "X-Key", "credentials": {"key": "k-456"}},
        {"X-Key": "k-456", "X-API-Key": None},
    ),
    (
        "bearer_token",
        {"auth_type": "bearer_token", "credentials": {"token": "t-789"}},
        {"Authorization": "Bearer t-789"},
    ),
    (
        "basic",
        {"auth_type": "basic", "credentials": {"username": "ada", "password": "pä:ss"}},
        {"Authorization": "Basic " + base64.b64encode("ada:pä:ss".encode()).decode()},
    ),
    ("oauth2-token", {"auth_type": "oauth2", "credentials": {"token": "ready-1"}}, {"Authorization": "Bearer ready-1"}),
    (
        "custom",
        {"auth_type": "custom", "credentials": {"headers": {"X-Org": "acme", "X-Secret": "s-1"}}},
        {"X-Org": "acme", "X-Secret": "s-1"},
    ),
]


@pytest.mark.parametrize(("auth_config", "expected"), [c[1:] for c in AUTH_CASES], ids=[c[0] for c in AUTH_CASES])
async def test_auth_type_sets_its_header(
    platform_server: PlatformServer,
    client: PlatformClient,
    auth_config: dict[str, Any],
    expected: dict[str, str | None],
) -> None:
    request = make_request("custom_http", {"url": platform_server.url("/agent")}, auth_config=auth_config)

    await send(request, client)

    [received] = platform_server.requests("/agent")
    for name, value in expected.items():
        assert received.headers.get(name) == value


@pytest.mark.parametrize(
    ("algorithm", "header_name", "credentials"),
    [
        ("sha256", "X-Signature", {"secret": "hmac-secret"}),
        ("sha1", "X-Hub-Signature", {"secret": "hmac-secret", "algorithm": "sha1", "header_name": "X-Hub-Signature"}),
        ("sha512", "X-Signature", {"secret": "hmac-secret", "algorithm": "SHA512"}),
    ],
)
async def test_hmac_signs_the_exact_body(
    platform_server: PlatformServer,
    client: PlatformClient,
    algorithm: str,
    header_name: str,
    credentials: dict[str, str],
) -> None:
    auth_config = {"auth_type": "hmac", "credentials": credentials}
    request = make_request("custom_http", {"url": platform_server.url("/agent")}, auth_config=auth_config)

    await send(replace(request, input={"text": "grüße", "n": 1}), client)

    [received] = platform_server.requests("/agent")
    digest = hmac.new(b"hmac-secret", received.body, algorithm).hexdigest()
    assert received.headers[header_name] == f"{algorithm}={digest}"
    assert received.json()["input"] == {"text": "grüße", "n": 1}


def _oauth_request(server: PlatformServer, **credentials: str) -> DeliveryRequest:
    auth_config = {
        "auth_type": "oauth2",
        "credentials": {
            "client_id": "client-1",
            "client_secret": "s3cret",
            "token_url": server.url(TOKEN_PATH),
            "scope": "agents.invoke",
            **credentials,
        },
    }
    return make_request("custom_http", {"url": server.url("/agent")}, auth_config=auth_config)


async def test_oauth2_token_is_fetched_once_and_cached(platform_server: PlatformServer, client: PlatformClient) -> None:
    cache = OAuth2TokenCache()
    request = _oauth_request(platform_server)

    await send(request, client, token_cache=cache)
    await send(request, client, token_cache=cache)

    assert platform_server.token_calls == 1
    [token_request] = platform_server.requests(TOKEN_PATH)
    assert token_request.method == "POST"
    assert token_request.form() == {"grant_type": ["client_credentials"], "scope": ["agents.invoke"]}
    assert token_request.headers["Authorization"] == _basic("client-1:s3cret")
    assert [r.headers["Authorization"] for r in platform_server.requests("/agent")] == ["Bearer token-1"] * 2


async def test_oauth2_client_secret_post_sends_the_secret_in_the_form(
    platform_server: PlatformServer, client: PlatformClient
) -> None:
    await send(_oauth_request(platform_server, token_auth_method="client_secret_post"), client)

    [token_request] = platform_server.requests(TOKEN_PATH)
    assert "Authorization" not in token_request.headers
    assert token_request.form() == {
        "grant_type": ["client_credentials"],
        "scope": ["agents.invoke"],
        "client_id": ["client-1"],
        "client_secret": ["s3cret"],
    }


async def test_oauth2_concurrent_deliveries_share_one_token_request(
    platform_server: PlatformServer, client: PlatformClient
) -> None:
    platform_server.script(TOKEN_PATH, ScriptedResponse(body={"access_token": "shared", "expires_in": 60}, delay=0.1))
    cache = OAuth2TokenCache()
    request = _oauth_request(platform_server)

    await asyncio.gather(*(send(request, client, token_cache=cache) for _ in range(5)))

    assert len(platform_server.requests(TOKEN_PATH)) == 1
    assert {r.headers["Authorization"] for r in platform_server.requests("/agent")} == {"Bearer shared"}


async def test_oauth2_token_is_refetched_after_it_expires(
    platform_server: PlatformServer, client: PlatformClient
) -> None:
    now = [1000.0]
    cache = OAuth2TokenCache(margin_seconds=30, clock=lambda: now[0])
    request = _oauth_request(platform_server)

    await send(request, client, token_cache=cache)
    now[0] += 3600 - 31
    await send(request, client, token_cache=cache)
    assert platform_server.token_calls == 1
    now[0] += 2
    await send(request, client, token_cache=cache)

    assert platform_server.token_calls == 2
    assert platform_server.requests("/agent")[-1].headers["Authorization"] == "Bearer token-2"


async def test_oauth2_refreshes_once_on_401(platform_server: PlatformServer, client: PlatformClient) -> None:
    platform_server.script("/agent", ScriptedResponse(status=401, body="token revoked"))
    cache = OAuth2TokenCache()

    result = await send(_oauth_request(platform_server), client, token_cache=cache)

    assert result.status_code == 200
    assert result.attempts == 1
    assert platform_server.token_calls == 2
    sent = [r.headers["Authorization"] for r in platform_server.requests("/agent")]
    assert sent == ["Bearer token-1", "Bearer token-2"]


async def test_oauth2_second_401_is_not_refreshed_again(
    platform_server: PlatformServer, client: PlatformClient
) -> None:
    platform_server.script("/agent", *[ScriptedResponse(status=401)] * 2)

    with pytest.raises(PlatformError) as caught:
        await send(_oauth_request(platform_server), client)

    assert caught.value.platform_status == 401
    assert not caught.value.retryable
    assert platform_server.token_calls == 2
    assert len(platform_server.requests("/agent")) == 2


async def test_oauth2_token_endpoint_refusal_never_reaches_the_platform(
    platform_server: PlatformServer, client: PlatformClient
) -> None:
    platform_server.script(
        TOKEN_PATH,
        ScriptedResponse(status=401, body={"error": "invalid_client", "error_description": "secret s3cret wrong"}),
    )

    with pytest.raises(PlatformError) as caught:
        await send(_oauth_request(platform_server), client)

    assert "invalid_client" in caught.value.detail
    assert "s3cret" not in caught.value.detail
    assert not caught.value.reached_platform
    assert not caught.value.retryable
    assert platform_server.requests("/agent") == []


async def test_timeout_is_retried_then_raised_within_bounded_time(
    platform_server: PlatformServer, client: PlatformClient
) -> None:
    options = replace(OPTIONS, retry_attempts=1)
    platform_server.script("/slow", *[ScriptedResponse(delay=1.0)] * 2)
    request = make_request("custom_http", {"url": platform_server.url("/slow")})

    started = time.monotonic()
    with pytest.raises(PlatformTimeoutError) as caught:
        await send(request, client, options=options)
    elapsed = time.monotonic() - started

    assert len(platform_server.requests("/slow")) == 2
    assert elapsed < 1.0
    assert caught.value.retryable
    assert caught.value.reached_platform
    assert "after 2 attempts" in caught.value.detail


async def test_agent_timeout_shortens_the_global_one(platform_server: PlatformServer, client: PlatformClient) -> None:
    platform_server.script("/slow", ScriptedResponse(delay=0.5))
    request = make_request("custom_http", {"url": platform_server.url("/slow"), "timeout": 0.1})
    options = replace(OPTIONS, timeout_seconds=2.0, retry_attempts=0)

    started = time.monotonic()
    with pytest.raises(PlatformTimeoutError):
        await send(request, client, options=options)

    assert time.monotonic() - started < 0.4


async def test_429_retry_after_is_honoured(platform_server: PlatformServer, client: PlatformClient) -> None:
    platform_server.script("/agent", ScriptedResponse(status=429, headers={"Retry-After": "1"}))
    request = make_request("custom_http", {"url": platform_server.url("/agent")})

    started = time.monotonic()
    result = await send(request, client)

    assert time.monotonic() - started >= 0.95
    assert result.attempts == 2
    assert len(platform_server.requests("/agent")) == 2


async def test_retry_after_in_the_body_is_honoured(platform_server: PlatformServer, client: PlatformClient) -> None:
    config = {"bot_token": BOT_TOKEN, "chat_id": 5, "api_base_url": platform_server.url("/tg")}
    path = f"/tg/bot{BOT_TOKEN}/sendMessage"
    platform_server.script(
        path,
        ScriptedResponse(status=429, body={"ok": False, "error_code": 429, "parameters": {"retry_after": 0.3}}),
        ScriptedResponse(body={"ok": True, "result": {"message_id": 1, "chat": {"id": 5}}}),
    )

    started = time.monotonic()
    result = await send(make_request("telegram", config), client, platform="telegram")

    assert time.monotonic() - started >= 0.28
    assert result.attempts == 2


async def test_retry_after_beyond_the_cap_fails_at_once(
    platform_server: PlatformServer, client: PlatformClient
) -> None:
    platform_server.script("/agent", ScriptedResponse(status=429, headers={"Retry-After": "120"}))

    with pytest.raises(PlatformError) as caught:
        await send(make_request("custom_http", {"url": platform_server.url("/agent")}), client)

    assert caught.value.retry_after == 120
    assert caught.value.retryable
    assert caught.value.platform_status == 429
    assert len(platform_server.requests("/agent")) == 1


async def test_500_then_success_is_retried(platform_server: PlatformServer, client: PlatformClient) -> None:
    platform_server.script("/agent", ScriptedResponse(status=500, body="boom"), ScriptedResponse(status=503))

    result = await send(make_request("custom_http", {"url": platform_server.url("/agent")}), client)

    assert result.attempts == 3
    assert result.output == "ok"


async def test_5xx_every_time_gives_up_after_all_attempts(
    platform_server: PlatformServer, client: PlatformClient
) -> None:
    platform_server.script("/agent", *[ScriptedResponse(status=502, body="bad gateway")] * 3)

    with pytest.raises(PlatformError) as caught:
        await send(make_request("custom_http", {"url": platform_server.url("/agent")}), client)

    assert len(platform_server.requests("/agent")) == 1 + OPTIONS.retry_attempts
    assert caught.value.platform_status == 502
    assert caught.value.retryable
    assert caught.value.detail == "custom_http returned HTTP 502: bad gateway (after 3 attempts)"


@pytest.mark.parametrize("status", [400, 401, 403, 404, 408, 422])
async def test_other_4xx_is_not_retried(platform_server: PlatformServer, client: PlatformClient, status: int) -> None:
    platform_server.script("/agent", ScriptedResponse(status=status, body={"error": "nope"}))

    with pytest.raises(PlatformError) as caught:
        await send(make_request("custom_http", {"url": platform_server.url("/agent")}), client)

    assert len(platform_server.requests("/agent")) == 1
    assert caught.value.platform_status == status
    assert not caught.value.retryable
    assert caught.value.reached_platform


async def test_redirect_is_not_followed(platform_server: PlatformServer, client: PlatformClient) -> None:
    platform_server.script(
        "/agent", ScriptedResponse(status=302, headers={"Location": platform_server.url("/internal")})
    )

    with pytest.raises(PlatformError) as caught:
        await send(make_request("custom_http", {"url": platform_server.url("/agent")}), client)

    assert "redirects are not followed" in caught.value.detail
    assert not caught.value.retryable
    assert platform_server.requests("/internal") == []


async def test_teams_throttling_inside_a_200_is_retried(
    platform_server: PlatformServer, client: PlatformClient
) -> None:
    throttled = "Webhook message delivery failed with error: Microsoft Teams endpoint returned HTTP error 429"
    platform_server.script("/teams", ScriptedResponse(body=throttled), ScriptedResponse(body="1"))
    request = make_request("teams", {"webhook_url": platform_server.url("/teams"), "card_format": "messagecard"})

    result = await send(request, client, platform="teams")

    assert result.attempts == 2
    assert result.output == {"delivered": True, "response": "1"}


async def test_connection_refused_never_reached_the_platform(client: PlatformClient) -> None:
    request = make_request("custom_http", {"url": closed_port_url("/agent")})

    with pytest.raises(PlatformError) as caught:
        await send(request, client)

    assert not caught.value.reached_platform
    assert caught.value.retryable
    assert f"after {1 + OPTIONS.retry_attempts} attempts" in caught.value.detail


async def test_private_url_is_refused_at_delivery_without_sending(
    platform_server: PlatformServer, client: PlatformClient
) -> None:
    request = make_request("custom_http", {"url": platform_server.url("/agent")})
    options = replace(OPTIONS, allow_private_webhooks=False)

    with pytest.raises(PlatformError) as caught:
        await send(request, client, options=options)

    assert caught.value.detail.startswith("platform_config.url must use https")
    assert not caught.value.reached_platform
    assert not caught.value.retryable
    assert platform_server.requests() == []


async def test_oversized_response_is_refused(platform_server: PlatformServer, client: PlatformClient) -> None:
    platform_server.script("/agent", ScriptedResponse(body="x" * 5000))
    options = replace(OPTIONS, max_response_bytes=1000)

    with pytest.raises(PlatformError) as caught:
        await send(make_request("custom_http", {"url": platform_server.url("/agent")}), client, options=options)

    assert caught.value.detail.startswith("custom_http response is larger than 1000 bytes")
    assert caught.value.reached_platform


async def test_errors_and_logs_never_contain_credentials(
    platform_server: PlatformServer, client: PlatformClient, caplog: pytest.LogCaptureFixture
) -> None:
    # Every logger at DEBUG, the HTTP client's (aiohttp) included.
    caplog.set_level(logging.DEBUG)
    path = f"/tg/bot{BOT_TOKEN}/sendMessage"
    echo = f"bad request to /bot{BOT_TOKEN}/sendMessage with token={BOT_TOKEN} and Bearer {BOT_TOKEN}"
    platform_server.script(path, ScriptedResponse(status=400, body=echo))
    telegram = make_request(
        "telegram", {"bot_token": BOT_TOKEN, "chat_id": 5, "api_base_url": platform_server.url("/tg")}
    )
    platform_server.script("/agent", ScriptedResponse(status=500, body="got api_key=my-api-key-1 and my-api-key-1"))
    custom = make_request(
        "custom_http",
        {"url": platform_server.url("/agent")},
        auth_config={"auth_type": "api_key", "credentials": {"api_key": "my-api-key-1"}},
    )

    errors = []
    for platform, request in (("telegram", telegram), ("custom_http", custom)):
        with pytest.raises(PlatformError) as caught:
            await send(request, client, platform=platform, options=replace(OPTIONS, retry_attempts=0))
        errors.append(caught.value.detail)

    text = " ".join(errors) + caplog.text
    assert "ABC-DEF_ghijklmnopqrstuvwxyz0123" not in text
    assert "my-api-key-1" not in text
    assert "platform_delivery.attempt platform=telegram host=127.0.0.1 attempt=1 status=400" in caplog.text
    assert errors[0].startswith("telegram returned HTTP 400: bad request to /bot***/sendMessage")
