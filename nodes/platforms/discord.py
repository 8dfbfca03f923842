"""Discord: posts the invocation to a channel through a webhook, as an embed.

Discord rejects a message that exceeds its limits instead of shortening it (embed title 256, description
4096, field value 1024, footer 2048, 6000 in all; message content 2000), so every part is truncated to fit.
No `content` is sent: everything is in the embed. `allowed_mentions` is empty so that input text containing
`@everyone` or a role mention cannot ping anyone. `?wait=true` makes Discord answer with the created message,
whose id becomes the output.
"""

from __future__ import annotations

from typing import Any

import httpx

from external_agents.errors import ValidationError
from external_agents.nodes.platforms.base import (
    DeliveryRequest,
    OutgoingRequest,
    PlatformAdapter,
    PlatformAnswer,
    check_fields,
    code_block,
    facts,
    json_object,
    optional_http_url,
    optional_str,
    render_input,
    require_http_url,
    truncate,
    webhook_output,
)

EMBED_COLOR = 0x5865F2
MAX_TITLE = 256
MAX_DESCRIPTION = 4096
# Below Discord's 1024 per field so that title, description, fields and footer stay under 6000 in all.
MAX_FIELD_VALUE = 256
MAX_FOOTER = 256
MAX_USERNAME = 80
# Discord refuses webhook user names containing these.
FORBIDDEN_USERNAME_PARTS = ("discord", "clyde")
# The ids go in the footer; the rest are fields.
_FOOTER_FACTS = ("Invocation", "Trace")


class DiscordAdapter(PlatformAdapter):
    platform = "discord"
    url_field = "webhook_url"
    # The webhook URL is the credential: whoever holds it can post as the agent.
    secret_fields = ("webhook_url",)

    def validate_config(self, platform_config: dict[str, Any]) -> dict[str, Any]:
        check_fields(platform_config, allowed=("webhook_url", "username", "avatar_url"), prefix="platform_config")
        config: dict[str, Any] = {"webhook_url": require_http_url(platform_config, "webhook_url")}
        username = optional_str(platform_config, "username", max_length=MAX_USERNAME)
        if username is not None:
            if any(part in username.lower() for part in FORBIDDEN_USERNAME_PARTS):
                raise ValidationError("platform_config.username must not contain 'discord' or 'clyde'")
            config["username"] = username
        avatar_url = optional_http_url(platform_config, "avatar_url")
        if avatar_url is not None:
            config["avatar_url"] = avatar_url
        return config

    def build_request(self, request: DeliveryRequest) -> OutgoingRequest:
        config = request.platform_config
        text, structured = render_input(request.input)
        pairs = facts(request)
        embed: dict[str, Any] = {
            "title": truncate(request.agent_name, MAX_TITLE),
            "description": (
                code_block(text, limit=MAX_DESCRIPTION, language="json")
                if structured
                else truncate(text, MAX_DESCRIPTION)
            ),
            "color": EMBED_COLOR,
            "fields": [
                {"name": name, "value": truncate(value, MAX_FIELD_VALUE), "inline": True}
                for name, value in pairs
                if name not in _FOOTER_FACTS
            ],
            "footer": {"text": truncate(" · ".join(f"{n} {v}" for n, v in pairs if n in _FOOTER_FACTS), MAX_FOOTER)},
        }
        payload: dict[str, Any] = {"embeds": [embed], "allowed_mentions": {"parse": []}}
        for name in ("username", "avatar_url"):
            if config.get(name):
                payload[name] = config[name]
        url = httpx.URL(config["webhook_url"]).copy_merge_params({"wait": "true"})
        return OutgoingRequest.json(method="POST", url=str(url), payload=payload)

    def parse_response(self, response: httpx.Response) -> PlatformAnswer:
        message = json_object(response)
        if message is None:
            return PlatformAnswer(webhook_output(response))
        return PlatformAnswer(
            {"delivered": True, "message_id": message.get("id"), "channel_id": message.get("channel_id")}
        )

    def retry_after(self, response: httpx.Response) -> float | None:
        # Discord's 429 body carries retry_after in seconds, more precise than its header.
        value = (json_object(response) or {}).get("retry_after")
        return float(value) if isinstance(value, int | float) and value >= 0 else None
