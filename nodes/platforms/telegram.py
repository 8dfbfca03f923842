"""Telegram: sends the invocation to a chat with the Bot API's `sendMessage`, formatted as MarkdownV2.

MarkdownV2 refuses the whole message when any of its special characters appears unescaped, so every piece of
user text goes through `escape_markdown_v2` (or `escape_markdown_v2_code` inside a code block, where only
backtick and backslash are special). A message is at most 4096 characters after entity parsing; the input is
cut so that the visible text fits.

The bot token is part of the URL path; it may sit in `platform_config.bot_token` or come from the agent's
credentials (auth_type bearer_token), and it is never logged or shown in errors. `api_base_url` points the
adapter at another Bot API server (a self-hosted one, or a local server in tests).
"""

from __future__ import annotations

import re
from typing import Any

import httpx

from external_agents.errors import PlatformError, ValidationError
from external_agents.nodes.platforms.base import (
    DeliveryRequest,
    OutgoingRequest,
    PlatformAdapter,
    PlatformAnswer,
    check_fields,
    facts,
    json_object,
    optional_http_url,
    optional_str,
    render_input,
    truncate,
    utf16_len,
)

DEFAULT_API_BASE_URL = "https://api.telegram.org"
MAX_MESSAGE = 4096
MAX_FACT = 200
# Per https://core.telegram.org/bots/api#markdownv2-style; backslash first so escapes are not re-escaped.
MARKDOWN_V2_SPECIAL = "\\_*[]()~`>#+-=|{}.!"
_SPECIAL = re.compile("([" + re.escape(MARKDOWN_V2_SPECIAL) + "])")
_CODE_SPECIAL = re.compile(r"([`\\])")
_BOT_TOKEN = re.compile(r"^\d+:[A-Za-z0-9_-]+$")
# A chat id is a (possibly negative) integer or a public channel's @username.
_CHAT_ID = re.compile(r"^(-?\d+|@[A-Za-z][A-Za-z0-9_]{3,31})$")


def escape_markdown_v2(text: str) -> str:
    return _SPECIAL.sub(r"\\\1", text)


def escape_markdown_v2_code(text: str) -> str:
    return _CODE_SPECIAL.sub(r"\\\1", text)


class TelegramAdapter(PlatformAdapter):
    platform = "telegram"
    url_field = "api_base_url"
    default_url = DEFAULT_API_BASE_URL
    secret_fields = ("bot_token",)

    def validate_config(self, platform_config: dict[str, Any]) -> dict[str, Any]:
        check_fields(platform_config, allowed=("bot_token", "chat_id", "api_base_url"), prefix="platform_config")
        chat_id = platform_config.get("chat_id")
        if chat_id is None or chat_id == "":
            raise ValidationError("platform_config.chat_id is required")
        if isinstance(chat_id, bool) or not isinstance(chat_id, int | str) or not _CHAT_ID.fullmatch(str(chat_id)):
            raise ValidationError("platform_config.chat_id must be an integer chat id or a @channelusername")
        config: dict[str, Any] = {"chat_id": chat_id}
        bot_token = optional_str(platform_config, "bot_token")
        if bot_token is not None:
            _check_token(bot_token, field="platform_config.bot_token")
            config["bot_token"] = bot_token
        api_base_url = optional_http_url(platform_config, "api_base_url")
        if api_base_url is not None:
            config["api_base_url"] = api_base_url.rstrip("/")
        return config

    def build_request(self, request: DeliveryRequest) -> OutgoingRequest:
        config = request.platform_config
        token = config.get("bot_token") or request.credentials.get("token")
        if not token:
            raise ValidationError(
                "telegram needs platform_config.bot_token or a bot token in auth_config.credentials.token"
            )
        _check_token(token, field="the telegram bot token")
        base = config.get("api_base_url") or DEFAULT_API_BASE_URL
        return OutgoingRequest.json(
            method="POST",
            url=f"{base}/bot{token}/sendMessage",
            payload={"chat_id": config["chat_id"], "text": format_message(request), "parse_mode": "MarkdownV2"},
        )

    def parse_response(self, response: httpx.Response) -> PlatformAnswer:
        body = json_object(response) or {}
        if body.get("ok") is not True:
            raise PlatformError(f"telegram refused the message: {body.get('description', 'no description')}")
        result = body.get("result") or {}
        return PlatformAnswer(
            {
                "delivered": True,
                "message_id": result.get("message_id"),
                "chat_id": (result.get("chat") or {}).get("id"),
            }
        )

    def retry_after(self, response: httpx.Response) -> float | None:
        # Telegram's 429 gives the wait in the body (parameters.retry_after), not always as a header.
        parameters = (json_object(response) or {}).get("parameters") or {}
        value = parameters.get("retry_after") if isinstance(parameters, dict) else None
        return float(value) if isinstance(value, int | float) and value >= 0 else None


def format_message(request: DeliveryRequest) -> str:
    """Bold agent name, the input (a code block when structured), then who and where, all escaped."""
    text, structured = render_input(request.input)
    fact_lines = [(name, truncate(value, MAX_FACT)) for name, value in facts(request)]
    title = truncate(request.agent_name, 255)
    # What Telegram counts is the text after entity parsing: the same strings, unescaped, without markers.
    visible = utf16_len(title) + 4 + sum(utf16_len(f"\n{n}: {v}") for n, v in fact_lines)
    body_text = truncate(text, MAX_MESSAGE - visible)
    if structured:
        body = f"```json\n{escape_markdown_v2_code(body_text)}\n```"
    else:
        body = escape_markdown_v2(body_text)
    footer = "\n".join(f"*{escape_markdown_v2(n)}:* {escape_markdown_v2(v)}" for n, v in fact_lines)
    return f"*{escape_markdown_v2(title)}*\n\n{body}\n\n{footer}"


def _check_token(token: str, *, field: str) -> None:
    if not _BOT_TOKEN.fullmatch(token):
        # The value is a secret: the message says what is wrong without repeating it.
        raise ValidationError(f"{field} must look like 123456:ABC-DEF... (digits, a colon, then letters)")
