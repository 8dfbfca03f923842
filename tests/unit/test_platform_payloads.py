"""Adapters without a network: config validation messages, formatting, escaping, limits and response parsing.

The exact payload each platform receives is checked end to end in tests/integration/test_platform_delivery.py;
this file covers the edges that are easier to reach without a server.
"""

from __future__ import annotations

import json
from dataclasses import replace
from typing import Any

import httpx
import pytest

from external_agents.errors import PlatformError, ValidationError
from external_agents.nodes.platforms import ADAPTERS, get_adapter, validate_platform_config
from external_agents.nodes.platforms.base import DeliveryOptions, DeliveryRequest, PlatformAnswer, truncate, utf16_len
from external_agents.nodes.platforms.notion import split_text
from external_agents.nodes.platforms.slack import escape_mrkdwn
from external_agents.nodes.platforms.teams import uses_message_card
from external_agents.nodes.platforms.telegram import MARKDOWN_V2_SPECIAL, escape_markdown_v2, escape_markdown_v2_code

HOOK = "https://hooks.example.com/x"
BOT_TOKEN = "123456:ABC-DEF_ghijklmnopqrstuvwxyz"
DATABASE_ID = "01234567-89ab-cdef-0123-456789abcdef"
OPTIONS = DeliveryOptions(
    timeout_seconds=30, retry_attempts=3, allow_private_webhooks=False, allowed_webhook_domains=()
)


def make_request(platform: str, platform_config: dict[str, Any], **overrides: Any) -> DeliveryRequest:
    values: dict[str, Any] = {
        "invocation_id": "inv-1",
        "trace_id": "trace-1",
        "agent_id": "agent-1",
        "agent_name": "Support Bot",
        "platform_config": get_adapter(platform).validate_config(platform_config),
        "auth_type": "none",
        "auth_config": {},
        "credentials": {},
        "input": "hi",
        "context": {},
        "external_user_id": "u-1",
        "external_user_email": None,
        "external_user_name": None,
        "external_system": "crm",
        "external_session_id": "s-1",
    }
    return DeliveryRequest(**(values | overrides))


def payload(platform: str, config: dict[str, Any], **overrides: Any) -> Any:
    return json.loads(get_adapter(platform).build_request(make_request(platform, config, **overrides)).content)


def response(status: int = 200, *, body: Any = b"", headers: dict[str, str] | None = None) -> httpx.Response:
    if isinstance(body, bytes | str):
        return httpx.Response(status, content=body, headers=headers)
    return httpx.Response(status, json=body, headers=headers)


def test_registry_lists_every_platform() -> None:
    assert list(ADAPTERS) == ["teams", "slack", "discord", "telegram", "notion", "custom_http"]
    assert all(get_adapter(name).platform == name for name in ADAPTERS)


def test_unknown_platform_is_named() -> None:
    with pytest.raises(ValidationError) as caught:
        get_adapter("myspace")
    assert caught.value.detail == (
        "Unknown platform 'myspace'; expected one of: teams, slack, discord, telegram, notion, custom_http"
    )


