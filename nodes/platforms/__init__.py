"""Platform delivery adapters and the explicit registry of them.

Adding a platform is one new module with a `PlatformAdapter` subclass and one line in `ADAPTERS`; nothing
scans directories. `validate_platform_config` is what registration and updates call: the adapter's own field
checks plus the URL policy for the address delivery will contact.

    from external_agents.nodes.platforms.delivery import deliver

    adapter = get_adapter("slack")
    config = validate_platform_config("slack", {"webhook_url": url}, options=options)
    result = await deliver(request, adapter=adapter, client=client, options=options, token_cache=cache)
"""

from __future__ import annotations

from typing import Any

from external_agents.errors import ValidationError
from external_agents.nodes.platforms.base import DeliveryOptions, PlatformAdapter, check_no_control_characters
from external_agents.nodes.platforms.custom_http import CustomHttpAdapter
from external_agents.nodes.platforms.discord import DiscordAdapter
from external_agents.nodes.platforms.notion import NotionAdapter
from external_agents.nodes.platforms.slack import SlackAdapter
from external_agents.nodes.platforms.teams import TeamsAdapter
from external_agents.nodes.platforms.telegram import TelegramAdapter
from external_agents.nodes.platforms.webhook_url import check_webhook_url

ADAPTERS: dict[str, PlatformAdapter] = {
    "teams": TeamsAdapter(),
    "slack": SlackAdapter(),
    "discord": DiscordAdapter(),
    "telegram": TelegramAdapter(),
    "notion": NotionAdapter(),
    "custom_http": CustomHttpAdapter(),
}


def get_adapter(platform: str) -> PlatformAdapter:
    adapter = ADAPTERS.get(platform)
    if adapter is None:
        raise ValidationError(f"Unknown platform {platform!r}; expected one of: {', '.join(ADAPTERS)}")
    return adapter


def validate_platform_config(
    platform: str, platform_config: dict[str, Any], *, options: DeliveryOptions
) -> dict[str, Any]:
    """The normalised config for `platform`, or ValidationError naming the bad field. No DNS lookups."""
    if not isinstance(platform_config, dict):
        raise ValidationError("platform_config must be an object")
    adapter = get_adapter(platform)
    # Checked before the adapter strips surrounding whitespace: a secret pasted with its newline is refused, not
    # silently repaired, so what is stored is exactly what was checked.
    for name in adapter.secret_fields:
        value = platform_config.get(name)
        if isinstance(value, str):
            check_no_control_characters(value, field=f"platform_config.{name}")
    config = adapter.validate_config(platform_config)
    check_webhook_url(
        adapter.endpoint(config),
        allow_private=options.allow_private_webhooks,
        allowed_domains=options.allowed_webhook_domains,
        field=f"platform_config.{adapter.url_field}",
    )
    # An agent's own timeout may shorten the global one, never extend it.
    timeout = config.get("timeout")
    if timeout is not None and timeout > options.timeout_seconds:
        raise ValidationError(
            f"platform_config.timeout must be at most {options.timeout_seconds:g} seconds "
            "(EXTERNAL_AGENT_WEBHOOK_TIMEOUT_SECONDS)"
        )
    return config
