"""Microsoft Teams: posts the invocation to a channel through an incoming webhook.

Teams has two webhook kinds with different payloads. Workflows (Power Automate) webhooks, the current ones,
take a message with an Adaptive Card attachment. Legacy Office 365 connector URLs (`*.webhook.office.com`,
`outlook.office.com/webhook/...`) take a MessageCard; `card_format` overrides the guess from the URL.
Teams refuses messages over about 28 KB, so the input is truncated well below that.
"""

from __future__ import annotations

from typing import Any
from urllib.parse import quote

import httpx

from external_agents.errors import PlatformError, ValidationError
from external_agents.nodes.platforms.base import (
    DeliveryRequest,
    OutgoingRequest,
    PlatformAdapter,
    PlatformAnswer,
    check_fields,
    facts,
    optional_http_url,
    optional_str,
    render_input,
    require_http_url,
    truncate,
    webhook_output,
)

CARD_FORMATS = ("adaptive", "messagecard")
ADAPTIVE_CARD_CONTENT_TYPE = "application/vnd.microsoft.card.adaptive"
ADAPTIVE_CARD_SCHEMA = "http://adaptivecards.io/schemas/adaptive-card.json"
THEME_COLOR = "0078D7"
# Characters, not bytes; at up to 3 UTF-8 bytes each this stays under the 28 KB message limit.
MAX_TEXT = 7000
MAX_TITLE = 255


class TeamsAdapter(PlatformAdapter):
    platform = "teams"
    url_field = "webhook_url"
    # The webhook URL is the credential: whoever holds it can post as the agent.
    secret_fields = ("webhook_url",)

    def validate_config(self, platform_config: dict[str, Any]) -> dict[str, Any]:
        check_fields(
            platform_config,
            allowed=("webhook_url", "studio_base_url", "icon_url", "card_format"),
            prefix="platform_config",
        )
        config: dict[str, Any] = {"webhook_url": require_http_url(platform_config, "webhook_url")}
        for name in ("studio_base_url", "icon_url"):
            url = optional_http_url(platform_config, name)
            if url is not None:
                config[name] = url
        card_format = optional_str(platform_config, "card_format")
        if card_format is not None:
            if card_format.lower() not in CARD_FORMATS:
                raise ValidationError(f"platform_config.card_format must be one of: {', '.join(CARD_FORMATS)}")
            config["card_format"] = card_format.lower()
        return config

    def build_request(self, request: DeliveryRequest) -> OutgoingRequest:
        config = request.platform_config
        url = config["webhook_url"]
        if uses_message_card(url, config.get("card_format")):
            payload = _message_card(request)
        else:
            payload = {
                "type": "message",
                "attachments": [
                    {"contentType": ADAPTIVE_CARD_CONTENT_TYPE, "contentUrl": None, "content": _adaptive(request)}
                ],
            }
        return OutgoingRequest.json(method="POST", url=url, payload=payload)

    def parse_response(self, response: httpx.Response) -> PlatformAnswer:
        # Legacy connectors answer throttling with HTTP 200 and the real status in the text.
        if "HTTP error 429" in response.text:
            raise PlatformError(
                "teams throttled the message (HTTP error 429 inside a 200 response)",
                retryable=True,
                platform_status=429,
            )
        return PlatformAnswer(webhook_output(response))


def uses_message_card(webhook_url: str, card_format: str | None) -> bool:
    """Whether the webhook is a legacy Office 365 connector, which only understands MessageCard."""
    if card_format is not None:
        return card_format == "messagecard"
    parsed = httpx.URL(webhook_url)
    host = parsed.host.lower()
    connector_host = host.endswith(".webhook.office.com") or host == "outlook.office.com"
    return connector_host and parsed.path.startswith("/webhook")


def _studio_url(request: DeliveryRequest) -> str | None:
    base = request.platform_config.get("studio_base_url")
    if not base:
        return None
    agent = quote(request.agent_id, safe="")
    invocation = quote(request.invocation_id, safe="")
    return f"{base.rstrip('/')}/external-agents/{agent}/invocations/{invocation}"


def _adaptive(request: DeliveryRequest) -> dict[str, Any]:
    text, structured = render_input(request.input)
    title: dict[str, Any] = {
        "type": "TextBlock",
        "text": truncate(request.agent_name, MAX_TITLE),
        "weight": "Bolder",
        "size": "Medium",
        "wrap": True,
    }
    icon_url = request.platform_config.get("icon_url")
    header: dict[str, Any] = title
    if icon_url:
        header = {
            "type": "ColumnSet",
            "columns": [
                {
                    "type": "Column",
                    "width": "auto",
                    "items": [{"type": "Image", "url": icon_url, "size": "Small", "altText": request.agent_name}],
                },
                {"type": "Column", "width": "stretch", "verticalContentAlignment": "Center", "items": [title]},
            ],
        }
    body_text: dict[str, Any] = {"type": "TextBlock", "text": truncate(text, MAX_TEXT), "wrap": True}
    if structured:
        body_text["fontType"] = "Monospace"
    card: dict[str, Any] = {
        "$schema": ADAPTIVE_CARD_SCHEMA,
        "type": "AdaptiveCard",
        "version": "1.4",
        "body": [
            header,
            body_text,
            {"type": "FactSet", "facts": [{"title": name, "value": value} for name, value in facts(request)]},
        ],
    }
    studio_url = _studio_url(request)
    if studio_url:
        card["actions"] = [{"type": "Action.OpenUrl", "title": "Open in Studio", "url": studio_url}]
    return card


def _message_card(request: DeliveryRequest) -> dict[str, Any]:
    text, structured = render_input(request.input)
    title = truncate(request.agent_name, MAX_TITLE)
    activity: dict[str, Any] = {
        "activityTitle": title,
        "facts": [{"name": name, "value": value} for name, value in facts(request)],
    }
    icon_url = request.platform_config.get("icon_url")
    if icon_url:
        activity["activityImage"] = icon_url
    card: dict[str, Any] = {
        "@type": "MessageCard",
        "@context": "https://schema.org/extensions",
        "summary": truncate(f"{request.agent_name}: {text}", 200),
        "themeColor": THEME_COLOR,
        "title": title,
        # Structured input is JSON; rendering it as markdown would eat its underscores and asterisks.
        "sections": [activity, {"text": truncate(text, MAX_TEXT), "markdown": not structured}],
    }
    studio_url = _studio_url(request)
    if studio_url:
        card["potentialAction"] = [
            {"@type": "OpenUri", "name": "Open in Studio", "targets": [{"os": "default", "uri": studio_url}]}
        ]
    return card