@pytest.mark.parametrize(
    ("platform", "config", "expected"),
    [
        ("teams", {"webhook_url": f" {HOOK} "}, {"webhook_url": HOOK}),
        (
            "teams",
            {"webhook_url": HOOK, "card_format": "MessageCard", "icon_url": "https://cdn.example.com/i.png"},
            {"webhook_url": HOOK, "card_format": "messagecard", "icon_url": "https://cdn.example.com/i.png"},
        ),
        ("slack", {"webhook_url": HOOK, "channel": "#ops"}, {"webhook_url": HOOK, "channel": "#ops"}),
        ("discord", {"webhook_url": HOOK, "username": "Helper"}, {"webhook_url": HOOK, "username": "Helper"}),
        ("telegram", {"chat_id": "@my_channel"}, {"chat_id": "@my_channel"}),
        (
            "telegram",
            {"chat_id": -100123, "bot_token": BOT_TOKEN, "api_base_url": "https://tg.example.com/"},
            {"chat_id": -100123, "bot_token": BOT_TOKEN, "api_base_url": "https://tg.example.com"},
        ),
        ("notion", {"database_id": DATABASE_ID}, {"database_id": DATABASE_ID}),
        (
            "notion",
            {"database_id": DATABASE_ID.replace("-", ""), "token": "secret_x", "title_property": "Title"},
            {"database_id": DATABASE_ID.replace("-", ""), "token": "secret_x", "title_property": "Title"},
        ),
        ("custom_http", {"url": HOOK}, {"url": HOOK, "method": "POST"}),
        (
            "custom_http",
            {"url": HOOK, "method": "patch", "headers": {"X-A": "1"}, "timeout": 2.5},
            {"url": HOOK, "method": "PATCH", "headers": {"X-A": "1"}, "timeout": 2.5},
        ),
    ],
)
def test_valid_configs_are_normalised(platform: str, config: dict[str, Any], expected: dict[str, Any]) -> None:
    assert get_adapter(platform).validate_config(config) == expected


@pytest.mark.parametrize(
    ("platform", "config", "message"),
    [
        ("teams", {}, "platform_config.webhook_url is required"),
        ("teams", {"webhook_url": ""}, "platform_config.webhook_url must be a non-empty string"),
        ("teams", {"webhook_url": 42}, "platform_config.webhook_url must be a non-empty string"),
        (
            "teams",
            {"webhook_url": "hooks.example.com/x"},
            "platform_config.webhook_url must be an absolute http(s) URL",
        ),
        (
            "teams",
            {"webhook_url": HOOK, "studio_base_url": "javascript:alert(1)"},
            "platform_config.studio_base_url must be an absolute http(s) URL",
        ),
        (
            "teams",
            {"webhook_url": HOOK, "icon_url": "ftp://x/i.png"},
            "platform_config.icon_url must be an absolute http(s) URL",
        ),
        (
            "teams",
            {"webhook_url": HOOK, "card_format": "hero"},
            "platform_config.card_format must be one of: adaptive, messagecard",
        ),
        (
            "teams",
            {"webhook_url": HOOK, "colour": "red"},
            "platform_config.colour is not a known field; expected one of: webhook_url, studio_base_url, icon_url, "
            "card_format",
        ),
        ("slack", {"channel": "#ops"}, "platform_config.webhook_url is required"),
        ("slack", {"webhook_url": HOOK, "channel": "x" * 81}, "platform_config.channel must be at most 80 characters"),
        (
            "slack",
            {"webhook_url": HOOK, "chanel": "#ops"},
            "platform_config.chanel is not a known field; expected one of: webhook_url, channel",
        ),
        ("discord", {}, "platform_config.webhook_url is required"),
        (
            "discord",
            {"webhook_url": HOOK, "username": "Discord Bot"},
            "platform_config.username must not contain 'discord' or 'clyde'",
        ),
        (
            "discord",
            {"webhook_url": HOOK, "username": "x" * 81},
            "platform_config.username must be at most 80 characters",
        ),
        (
            "discord",
            {"webhook_url": HOOK, "avatar_url": "avatar.png"},
            "platform_config.avatar_url must be an absolute http(s) URL",
        ),
        ("telegram", {"bot_token": BOT_TOKEN}, "platform_config.chat_id is required"),
        (
            "telegram",
            {"chat_id": "general"},
            "platform_config.chat_id must be an integer chat id or a @channelusername",
        ),
        ("telegram", {"chat_id": True}, "platform_config.chat_id must be an integer chat id or a @channelusername"),
        (
            "telegram",
            {"chat_id": 1, "bot_token": "not-a-token"},
            "platform_config.bot_token must look like 123456:ABC-DEF... (digits, a colon, then letters)",
        ),
        (
            "telegram",
            {"chat_id": 1, "api_base_url": "tg"},
            "platform_config.api_base_url must be an absolute http(s) URL",
        ),
        ("notion", {}, "platform_config.database_id is required"),
        (
            "notion",
            {"database_id": "https://notion.so/abc"},
            "platform_config.database_id must be a Notion database id (32 hex digits)",
        ),
        (
            "notion",
            {"database_id": DATABASE_ID, "token": "a\nb"},
            "platform_config.token must be printable ASCII (it is sent in an HTTP header)",
        ),
        ("custom_http", {}, "platform_config.url is required"),
        (
            "custom_http",
            {"url": HOOK, "method": "TRACE"},
            "platform_config.method must be one of: POST, GET, PUT, PATCH, DELETE",
        ),
        (
            "custom_http",
            {"url": HOOK, "headers": "X-A: 1"},
            "platform_config.headers must be an object of header names to string values",
        ),
        (
            "custom_http",
            {"url": HOOK, "headers": {"Host": "x"}},
            "platform_config.headers cannot be Host; the HTTP client sets it",
        ),
        ("custom_http", {"url": HOOK, "timeout": 0}, "platform_config.timeout must be a positive number of seconds"),
        ("custom_http", {"url": HOOK, "timeout": "5"}, "platform_config.timeout must be a positive number of seconds"),
        ("custom_http", {"url": HOOK, "timeout": True}, "platform_config.timeout must be a positive number of seconds"),
    ],
)
def test_invalid_configs_name_the_field(platform: str, config: dict[str, Any], message: str) -> None:
    with pytest.raises(ValidationError) as caught:
        get_adapter(platform).validate_config(config)
    assert caught.value.detail == message


