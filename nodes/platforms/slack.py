"""Slack: posts the invocation to a channel through an incoming webhook, as Block Kit.

`text` is the notification fallback Slack shows where blocks cannot render. User text is escaped for mrkdwn
(`&`, `<`, `>`), otherwise input such as `<!channel>` would notify everyone. Block limits (header 150, section
3000 characters, 10 context elements) are respected by truncation.
"""

from __future__ import annotations

import re
from typing import Any

import httpx

from external_agents.nodes.platforms.base import (
    ELLIPSIS,
    DeliveryRequest,
    OutgoingRequest,
    PlatformAdapter,
    PlatformAnswer,
    check_fields,
    code_block,
    facts,
    optional_str,
    render_input,
    require_http_url,
    truncate,
    webhook_output,
)

MAX_HEADER = 150
MAX_SECTION = 3000
MAX_FALLBACK = 300
MAX_CONTEXT_ELEMENTS = 10
# An entity cut in half by truncation would show as literal text.
_PARTIAL_ENTITY = re.compile(r"&[a-z]*$")


class SlackAdapter(PlatformAdapter):
    platform = "slack"
    url_field = "webhook_url"
    # The webhook URL is the credential: whoever holds it can post as the agent.
    secret_fields = ("webhook_url",)

    def validate_config(self, platform_config: dict[str, Any]) -> dict[str, Any]:
        check_fields(platform_config, allowed=("webhook_url", "channel"), prefix="platform_config")
        config: dict[str, Any] = {"webhook_url": require_http_url(platform_config, "webhook_url")}
        channel = optional_str(platform_config, "channel", max_length=80)
        if channel is not None:
            config["channel"] = channel
        return config

    def build_request(self, request: DeliveryRequest) -> OutgoingRequest:
        text, structured = render_input(request.input)
        body = escape_mrkdwn(text)
        body = code_block(body, limit=MAX_SECTION) if structured else _cut(body, MAX_SECTION)
        payload: dict[str, Any] = {
            "text": _cut(escape_mrkdwn(f"{request.agent_name}: {text}"), MAX_FALLBACK),
            "blocks": [
                {
                    "type": "header",
                    "text": {"type": "plain_text", "text": truncate(request.agent_name, MAX_HEADER), "emoji": True},
                },
                {"type": "section", "text": {"type": "mrkdwn", "text": body}},
                {
                    "type": "context",
                    "elements": [
                        {"type": "mrkdwn", "text": _cut(f"*{name}:* {escape_mrkdwn(value)}", MAX_SECTION)}
                        for name, value in facts(request)[:MAX_CONTEXT_ELEMENTS]
                    ],
                },
            ],
        }
        channel = request.platform_config.get("channel")
        if channel:
            payload["channel"] = channel
        return OutgoingRequest.json(method="POST", url=request.platform_config["webhook_url"], payload=payload)

    def parse_response(self, response: httpx.Response) -> PlatformAnswer:
        return PlatformAnswer(webhook_output(response))


def escape_mrkdwn(text: str) -> str:
    """Slack's three control characters as entities; the only escaping mrkdwn has."""
    return text.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")


def _cut(escaped: str, limit: int) -> str:
    """Escaped mrkdwn cut to `limit` without leaving half an entity at the end."""
    cut = truncate(escaped, limit)
    if cut == escaped:
        return cut
    return _PARTIAL_ENTITY.sub("", cut.removesuffix(ELLIPSIS)) + ELLIPSIS