@pytest.mark.parametrize(
    ("platform", "config", "options", "message"),
    [
        (
            "slack",
            {"webhook_url": "http://hooks.example.com/x"},
            OPTIONS,
            "platform_config.webhook_url must use https (http is allowed only when "
            "EXTERNAL_AGENT_ALLOW_PRIVATE_WEBHOOKS=true)",
        ),
        (
            "custom_http",
            {"url": "https://10.1.2.3/agent"},
            OPTIONS,
            "platform_config.url: host 10.1.2.3 is a private address; "
            "refused unless EXTERNAL_AGENT_ALLOW_PRIVATE_WEBHOOKS=true",
        ),
        (
            "telegram",
            {"chat_id": 1},
            replace(OPTIONS, allowed_webhook_domains=("hooks.slack.com",)),
            "platform_config.api_base_url: host api.telegram.org is not in EXTERNAL_AGENT_ALLOWED_WEBHOOK_DOMAINS",
        ),
        (
            "custom_http",
            {"url": HOOK, "timeout": 31},
            OPTIONS,
            "platform_config.timeout must be at most 30 seconds (EXTERNAL_AGENT_WEBHOOK_TIMEOUT_SECONDS)",
        ),
        ("slack", ["https://x"], OPTIONS, "platform_config must be an object"),
    ],
)
def test_validate_platform_config_applies_the_url_policy(
    platform: str, config: Any, options: DeliveryOptions, message: str
) -> None:
    with pytest.raises(ValidationError) as caught:
        validate_platform_config(platform, config, options=options)
    assert caught.value.detail == message


def test_validate_platform_config_accepts_a_public_webhook() -> None:
    assert validate_platform_config("slack", {"webhook_url": HOOK}, options=OPTIONS) == {"webhook_url": HOOK}


@pytest.mark.parametrize(
    ("url", "card_format", "expected"),
    [
        ("https://contoso.webhook.office.com/webhookb2/abc@def/IncomingWebhook/x/y", None, True),
        ("https://outlook.office.com/webhook/abc/IncomingWebhook/x/y", None, True),
        ("https://prod-01.westus.logic.azure.com:443/workflows/abc/triggers/manual/paths/invoke?sig=x", None, False),
        ("https://contoso.webhook.office.com/other", None, False),
        ("https://evil.com/webhook/x", None, False),
        ("https://prod-01.westus.logic.azure.com/workflows/x", "messagecard", True),
        ("https://contoso.webhook.office.com/webhookb2/x", "adaptive", False),
    ],
)
def test_teams_card_format_follows_the_webhook_kind(url: str, card_format: str | None, expected: bool) -> None:
    assert uses_message_card(url, card_format) is expected


def test_teams_structured_input_is_monospace_and_not_markdown() -> None:
    data = {"order": 7, "note": "*not bold*"}
    adaptive = payload("teams", {"webhook_url": HOOK}, input=data)
    text_block = adaptive["attachments"][0]["content"]["body"][1]
    assert text_block == {
        "type": "TextBlock",
        "text": json.dumps(data, indent=2),
        "wrap": True,
        "fontType": "Monospace",
    }
    card = payload("teams", {"webhook_url": HOOK, "card_format": "messagecard"}, input=data)
    assert card["sections"][1] == {"text": json.dumps(data, indent=2), "markdown": False}
    assert "actions" not in adaptive["attachments"][0]["content"]


def test_teams_long_input_is_truncated() -> None:
    body = payload("teams", {"webhook_url": HOOK}, input="x" * 20_000)
    text = body["attachments"][0]["content"]["body"][1]["text"]
    assert len(text) == 7000
    assert text.endswith("…")


def test_teams_throttling_in_a_200_is_retryable() -> None:
    throttled = response(body="Microsoft Teams endpoint returned HTTP error 429 with ContextId x")
    with pytest.raises(PlatformError) as caught:
        get_adapter("teams").parse_response(throttled)
    assert caught.value.retryable
    assert caught.value.platform_status == 429


def test_slack_escapes_control_characters_so_input_cannot_mention_everyone() -> None:
    body = payload("slack", {"webhook_url": HOOK}, input="<!channel> & <@U123> > 1")
    assert body["blocks"][1]["text"]["text"] == "&lt;!channel&gt; &amp; &lt;@U123&gt; &gt; 1"
    assert body["text"] == "Support Bot: &lt;!channel&gt; &amp; &lt;@U123&gt; &gt; 1"
    assert escape_mrkdwn("a&b") == "a&amp;b"


def test_slack_respects_block_limits_without_cutting_an_entity() -> None:
    body = payload("slack", {"webhook_url": HOOK}, agent_name="N" * 200, input="a" * 2996 + "<<<<")
    assert len(body["blocks"][0]["text"]["text"]) == 150
    section = body["blocks"][1]["text"]["text"]
    assert section == "a" * 2996 + "…"
    assert len(body["text"]) <= 300


def test_slack_structured_input_is_a_code_block() -> None:
    body = payload("slack", {"webhook_url": HOOK}, input={"a": "<b>"})
    assert body["blocks"][1]["text"]["text"] == '```\n{\n  "a": "&lt;b&gt;"\n}\n```'


def test_discord_respects_embed_limits() -> None:
    body = payload(
        "discord",
        {"webhook_url": HOOK},
        agent_name="N" * 300,
        input="x" * 5000,
        external_user_name="U" * 2000,
    )
    embed = body["embeds"][0]
    assert len(embed["title"]) == 256
    assert len(embed["description"]) == 4096
    assert embed["description"].endswith("…")
    assert all(len(field["value"]) <= 1024 for field in embed["fields"])
    total = len(embed["title"]) + len(embed["description"]) + len(embed["footer"]["text"])
    total += sum(len(field["name"]) + len(field["value"]) for field in embed["fields"])
    assert total <= 6000
    assert body["allowed_mentions"] == {"parse": []}


def test_discord_structured_input_keeps_its_code_fence_when_truncated() -> None:
    body = payload("discord", {"webhook_url": HOOK}, input={"text": "y" * 6000})
    description = body["embeds"][0]["description"]
    assert description.startswith("```json\n{")
    assert description.endswith("…\n```")
    assert utf16_len(description) <= 4096


def test_discord_url_asks_for_the_created_message() -> None:
    request = make_request("discord", {"webhook_url": HOOK + "?thread_id=9"})
    url = httpx.URL(get_adapter("discord").build_request(request).url)
    assert dict(url.params) == {"thread_id": "9", "wait": "true"}


def test_markdown_v2_escapes_every_special_character() -> None:
    assert MARKDOWN_V2_SPECIAL == "\\_*[]()~`>#+-=|{}.!"
    assert escape_markdown_v2("_*[]()~`>#+-=|{}.!\\") == "\\_\\*\\[\\]\\(\\)\\~\\`\\>\\#\\+\\-\\=\\|\\{\\}\\.\\!\\\\"
    for char in MARKDOWN_V2_SPECIAL:
        assert escape_markdown_v2(f"a{char}b") == f"a\\{char}b"
    assert escape_markdown_v2('plain text, 100% <ok & "quoted" émoji 🎉') == 'plain text, 100% <ok & "quoted" émoji 🎉'


def test_markdown_v2_code_escapes_only_backtick_and_backslash() -> None:
    assert escape_markdown_v2_code('{"a": "`x` \\ *y*_."}') == '{"a": "\\`x\\` \\\\ *y*_."}'


def test_telegram_message_escapes_every_part() -> None:
    body = payload(
        "telegram",
        {"chat_id": 1, "bot_token": BOT_TOKEN},
        agent_name="Bot (v2.0)",
        input="1+1=2!",
        external_session_id="s_1",
    )
    assert body["text"] == (
        "*Bot \\(v2\\.0\\)*\n\n1\\+1\\=2\\!\n\n*User:* u\\-1\n*System:* crm\n*Session:* s\\_1\n"
        "*Invocation:* inv\\-1\n*Trace:* trace\\-1"
    )


def test_telegram_structured_input_is_a_json_pre_block() -> None:
    body = payload("telegram", {"chat_id": 1, "bot_token": BOT_TOKEN}, input={"a": "`b`"})
    assert '```json\n{\n  "a": "\\`b\\`"\n}\n```' in body["text"]


def test_telegram_long_input_fits_the_message_limit() -> None:
    body = payload("telegram", {"chat_id": 1, "bot_token": BOT_TOKEN}, input="🎉" * 5000)
    visible = body["text"].replace("\\", "").replace("*", "")
    assert utf16_len(visible) <= 4096
    assert "…" in body["text"]


def test_telegram_token_may_come_from_credentials() -> None:
    request = make_request("telegram", {"chat_id": 1}, credentials={"token": BOT_TOKEN})
    assert get_adapter("telegram").build_request(request).url == f"https://api.telegram.org/bot{BOT_TOKEN}/sendMessage"


@pytest.mark.parametrize(
    ("platform", "config", "message"),
    [
        (
            "telegram",
            {"chat_id": 1},
            "telegram needs platform_config.bot_token or a bot token in auth_config.credentials.token",
        ),
        (
            "notion",
            {"database_id": DATABASE_ID},
            "notion needs platform_config.token or an integration token in auth_config.credentials.token",
        ),
    ],
)
def test_missing_platform_token_is_named(platform: str, config: dict[str, Any], message: str) -> None:
    with pytest.raises(ValidationError) as caught:
        get_adapter(platform).build_request(make_request(platform, config))
    assert caught.value.detail == message


def test_telegram_refusal_inside_a_200_is_an_error() -> None:
    with pytest.raises(PlatformError, match="telegram refused the message: chat not found"):
        get_adapter("telegram").parse_response(response(body={"ok": False, "description": "chat not found"}))


def test_notion_splits_long_input_into_paragraphs() -> None:
    request = make_request("notion", {"database_id": DATABASE_ID}, input="x" * 4500, credentials={"token": "t"})
    outgoing = get_adapter("notion").build_request(request)
    children = json.loads(outgoing.content)["children"]
    contents = [child["paragraph"]["rich_text"][0]["text"]["content"] for child in children]
    assert [len(c) for c in contents[:3]] == [2000, 2000, 500]
    assert contents[3] == "User: u-1 · System: crm · Session: s-1 · Invocation: inv-1 · Trace: trace-1"
    assert outgoing.headers["Authorization"] == "Bearer t"


def test_notion_stays_under_100_blocks() -> None:
    assert len(split_text("x" * 500_000, 2000, max_chunks=99)) == 99
    chunks = split_text("🎉" * 1500, 2000, max_chunks=99)
    assert [utf16_len(c) for c in chunks] == [2000, 1000]
    assert split_text("x" * 5000, 2000, max_chunks=2) == ["x" * 2000, "x" * 1999 + "…"]


def test_notion_output_is_the_page() -> None:
    page = response(body={"object": "page", "id": "p1", "url": "https://www.notion.so/p1"})
    assert get_adapter("notion").parse_response(page) == PlatformAnswer(
        {"page_id": "p1", "url": "https://www.notion.so/p1"}
    )


@pytest.mark.parametrize(
    ("answer", "expected"),
    [
        (response(body={"answer": 1, "cost_usd": 0.1}), ({"answer": 1, "cost_usd": 0.1}, "0.1")),
        (
            response(body=b'{"cost_usd": 0.30000000000000004}', headers={"Content-Type": "application/json"}),
            ({"cost_usd": 0.30000000000000004}, "0.30000000000000004"),
        ),
        (response(body={"cost_usd": 2}), ({"cost_usd": 2}, "2")),
        (response(body={"cost_usd": "0.5"}, headers={"X-Cost-USD": "0.2"}), ({"cost_usd": "0.5"}, "0.2")),
        (response(body={"cost_usd": -1}), ({"cost_usd": -1}, "-1")),
        (response(body=[1, 2], headers={"X-Cost-USD": "0.05"}), ([1, 2], "0.05")),
        (response(body="plain", headers={"X-Cost-USD": "abc"}), ("plain", "abc")),
        (response(body=b'{"a": 1}', headers={"Content-Type": "application/problem+json"}), ({"a": 1}, None)),
        (response(body=b'{"a": 1}', headers={"Content-Type": "text/plain"}), ('{"a": 1}', None)),
        (response(body=b"{not json", headers={"Content-Type": "application/json"}), ("{not json", None)),
        (response(204), (None, None)),
    ],
)
def test_custom_http_output_and_reported_cost_as_written(
    answer: httpx.Response, expected: tuple[Any, str | None]
) -> None:
    # The figure is passed on as the platform wrote it; delivery parses it strictly (test_reported_cost.py).
    output, reported_cost = expected
    assert get_adapter("custom_http").parse_response(answer) == PlatformAnswer(output, reported_cost=reported_cost)


def test_input_that_is_not_json_is_refused() -> None:
    request = make_request("custom_http", {"url": HOOK}, input=float("nan"))
    with pytest.raises(ValidationError, match="input is not JSON-serialisable"):
        get_adapter("custom_http").build_request(request)


@pytest.mark.parametrize(
    ("text", "limit", "expected"),
    [("abc", 3, "abc"), ("abcd", 3, "ab…"), ("🎉🎉🎉", 4, "🎉…"), ("🎉🎉", 4, "🎉🎉"), ("", 5, "")],
)
def test_truncate_counts_utf16_units(text: str, limit: int, expected: str) -> None:
    assert truncate(text, limit) == expected


def test_empty_input_still_renders() -> None:
    body = payload("slack", {"webhook_url": HOOK}, input="  ")
    assert body["blocks"][1]["text"]["text"] == "(empty input)"
